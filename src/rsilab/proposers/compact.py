"""The compact mode of the LLM proposer. Owns: the knob-table prompt and its JSON answer.

For a model with a small window (a 1k-8k local model) the edit prompt, with whole files,
does not fit, and a small model rarely copies lines exactly anyway. The compact prompt is
about 1k tokens: the metric and what a change must gain, the run's limits, and a table of
the files' knobs (`knobs.py`: top-level UPPER_CASE constants) with each one's current
value, its comment, and the values tried before with their verdicts. The model answers
`{"description": ..., "knob": ..., "value": ...}`: one knob, one new value, as JSON (a
JSON schema whose `knob` is an enum of the knob names, when the server takes one).
`parse_compact` turns that into the changed files, with messages written for the model.

Pure text functions: no I/O, no network. Not covered: choosing the mode (llm.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rsilab.proposers.base import Context, HistoryItem
from rsilab.proposers.edits import EditError
from rsilab.proposers.knobs import (
    Knob,
    check_value,
    collect_knobs,
    format_value,
    set_knobs_in_files,
)
from rsilab.proposers.prompt import MESSAGE_OVERHEAD, estimate_tokens

_MAX_TRIED = 4  # tried values shown per knob, newest first
_ROLE = """\
You tune the constants (knobs) of a training script. Each answer is one experiment: one
knob set to a new value, trained for a fixed budget and kept only if it beats the
incumbent by more than the noise. Answer with one JSON object and nothing else:
{"description": "<what the change does>", "knob": "<NAME>", "value": <new value>}"""
REMINDER = (
    'Answer with one JSON object: {"description": "<what the change does>", '
    '"knob": "<one of the knob names above>", "value": <its new value>}.'
)


@dataclass(frozen=True)
class CompactAnswer:
    description: str
    knob: str
    value: Any


def compact_schema(names: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a compact answer over these knob names. The value is a number, a
    boolean or a short string (read back as the knob's own type); short strings and a
    bounded description leave a grammar-constrained small model no room to ramble."""
    return {
        "type": "object",
        "properties": {
            "description": {"type": "string", "maxLength": 160},
            "knob": {"type": "string", "enum": list(names)},
            "value": {
                "anyOf": [
                    {"type": "number"},
                    {"type": "boolean"},
                    {"type": "string", "maxLength": 40},
                ]
            },
        },
        "required": ["description", "knob", "value"],
        "additionalProperties": False,
    }


def knob_table(ctx: Context) -> dict[str, tuple[str, Knob]]:
    """The knobs of the editable files, name -> (path, knob), for `ctx.preset`."""
    return collect_knobs(ctx.files, ctx.preset)


def tried_values(history: Sequence[HistoryItem]) -> dict[str, list[str]]:
    """Knob name -> "value verdict metric" of every earlier experiment that set it, newest
    first (from its knobs, else from the knob lines of its diff)."""
    out: dict[str, list[str]] = {}
    for h in reversed(history):
        values = {k: format_value(v) for k, v in h.knobs.items()} or _diff_knobs(h.diff)
        metric = "" if h.metric is None or not math.isfinite(h.metric) else f" {h.metric:.4f}"
        for name, value in values.items():
            out.setdefault(name, []).append(f"{value} {h.verdict}{metric}")
    return out


_ADDED = re.compile(r"^\+([A-Z][A-Z0-9_]*)\s*=\s*([^#\n]*?)\s*(#.*)?$")


def _diff_knobs(diff: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in diff.splitlines() if (m := _ADDED.match(line))}


def build_compact(
    ctx: Context,
    *,
    budget_tokens: int,
    repair: Sequence[tuple[str, str]] = (),
    count: Callable[[str], int] = estimate_tokens,
) -> tuple[str, list[dict[str, str]]]:
    """`(system, messages)` of the compact prompt; comments and tried values are dropped
    (in that order) when it is over `budget_tokens`."""
    table = knob_table(ctx)
    tried = tried_values(ctx.history)
    direction = "lower" if ctx.metric.direction == "min" else "higher"
    facts = [f"Metric: {ctx.metric.name}, {direction} is better."]
    if ctx.incumbent_metric is not None:
        facts.append(f"The incumbent scores {ctx.incumbent_metric:.4f}.")
    if ctx.noise_sd is not None:
        facts.append(f"Noise between runs: sd {ctx.noise_sd:.3g}.")
    if ctx.keep_gain is not None:
        facts.append(f"A change must gain at least {ctx.keep_gain:.3g} to be kept.")
    if ctx.incumbent_summary:
        facts.append(
            "Incumbent runs: "
            + ", ".join(f"{k} {v:.4g}" for k, v in ctx.incumbent_summary.items())
            + "."
        )
    limits = "".join(f"\n- {line}" for line in ctx.limits)
    for comments, shown in ((True, _MAX_TRIED), (False, 2), (False, 0)):
        rows = [
            _row(name, knob, comments, tried.get(name, [])[:shown])
            for name, (_, knob) in table.items()
        ]
        user = (
            " ".join(facts)
            + (f"\nLimits of one run:{limits}" if limits else "")
            + "\n\n# Knobs (NAME = current value; tried: value verdict metric, newest first)\n"
            + "\n".join(rows)
            + "\n\n# Your turn\n\nChange one knob to a value not tried before, likely to beat "
            "the incumbent within the limits.\n" + REMINDER
        )
        messages = [{"role": "user", "content": user}]
        for answer, error in repair:
            messages.append({"role": "assistant", "content": answer[:600]})
            messages.append(
                {"role": "user", "content": f"That answer was not usable: {error}\n{REMINDER}"}
            )
        size = sum(count(t) for t in (_ROLE, *(m["content"] for m in messages)))
        if size + MESSAGE_OVERHEAD * (1 + len(messages)) <= budget_tokens:
            break
    return _ROLE, messages


def _row(name: str, knob: Knob, comments: bool, tried: list[str]) -> str:
    row = f"{name} = {format_value(knob.value)!s}"
    if knob.choices is not None:
        row += f"  (one of: {', '.join(format_value(c) for c in knob.choices)})"
    if comments and knob.comment and knob.choices is None:
        row += f"  # {knob.comment[:70]}"
    if tried:
        row += f"  [tried: {'; '.join(tried)}]"
    return row


def parse_compact(text: str, ctx: Context) -> tuple[CompactAnswer, dict[str, str]]:
    """The answer in `text` and the files it changes; EditError (for the model) otherwise."""
    body = text.strip()
    m = re.search(r"\{.*\}", body, re.DOTALL)
    try:  # strict=False: a grammar's strings may hold raw newlines
        data = json.loads(m.group(0) if m else body, strict=False)
    except ValueError:
        raise EditError("the answer is not one JSON object") from None
    if not isinstance(data, dict):
        raise EditError("the answer must be a JSON object")
    table = knob_table(ctx)
    name = str(data.get("knob") or "").strip()
    if name not in table:
        known = ", ".join(table) or "none"
        raise EditError(f"{name!r} is not a knob; choose one of: {known}")
    path, knob = table[name]
    value = _as_kind(data.get("value"), knob)
    if (
        isinstance(knob.value, int)
        and not isinstance(knob.value, bool)
        and isinstance(value, float)
    ):
        # A real model set BATCH_SIZE 8 -> 1.25: the run crashed on it.
        raise EditError(f"{name} takes a whole number, not {format_value(value)}")
    try:
        check_value(knob, value)
    except ValueError as e:
        raise EditError(f"{e}; give a value of the knob's kind") from None
    if value == knob.value and type(value) is type(knob.value):
        raise EditError(f"{name} is already {format_value(value)}; choose a new value")
    try:
        changed = set_knobs_in_files({path: ctx.files[path]}, {name: value}, ctx.preset)
    except (KeyError, ValueError, SyntaxError) as e:
        raise EditError(f"{name} = {value!r} cannot be written: {e}") from None
    desc = " ".join(str(data.get("description") or "").split())[:160]
    desc = desc or f"{name} {format_value(knob.value)} -> {format_value(value)}"
    if format_value(value) not in desc:  # the record must say what really changed
        desc = f"{desc} ({name} {format_value(knob.value)} -> {format_value(value)})"
    return CompactAnswer(desc, name, value), changed


def _as_kind(raw: Any, knob: Knob) -> Any:
    """`raw` (a string, usually) read as the type of the knob's current value."""
    current = knob.value
    text = str(raw).strip().strip("'\"") if not isinstance(raw, bool | int | float) else raw
    try:
        if isinstance(current, bool):
            if isinstance(text, bool):
                return text
            return {"true": True, "false": False}.get(str(text).lower(), text)
        if isinstance(current, int):
            number = float(text)
            return int(number) if number.is_integer() else number
        if isinstance(current, float):
            return float(text)
    except (TypeError, ValueError):
        return text
    return str(text)
