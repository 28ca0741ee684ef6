"""Tests for what the LLM proposer shows the model: messages, history trimming, fix and repair."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from rsilab import harness
from rsilab.config import load_task, resolve_task_dir
from rsilab.proposers.base import Context, HistoryItem
from rsilab.proposers.edits import FORMAT_INSTRUCTIONS
from rsilab.proposers.prompt import (
    HARNESS_API,
    Fix,
    build_messages,
    estimate_tokens,
    harness_api,
    history_block,
)
from rsilab.results import Metric, Proposal

TASK = Path(__file__).resolve().parents[1] / "src" / "rsilab" / "tasks" / "gpt"
PROGRAM = (TASK / "program.md").read_text()
FILES = {"train.py": (TASK / "train.py").read_text(), "extra.py": "DOC = '```'\nX = 1\n"}
VERDICTS = ("discard", "discard", "keep", "crash", "discard", "timeout", "invalid", "discard")


def item(
    i: int, verdict: str, metric: float | None, desc: str = "", reason: str = ""
) -> HistoryItem:
    return HistoryItem(i, desc or f"idea {i}", {}, verdict, metric, "llm", reason=reason)


def long_history(n: int = 10_000) -> list[HistoryItem]:
    items = [HistoryItem(0, "baseline", {}, "keep", 3.3, "baseline")]
    best = 3.3
    for i in range(1, n):
        verdict = VERDICTS[i % len(VERDICTS)]
        if verdict == "keep":
            best -= 0.0001
            items.append(item(i, "keep", best))
        elif verdict == "discard":
            items.append(item(i, "discard", best + 0.01, reason="no gain"))
        else:
            items.append(item(i, verdict, None, reason=f"{verdict} reason {i}"))
    return items


def ctx(history: Sequence[HistoryItem] = (), metric: Metric | None = None) -> Context:
    return Context(
        FILES,
        metric or Metric(),
        3.2,
        history,
        [Proposal("try rope", {}, "llm")],
        program=PROGRAM,
        editable=("train.py", "extra.py"),
    )


def total_tokens(system: str, messages: list[dict[str, str]]) -> int:
    return estimate_tokens(system + "".join(m["content"] for m in messages))


def fixed_tokens(c: Context, fix: Fix | None = None) -> int:
    """The prompt's size with an empty history (what is never trimmed)."""
    empty = Context(
        c.files,
        c.metric,
        c.incumbent_metric,
        [],
        c.in_flight,
        program=c.program,
        editable=c.editable,
    )
    return total_tokens(*build_messages(empty, budget_tokens=10**9, fix=fix))


def test_estimate_tokens() -> None:
    # characters / 3.1 (measured on a real tokenizer; characters / 4 undercounted by 25%)
    assert [estimate_tokens(s) for s in ("", "a", "abc", "abcd", "x" * 31)] == [0, 1, 1, 2, 10]


def test_prompt_holds_program_files_metric_and_format() -> None:
    system, messages = build_messages(ctx(), budget_tokens=50_000)
    assert [m["role"] for m in messages] == ["user"]
    user = messages[0]["content"]
    assert PROGRAM.strip() in user
    for content in FILES.values():
        assert content in user
    assert "````python\nDOC = '```'" in user  # a fence longer than the file's own backticks
    assert "val_bpb, lower is better" in user and "3.2000" in user
    assert "try rope" in user and "No experiments yet." in user
    assert FORMAT_INSTRUCTIONS.strip() in system and harness_api(FILES).strip() in system
    assert "train.py, extra.py" in system


def test_the_limits_of_a_run_are_in_the_prompt_and_only_when_set() -> None:
    # The bundled task's own limits: on a GPU box the researcher plans within 40 GB.
    limits = load_task(resolve_task_dir("gpt")).limits()
    c = Context(FILES, Metric(), 3.2, [], [], editable=("train.py",), limits=limits)
    user = build_messages(c, budget_tokens=50_000)[1][0]["content"]
    block = user.split("# Limits of one run\n\n")[1].split("\n\n")[0].splitlines()
    assert block == [f"- {line}" for line in limits]
    assert any("GPU memory: 40 GB" in line for line in block) and any(
        "60 s" in line for line in block
    )
    assert "# Limits" not in build_messages(ctx(), budget_tokens=50_000)[1][0]["content"]
    flops = load_task(resolve_task_dir("gpt"), overrides=[("budget_flops", 3e12)]).limits()
    assert flops[0].startswith("training budget: 3e+12 estimated FLOPs per run")


def test_harness_api_names_only_real_functions() -> None:
    named = set(re.findall(r"harness\.(\w+)\(", HARNESS_API))
    assert {"setup", "budget_seconds", "train_batches", "save_model"} <= named
    for name in named:
        assert callable(getattr(harness, name)), name


def test_history_of_10000_fits_the_budget_and_keeps_baseline_and_best() -> None:
    history = long_history()
    c = ctx(history)
    best = min((h for h in history if h.verdict == "keep"), key=lambda h: h.metric or 0)
    for budget in (fixed_tokens(c) + 300, 20_000, 60_000):
        system, messages = build_messages(c, budget_tokens=budget)
        assert total_tokens(system, messages) <= budget
        user = messages[0]["content"]
        assert "\n#0 keep 3.3000 baseline\n" in user
        assert f"\n#{best.experiment_id} keep {best.metric:.4f}" in user
        assert re.search(r"\(\d+ older experiments omitted\)", user)
        assert f"#{len(history) - 1} " in user  # the most recent one


def test_history_sections_lines_and_order() -> None:
    history = [
        HistoryItem(0, "baseline", {}, "keep", 3.2355, "baseline"),
        item(12, "keep", 3.2145, "LR 0.001 -> 0.003"),
        item(13, "discard", 3.25, "wider MLP", "no gain"),
        item(14, "crash", None, "rope", "exit 1: RuntimeError: shape mismatch"),
        item(15, "discard", 3.22, "relu2", "no gain"),
    ]
    text = history_block(history, Metric(), 10_000)
    lines = text.splitlines()
    assert "#12 keep 3.2145 (-0.0210) LR 0.001 -> 0.003" in lines
    assert "#13 discard 3.2500 (+0.0355) wider MLP: no gain" in lines
    assert "#14 crash - rope: exit 1: RuntimeError: shape mismatch" in lines
    assert lines.index("#12 keep 3.2145 (-0.0210) LR 0.001 -> 0.003") < lines.index(
        "#0 keep 3.2355 baseline"
    )
    recent = lines[lines.index("Most recent:") + 1 :]
    assert recent[:3] == [x for x in lines if x.startswith(("#15", "#14", "#13"))]
    assert "omitted" not in text


def test_history_best_follows_the_metric_direction() -> None:
    history = [
        HistoryItem(0, "baseline", {}, "keep", 0.5, "baseline"),
        item(1, "keep", 0.7, "better"),
        item(2, "keep", 0.6, "kept later"),
    ]
    text = history_block(history, Metric("accuracy", "max"), 30)
    assert text == "#1 keep 0.7000 (+0.2000) better"


def test_history_block_respects_every_budget() -> None:
    history = long_history(500)
    minimal = history_block(history, Metric(), 0)
    assert minimal.startswith("#") and "\n" not in minimal  # just the best line
    previous = 0
    for budget in range(0, 3000, 37):
        text = history_block(history, Metric(), budget)
        assert estimate_tokens(text) <= budget or text == minimal
        assert len(text.splitlines()) >= previous  # more budget never shows less
        previous = len(text.splitlines())
        if "Notable failures:" in text:
            assert "reason" in text


def test_failures_get_a_share_of_a_long_history() -> None:
    text = history_block(long_history(), Metric(), 3000)
    failures = text.split("Notable failures:\n")[1].splitlines()[
        :-1
    ]  # the last is "(N ... omitted)"
    assert len(failures) > 10
    assert all(
        re.search(r"^#\d+ (crash|timeout|invalid) - .*: \w+ reason \d+$", f) for f in failures
    )
    assert "Kept:" in text


def test_fixed_part_over_budget_shrinks_in_the_stated_order() -> None:
    """History first, then the harness API, the program, the files: each level fits a budget
    that the one before it did not, and the best line of the history always stays."""
    history = long_history(200)
    c = ctx(history)
    full = fixed_tokens(c)
    system, messages = build_messages(c, budget_tokens=full + 50)
    user = messages[0]["content"]
    assert FILES["train.py"] in user and PROGRAM.strip() in user and "setup()" in system
    assert "- `harness.setup() -> torch.device`" in system  # the API in full
    # Under the fixed part: the API shrinks to names, then the program, then the files.
    system, messages = build_messages(c, budget_tokens=full - 300)
    user = messages[0]["content"]
    assert "The files use: harness." in system and PROGRAM.strip() in user
    assert "\n#194 keep 3.2975" in user  # the best line of the history
    assert total_tokens(system, messages) <= full - 300
    system, messages = build_messages(c, budget_tokens=full - 1000)
    user = messages[0]["content"]
    assert PROGRAM.strip() not in user and "more lines of the program omitted" in user
    assert FILES["train.py"] in user
    assert total_tokens(system, messages) <= full - 1000
    system, messages = build_messages(c, budget_tokens=full - 3500)
    user = messages[0]["content"]
    assert FILES["train.py"] not in user and "are not shown, for space" in user
    assert FILES["train.py"][:2000] in user  # the head with the knobs is still there
    assert total_tokens(system, messages) <= full - 3500


def test_repair_turns_follow_in_order() -> None:
    repair = [
        ("answer one", "the answer has no DESCRIPTION line"),
        ("answer two", "SEARCH block 2 for train.py does not match"),
    ]
    system, messages = build_messages(ctx(long_history(2000)), budget_tokens=25_000, repair=repair)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "answer one"
    assert "no DESCRIPTION line" in messages[2]["content"]
    assert messages[3]["content"] == "answer two"
    assert "SEARCH block 2 for train.py does not match" in messages[4]["content"]
    assert total_tokens(system, messages) <= 25_000


def test_fix_block_has_the_change_and_the_traceback_tail() -> None:
    tail = 'Traceback (most recent call last):\n  File "train.py", line 88\nRuntimeError: shape'
    fix = Fix(41, "use rope", "--- a/train.py\n+++ b/train.py\n-POS = 1\n+POS = 2\n", tail)
    system, messages = build_messages(ctx(long_history(300)), budget_tokens=20_000, fix=fix)
    user = messages[0]["content"]
    block = user[user.index("# Fix a crash") :]
    assert "#41 (use rope) crashed" in block and "+POS = 2" in block and tail in block
    assert "same idea again with the bug fixed" in block
    assert "# Your turn" not in user
    assert total_tokens(system, messages) <= 20_000


def test_fix_adds_to_the_fixed_part() -> None:
    c = ctx(long_history(3000))
    fix = Fix(7, "x", "diff " * 400, "boom\n" * 100)
    assert fixed_tokens(c, fix=fix) > fixed_tokens(c)
    budget = fixed_tokens(c, fix=fix) + 200
    assert total_tokens(*build_messages(c, budget_tokens=budget, fix=fix)) <= budget


def test_tiny_histories() -> None:
    assert history_block([], Metric(), 1000) == "No experiments yet."
    text = history_block(long_history(1), Metric(), 1000)
    assert text.splitlines()[1:] == ["Best kept and baseline:", "#0 keep 3.3000 baseline"]
