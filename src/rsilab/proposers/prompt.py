"""What an LLM proposer shows the model. Owns: the system prompt, the user message, the history.

`build_messages(ctx, budget_tokens=...)` gives `(system, messages)` for a chat API: the
system prompt (role, rules, the answer format of edits.py, the harness API entries the
task's files use) and a user message with the research program, the run's real limits,
the metric with the measured noise floor, the gain the judge needs to keep a change and
the incumbent's run summary, the editable files, a compact history of what was tried (with
each attempt's knob values or changed-line counts; runs of unusable answers folded into
one line), the task (a new idea, or fixing a crash) and, last, the answer format again
(small models follow what they read last). Earlier failed answers come back as
assistant/user repair turns, long ones quoted only in the part that matters.

The prompt fits `budget_tokens` (counted by a calibrated estimate, or by whatever counter
the caller passes): the history takes what is left, and when the rest alone is over, it
is shrunk in the order of `SHRINK_ORDER`. Pure text functions: no I/O, no network. Not
covered: calling the model (llm.py), the compact knob mode (compact.py), parsing and
applying its answer (edits.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rsilab.proposers.base import Context, HistoryItem
from rsilab.proposers.edits import FORMAT_INSTRUCTIONS, JSON_FORMAT_INSTRUCTIONS
from rsilab.proposers.window import CHARS_PER_TOKEN, MESSAGE_OVERHEAD
from rsilab.results import Metric

# The harness API, one entry per function: a prompt shows the entries the task's files use
# (`harness_api`), so a numpy task is not told about torch batches it has no use for.
HARNESS_FUNCTIONS: dict[str, str] = {
    "setup": "`harness.setup() -> torch.device`: seeds every RNG from the harness seed, sets "
    "the CPU thread count, returns the device (CUDA, else MPS, else CPU). Call it first.",
    "budget_seconds": "`harness.budget_seconds() -> float`: the training budget. Stop training "
    "when it is spent; the runner kills the process at the budget plus a small overhead "
    "(a `timeout`).",
    "budget_flops": "`harness.budget_flops() -> float | None`: the budget in estimated FLOPs "
    "when the task counts FLOPs, else None.",
    "train_batches": "`harness.train_batches(batch_size, seq_len, device)`: an endless iterator "
    "of `(x, y)` int64 tensors of shape (B, T), random windows of the training split, `y` "
    "being `x` shifted by one byte; the order follows the seed. Validation data is not "
    "reachable.",
    "train_bytes": "`harness.train_bytes() -> bytes`: the raw training split (byte tokens, "
    "vocabulary 256).",
    "save_model": "`harness.save_model(model, example_input)`: exports the model (tokens "
    "(B, T) int64 -> logits (B, T, 256)) with `torch.export`, in eval mode and fp32, for "
    "the sealed evaluator, which feeds windows of the example's shape. Call it once at the "
    "end; a run without it has no score.",
    "artifact_dir": "`harness.artifact_dir() -> Path`: the folder whose files the task's "
    "evaluator scores; save what it reads there.",
    "print_summary": "`harness.print_summary(figures: dict)`: prints the `---` block of "
    "`key: value` lines (not the score).",
    "report": "`harness.report(**figures)`: records extra figures (not the score).",
    "seed": "`harness.seed() -> int`: the run's seed; every random draw must follow it.",
    "threads": "`harness.threads() -> int`: the CPU threads a run may use.",
    "preset": '`harness.preset() -> "cpu" | "gpu"`: the active knob preset.',
    "device": "`harness.device()`: the device (CUDA, else MPS, else CPU).",
    "has_cuda": "`harness.has_cuda() -> bool`.",
    "elapsed": "`harness.elapsed() -> float`: seconds since the run started.",
    "peak_flops": "`harness.peak_flops(device) -> float`: the device's peak FLOP/s (for MFU).",
}
_HARNESS_HEAD = "## The harness API (`from rsilab import harness`; frozen, do not reimplement it)"
HARNESS_API = _HARNESS_HEAD + "\n\n" + "\n".join(f"- {t}" for t in HARNESS_FUNCTIONS.values())


def harness_api(files: Mapping[str, str], *, names_only: bool = False) -> str:
    """The harness API entries the files use (all of them when they use none by name),
    and one line naming the rest; `names_only`: one line of names (to save space)."""
    text = "\n".join(files.values())
    used = [n for n in HARNESS_FUNCTIONS if re.search(rf"\bharness\.{n}\b", text)]
    if "harness" not in text:
        return ""
    used = used or list(HARNESS_FUNCTIONS)
    if names_only:
        return f"{_HARNESS_HEAD}\n\nThe files use: " + ", ".join(f"harness.{n}()" for n in used)
    rest = [n for n in HARNESS_FUNCTIONS if n not in used]
    lines = [f"- {HARNESS_FUNCTIONS[n]}" for n in used]
    if rest:
        lines.append("- Also: " + ", ".join(f"`harness.{n}()`" for n in rest) + ".")
    return _HARNESS_HEAD + "\n\n" + "\n".join(lines)


_ROLE = """\
You are an ML researcher running experiments unattended. Each answer is one experiment:
a change to the editable files that is trained for a fixed budget, scored by a sealed
evaluator, and kept only if it beats the incumbent by more than the noise."""

_RULES = """\
## Rules

- One idea per experiment, described in one line, so the result says what worked.
- Edit only these files: {editable}. Never touch the harness or the evaluator, never read
  validation data, never look at future tokens, never ignore the harness seed.
- The code must run as it is: check names, shapes, dtypes and imports. A crash wastes a run.
- Learn from the history: do not repeat an experiment unless you say why it would now differ.
- Simpler is better: an equal result with less code is a win."""

_FAILED = ("crash", "invalid", "timeout")
_MAX_TAIL = 6000  # characters of a crash log shown
_MAX_IN_FLIGHT = 20
_QUOTE = 1500  # characters of an earlier answer quoted back in a repair turn
_EXCERPT_LINES = (80, 40)  # lines of a long file shown at shrink levels 3 and 5
# The order in which a prompt too large for its budget is shrunk, one step more at each
# level (the history always takes what is left, down to its best line): 1 the harness API
# to the names the files use, 2 the research program to its first section, 3 long files to
# their head (the knobs and the model) with the rest named as omitted, 4 repair turns to
# the last one, 5 long files to a shorter head.
SHRINK_ORDER = ("history", "harness API", "program", "files", "repair turns", "files (shorter)")


@dataclass(frozen=True)
class Fix:
    """A crashed experiment for the model to fix: its change and the end of its log."""

    experiment_id: int
    description: str
    diff_or_files: str
    log_tail: str


def estimate_tokens(text: str) -> int:
    """A token count estimated as characters / CHARS_PER_TOKEN (calibrated on real
    tokenizers; see window.py), rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def build_messages(
    ctx: Context,
    *,
    budget_tokens: int,
    fix: Fix | None = None,
    repair: Sequence[tuple[str, str]] = (),
    idea: str | None = None,
    count: Callable[[str], int] = estimate_tokens,
    json_answer: bool = False,
) -> tuple[str, list[dict[str, str]]]:
    """`(system, messages)` for a chat API, sized to `budget_tokens` counted by `count`.

    The history takes what the rest leaves; when the rest alone is over the budget it is
    shrunk in `SHRINK_ORDER` until it fits (or nothing is left to shrink: the caller
    checks the size, see `prompt_tokens`, and may switch to the compact mode).

    `idea` is a person's free-text idea (queued from the dashboard): the model is asked to
    turn it into this experiment. `repair` holds earlier (answer, error message) pairs,
    oldest first: each becomes an assistant turn (the answer quoted, long ones cut to the
    part that matters) and a user turn that asks for a corrected answer. `json_answer`:
    the answer is asked as a JSON object (a structured answer), not as text blocks.
    """
    for level in range(len(SHRINK_ORDER)):
        system, messages, history_budget = _render(
            ctx, level, fix, repair, idea, count, json_answer, budget_tokens
        )
        if history_budget >= 0 or level == len(SHRINK_ORDER) - 1:
            break
    return system, messages


def prompt_tokens(
    system: str,
    messages: Sequence[Mapping[str, str]],
    count: Callable[[str], int] = estimate_tokens,
) -> int:
    """The size of a chat request's prompt as `count` measures it (per-message overhead in)."""
    texts = [system, *(m["content"] for m in messages)]
    return sum(count(t) for t in texts if t) + MESSAGE_OVERHEAD * len(texts)


def _render(
    ctx: Context,
    level: int,
    fix: Fix | None,
    repair: Sequence[tuple[str, str]],
    idea: str | None,
    count: Callable[[str], int],
    json_answer: bool,
    budget_tokens: int,
) -> tuple[str, list[dict[str, str]], int]:
    """The prompt at shrink `level`, and the tokens left for the history (< 0: over)."""
    editable = ", ".join(ctx.editable or sorted(ctx.files)) or "(none)"
    api = harness_api(ctx.files, names_only=level >= 1)
    answer_format = JSON_FORMAT_INSTRUCTIONS if json_answer else FORMAT_INSTRUCTIONS
    system = "\n\n".join(
        p for p in (_ROLE, _RULES.format(editable=editable), answer_format.strip(), api) if p
    )
    head: list[str] = []
    if ctx.program.strip():
        program = ctx.program.strip("\n") if level < 2 else _program_head(ctx.program)
        head.append("# Research program\n\n" + program)
    if ctx.limits:
        head.append(
            "# Limits of one run\n\n"
            + "\n".join(f"- {line}" for line in ctx.limits)
            + "\n\nThese are this run's real figures: where the research program quotes "
            "others, these hold."
        )
    head.append(_metric_block(ctx))
    keep = _EXCERPT_LINES[1] if level >= 5 else _EXCERPT_LINES[0] if level >= 3 else 0
    head.append(
        "# The editable files (the incumbent)\n\n"
        + "\n\n".join(_file_block(p, c, keep) for p, c in ctx.files.items())
    )
    head.append("# History\n\n")
    tail: list[str] = []
    if ctx.in_flight:
        shown = [f"- {_one_line(p.description)}" for p in ctx.in_flight[:_MAX_IN_FLIGHT]]
        more = len(ctx.in_flight) - len(shown)
        tail.append(
            "# Running now (do not propose these again)\n\n"
            + "\n".join(shown)
            + (f"\n- ... and {more} more" if more > 0 else "")
        )
    if idea is not None and fix is None:
        tail.append(
            "# A person's idea for this experiment\n\nA person watching the research asks you "
            "to try this (turn it into one concrete change):\n\n" + idea.strip()
        )
    tail.append(_fix_block(fix) if fix is not None else _TURN)
    tail.append(JSON_REMINDER if json_answer else TEXT_REMINDER)
    before, after = "\n\n".join(head), "\n\n" + "\n\n".join(tail)
    turns: list[dict[str, str]] = []
    shown_repair = list(repair[-1:]) if level >= 4 else list(repair)
    for answer, error in shown_repair:
        turns.append({"role": "assistant", "content": quote_answer(answer)})
        reminder = JSON_REMINDER if json_answer else TEXT_REMINDER
        turns.append(
            {"role": "user", "content": _REPAIR.format(error=error.strip(), reminder=reminder)}
        )
    fixed = prompt_tokens(system, [{"role": "user", "content": before + after}, *turns], count)
    left = budget_tokens - fixed
    history = history_block(compress_invalid(ctx.history), ctx.metric, max(0, left), count=count)
    messages = [{"role": "user", "content": before + history + after}, *turns]
    return system, messages, left - count(history)


def _metric_block(ctx: Context) -> str:
    direction = "lower" if ctx.metric.direction == "min" else "higher"
    lines = [f"{ctx.metric.name}, {direction} is better."]
    if ctx.incumbent_metric is None:
        lines.append("The incumbent (the files below) has no score yet.")
    else:
        lines.append(f"The incumbent (the files below) scores {ctx.incumbent_metric:.4f}.")
    if ctx.noise_sd is not None:
        lines.append(
            f"The noise floor: one run's {ctx.metric.name} varies by about "
            f"{ctx.noise_sd:.3g} (sd) across seeds, with the same files."
        )
    if ctx.keep_gain is not None and ctx.incumbent_metric is not None:
        sign = -1 if ctx.metric.direction == "min" else 1
        target = ctx.incumbent_metric + sign * ctx.keep_gain
        lines.append(
            f"To be kept, a change must gain at least {ctx.keep_gain:.3g} "
            f"(reach about {target:.4f}) over its confirmation runs; smaller gains are "
            "noise to the judge."
        )
    if ctx.incumbent_summary:
        figures = ", ".join(f"{k} {_num(v)}" for k, v in ctx.incumbent_summary.items())
        lines.append(f"The incumbent's runs (means): {figures}.")
    return "# Metric\n\n" + " ".join(lines)


def _num(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _program_head(program: str) -> str:
    """The program's first section (up to its second heading), the rest named as omitted."""
    lines = program.strip("\n").splitlines()
    cut = next((i for i, line in enumerate(lines) if i > 0 and line.startswith("#")), len(lines))
    head = "\n".join(lines[:cut]).rstrip()
    omitted = len(lines) - cut
    return head + (
        f"\n\n({omitted} more lines of the program omitted for space)" if omitted else ""
    )


_TURN = """\
# Your turn

Propose the next experiment: one idea, likely to beat the incumbent, not tried before."""

TEXT_REMINDER = """\
Answer format (exactly): a line `DESCRIPTION: <what the change does>`, then for each change \
the file's path on its own line, `<<<<<<< SEARCH`, the current lines copied exactly, \
`=======`, the new lines, `>>>>>>> REPLACE`."""

JSON_REMINDER = """\
Answer with one JSON object: {"description": "what the change does, in one line", "edits": \
[{"path": "the file's path", "search": "a line of the file, copied exactly", "replace": \
"what that line becomes"}]}."""

_REPAIR = """\
Your answer could not be applied: {error}
Answer again, in full, with this corrected. SEARCH text must match the files as shown in \
the first message.
{reminder}"""


def quote_answer(answer: str, limit: int = _QUOTE) -> str:
    """An earlier answer as a repair turn quotes it: whole when short; else its DESCRIPTION
    line and edit blocks when they fit `limit`, else its first `limit` characters."""
    if len(answer) <= limit:
        return answer
    lines = answer.splitlines()
    keep = [line for line in lines if re.match(r"^\s*DESCRIPTION\s*:", line, re.IGNORECASE)]
    inside = False
    for i, line in enumerate(lines):
        if re.match(r"^\s*<{5,9}\s*SEARCH", line):
            inside = True
            if i > 0:
                keep.append(lines[i - 1])
        if inside:
            keep.append(line)
        if re.match(r"^\s*>{5,9}\s*REPLACE", line):
            inside = False
    short = "\n".join(keep)
    if keep and len(short) <= limit:
        return short + "\n[... the rest of the answer is not repeated here]"
    return answer[:limit] + f"\n[... {len(answer) - limit} more characters not repeated here]"


def compress_invalid(history: Sequence[HistoryItem]) -> list[HistoryItem]:
    """`history` with each run of consecutive invalid experiments folded into one item
    (an answer that could not be used says little; a dozen of them say it a dozen times)."""
    out: list[HistoryItem] = []
    run: list[HistoryItem] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first, last = run[0], run[-1]
            out.append(
                dataclasses.replace(
                    last,
                    description=f"{len(run)} unusable answers (#{first.experiment_id}-"
                    f"#{last.experiment_id})",
                )
            )
        run.clear()

    for h in history:
        if str(h.verdict) == "invalid":
            run.append(h)
            continue
        flush()
        out.append(h)
    flush()
    return out


def change_summary(item: HistoryItem, limit: int = 100) -> str:
    """What an experiment changed, in a few words: its knob values (`LR 0.01 -> 0.03`) when
    only knobs changed, else its changed-line counts; "" when unknown."""
    if item.knobs:
        return ", ".join(f"{k}={v}" for k, v in item.knobs.items())[:limit]
    if not item.diff:
        return ""
    old: dict[str, str] = {}
    new: dict[str, str] = {}
    plus = minus = 0
    other = False
    for line in item.diff.splitlines():
        if line.startswith(("+++", "---")):
            continue
        if line.startswith(("+", "-")):
            plus, minus = plus + line.startswith("+"), minus + line.startswith("-")
            m = _KNOB_LINE.match(line[1:])
            if m is None:
                other = other or bool(line[1:].strip())
            else:
                (new if line.startswith("+") else old)[m.group(1)] = m.group(2)
    if not other and (old or new):
        parts = [
            f"{k} {old.get(k, '?')} -> {new.get(k, '(removed)')}"
            for k in dict.fromkeys([*old, *new])
        ]
        return _one_line(", ".join(parts), limit)
    return f"+{plus}/-{minus} lines"


_KNOB_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*([^#]*?)\s*(#.*)?$")


def _fix_block(fix: Fix) -> str:
    log = fix.log_tail.strip("\n")[-_MAX_TAIL:]
    return (
        f"# Fix a crash\n\nExperiment #{fix.experiment_id} ({_one_line(fix.description)}) "
        f"crashed. Its change:\n\n{_fence(fix.diff_or_files, 'diff')}\n\n"
        f"The end of its log:\n\n{_fence(log, 'text')}\n\n"
        "Find the cause and propose the same idea again with the bug fixed (not a "
        "different idea). Your edits apply to the files shown above."
    )


def _file_block(path: str, content: str, keep_lines: int = 0) -> str:
    """A file in a fence; with `keep_lines`, a longer file shows only its first lines."""
    lang = {"py": "python", "md": "markdown", "toml": "toml", "sh": "bash"}.get(
        path.rsplit(".", 1)[-1], ""
    )
    lines = content.splitlines(keepends=True)
    if keep_lines and len(lines) > keep_lines + 10:
        shown = "".join(lines[:keep_lines])
        note = (
            f"\n(lines {keep_lines + 1}-{len(lines)} of {path} are not shown, for space: "
            "edit only the lines above)"
        )
        return (
            f"## {path} (first {keep_lines} of {len(lines)} lines)\n\n{_fence(shown, lang)}{note}"
        )
    return f"## {path}\n\n{_fence(content, lang)}"


def _fence(content: str, lang: str = "") -> str:
    """`content` verbatim inside a ``` fence longer than any backtick run in it."""
    longest, run = 0, 0
    for ch in content:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    nl = "" if content.endswith("\n") or not content else "\n"
    return f"{ticks}{lang}\n{content}{nl}{ticks}"


def _one_line(text: str, limit: int = 120) -> str:
    s = " ".join(text.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def history_block(
    history: Sequence[HistoryItem],
    metric: Metric,
    budget_tokens: int,
    count: Callable[[str], int] = estimate_tokens,
) -> str:
    """A compact history that fits `budget_tokens`, one line per experiment.

    Always the baseline and the best kept result; then, sharing what is left, the most
    recent experiments (two lines in four), the other kept ones and the notable failures
    (crash / invalid / timeout, with their reason), newest first within each section; a
    last line counts those omitted. When even the baseline and best lines do not fit, the
    block is just the best line (so it may exceed a tiny budget).
    """
    if not history:
        return "No experiments yet."
    lines = _history_lines(history)
    base = next((i for i, h in enumerate(history) if h.proposer == "baseline"), 0)
    kept = [
        i
        for i, h in enumerate(history)
        if str(h.verdict) == "keep" and h.metric is not None and math.isfinite(h.metric)
    ]
    best = base
    for i in kept:
        value, top = history[i].metric, history[best].metric
        if value is not None and (top is None or metric.better(value, top)):
            best = i
    must = [best] if best == base else [best, base]
    n_kept = sum(str(h.verdict) == "keep" for h in history)
    n_failed = sum(str(h.verdict) in _FAILED for h in history)
    header = (
        f"{len(history)} experiments ({n_kept} kept, {n_failed} failed, "
        f"{len(history) - n_kept - n_failed} other). One line each: #id verdict "
        f"{metric.name} (change vs the incumbent of the time) description: reason."
    )
    titles = {
        "must": "Best kept and baseline:",
        "kept": "Kept:",
        "recent": "Most recent:",
        "failures": "Notable failures:",
    }
    pools = {
        "kept": [i for i in reversed(kept) if i not in must],
        "recent": list(range(len(history) - 1, -1, -1)),
        "failures": [
            i for i in range(len(history) - 1, -1, -1) if str(history[i].verdict) in _FAILED
        ],
    }
    chosen: dict[str, list[int]] = {"must": must, "kept": [], "recent": [], "failures": []}
    taken = set(must)
    omitted_reserve = len(f"({len(history)} older experiments omitted)") + 1
    chars = len(header) + 1 + len(titles["must"]) + 1 + sum(len(lines[i]) + 1 for i in must)
    if count("x" * (chars + omitted_reserve)) > budget_tokens:
        return lines[best]
    cursor = dict.fromkeys(pools, 0)
    active = ["recent", "recent", "kept", "failures"]
    while active:
        for name in list(active):
            if name not in active:
                continue
            pool = pools[name]
            while cursor[name] < len(pool) and pool[cursor[name]] in taken:
                cursor[name] += 1
            if cursor[name] >= len(pool):
                active = [a for a in active if a != name]
                continue
            i = pool[cursor[name]]
            cost = len(lines[i]) + 1 + (0 if chosen[name] else len(titles[name]) + 1)
            if count("x" * (chars + cost + omitted_reserve)) > budget_tokens:
                active = [a for a in active if a != name]
                continue
            chosen[name].append(i)
            taken.add(i)
            chars += cost
    out = [header]
    for name in ("must", "recent", "kept", "failures"):
        if chosen[name]:
            out.append(titles[name])
            out.extend(lines[i] for i in sorted(chosen[name], reverse=True))
    if len(taken) < len(history):
        out.append(f"({len(history) - len(taken)} older experiments omitted)")
    return "\n".join(out)


def _history_lines(history: Sequence[HistoryItem]) -> list[str]:
    """One line per item; the change is against the last kept value before it."""
    lines = []
    ref: float | None = None
    for h in history:
        verdict = str(h.verdict)
        value = "-" if h.metric is None else f"{h.metric:.4f}"
        delta = ""
        if h.metric is not None and ref is not None:
            delta = f" ({h.metric - ref:+.4f})"
        line = f"#{h.experiment_id} {verdict} {value}{delta} {_one_line(h.description)}"
        change = change_summary(h)
        if change:
            line += f" [{change}]"
        if verdict != "keep" and h.reason.strip():
            line += f": {_one_line(h.reason)}"
        lines.append(line)
        if verdict == "keep" and h.metric is not None and math.isfinite(h.metric):
            ref = h.metric
    return lines
