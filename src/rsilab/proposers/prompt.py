"""What an LLM proposer shows the model. Owns: the system prompt, the user message, the history.

`build_messages(ctx, budget_tokens=...)` gives `(system, messages)` for a chat API: the
system prompt (role, rules, the answer format of edits.py, the harness API) and a user
message with the research program, the editable files in full, the metric, a compact
history of what was tried, and the task (a new idea, or fixing a crash). Earlier failed
answers come back as assistant/user repair turns.

The prompt fits `budget_tokens` (estimated as characters / 4) whatever the length of the
run: the program, the files and the turns are never trimmed, only the history shrinks.
Pure text functions: no I/O, no network. Not covered: calling the model (llm.py), parsing
and applying its answer (edits.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rsilab.proposers.base import Context, HistoryItem
from rsilab.proposers.edits import FORMAT_INSTRUCTIONS
from rsilab.results import Metric

HARNESS_API = """\
## The harness API (`from rsilab import harness`; frozen, do not reimplement it)

- `harness.setup() -> torch.device`: seeds every RNG from the harness seed, sets the CPU
  thread count, returns the device (CUDA, else MPS, else CPU). Call it first.
- `harness.budget_seconds() -> float`: the training budget. Stop training when it is spent;
  the runner kills the process at the budget plus a small overhead (a `timeout`).
- `harness.train_batches(batch_size, seq_len, device)`: an endless iterator of `(x, y)`
  int64 tensors of shape (B, T), random windows of the training split, `y` being `x`
  shifted by one byte; the order follows the seed. `harness.train_bytes() -> bytes` is
  the raw training split (byte tokens, vocabulary 256). Validation data is not reachable.
- `harness.save_model(model, example_input)`: exports the model (tokens (B, T) int64 ->
  logits (B, T, 256)) with `torch.export`, in eval mode and fp32, for the sealed
  evaluator, which feeds windows of the example's shape. Call it once at the end; a run
  without it has no score.
- `harness.print_summary(figures: dict)`: prints the `---` block of `key: value` lines;
  `harness.report(**figures)` records extra figures. Neither is the score.
- Also: `harness.seed() -> int`, `harness.threads() -> int`, `harness.preset() -> "cpu" |
  "gpu"`, `harness.device()`, `harness.has_cuda() -> bool`, `harness.elapsed() -> float`
  (seconds since start), `harness.peak_flops(device) -> float` (for MFU).
"""

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


@dataclass(frozen=True)
class Fix:
    """A crashed experiment for the model to fix: its change and the end of its log."""

    experiment_id: int
    description: str
    diff_or_files: str
    log_tail: str


def estimate_tokens(text: str) -> int:
    """A rough token count: characters / 4, rounded up."""
    return math.ceil(len(text) / 4)


def build_messages(
    ctx: Context,
    *,
    budget_tokens: int,
    fix: Fix | None = None,
    repair: Sequence[tuple[str, str]] = (),
    idea: str | None = None,
) -> tuple[str, list[dict[str, str]]]:
    """`(system, messages)` for a chat API, sized to `budget_tokens` (see the module doc).

    `idea` is a person's free-text idea (queued from the dashboard): the model is asked to
    turn it into this experiment.

    `repair` holds earlier (answer, error message) pairs, oldest first: each becomes an
    assistant turn and a user turn that asks for a corrected answer.
    """
    editable = ", ".join(ctx.editable or sorted(ctx.files)) or "(none)"
    system = "\n\n".join(
        [_ROLE, _RULES.format(editable=editable), FORMAT_INSTRUCTIONS.strip(), HARNESS_API.strip()]
    )
    head: list[str] = []
    if ctx.program.strip():
        head.append("# Research program\n\n" + ctx.program.strip("\n"))
    head.append(
        "# The editable files (the incumbent)\n\n"
        + "\n\n".join(_file_block(p, c) for p, c in ctx.files.items())
    )
    direction = "lower" if ctx.metric.direction == "min" else "higher"
    score = (
        "has no score yet"
        if ctx.incumbent_metric is None
        else f"scores {ctx.incumbent_metric:.4f}; your change must beat it"
    )
    head.append(
        f"# Metric\n\n{ctx.metric.name}, {direction} is better. "
        f"The incumbent (the files above) {score}."
    )
    if ctx.limits:
        head.append("# Limits of one run\n\n" + "\n".join(f"- {line}" for line in ctx.limits))
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
    before, after = "\n\n".join(head), "\n\n" + "\n\n".join(tail)
    turns: list[dict[str, str]] = []
    for answer, error in repair:
        turns.append({"role": "assistant", "content": answer})
        turns.append({"role": "user", "content": _REPAIR.format(error=error.strip())})
    fixed = (
        estimate_tokens(system)
        + estimate_tokens(before)
        + estimate_tokens(after)
        + sum(estimate_tokens(t["content"]) for t in turns)
    )
    history = history_block(ctx.history, ctx.metric, budget_tokens - fixed)
    return system, [{"role": "user", "content": before + history + after}, *turns]


_TURN = """\
# Your turn

Propose the next experiment: one idea, likely to beat the incumbent, not tried before.
Answer in the format of the system prompt (DESCRIPTION line, then SEARCH/REPLACE blocks)."""

_REPAIR = """\
Your answer could not be applied: {error}
Answer again, in full (the DESCRIPTION line and every block), with this corrected. \
SEARCH blocks must match the files as shown in the first message."""


def _fix_block(fix: Fix) -> str:
    log = fix.log_tail.strip("\n")[-_MAX_TAIL:]
    return (
        f"# Fix a crash\n\nExperiment #{fix.experiment_id} ({_one_line(fix.description)}) "
        f"crashed. Its change:\n\n{_fence(fix.diff_or_files, 'diff')}\n\n"
        f"The end of its log:\n\n{_fence(log, 'text')}\n\n"
        "Find the cause and propose the same idea again with the bug fixed (not a "
        "different idea). Your edits apply to the files shown above. Answer in the format "
        "of the system prompt."
    )


def _file_block(path: str, content: str) -> str:
    lang = {"py": "python", "md": "markdown", "toml": "toml", "sh": "bash"}.get(
        path.rsplit(".", 1)[-1], ""
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


def history_block(history: Sequence[HistoryItem], metric: Metric, budget_tokens: int) -> str:
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
    if estimate_tokens("x" * (chars + omitted_reserve)) > budget_tokens:
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
            if estimate_tokens("x" * (chars + cost + omitted_reserve)) > budget_tokens:
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
        if verdict != "keep" and h.reason.strip():
            line += f": {_one_line(h.reason)}"
        lines.append(line)
        if verdict == "keep" and h.metric is not None and math.isfinite(h.metric):
            ref = h.metric
    return lines
