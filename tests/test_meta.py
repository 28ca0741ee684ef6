"""`rsilab meta`: research on the research strategy, on a task built so a better strategy exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_llm import FakeLLM

from rsilab.studies.strategy import (
    META_FILE,
    Strategy,
    StrategySearch,
    format_table,
    parse_program,
    tuner_neighbours,
)

# Two flags that only help together: each alone makes things worse. A tuner that changes
# one knob per proposal (the task's setting, max_knobs = 1) can never find the gain; one
# that changes two at once finds it in a few experiments. The metric comes from train.py
# itself (in-process evaluator), so a run costs one short process.
TRAIN = """\
import random
from rsilab import harness

FLAG_A = False  # helps only together with FLAG_B
FLAG_B = False  # helps only together with FLAG_A

loss = 1.0 + random.Random(harness.seed()).gauss(0, 0.01)
if FLAG_A and FLAG_B:
    loss -= 0.5
elif FLAG_A or FLAG_B:
    loss += 0.2
harness.print_summary({"val_loss": loss})
"""

TOML = """\
name = "pairs"
description = "Lower val_loss; two flags interact."
editable = ["train.py"]
frozen = ["rsilab.toml", "program.md"]
train = "python train.py"
evaluator = "in-process"
data = "none"
budget = 1
overhead = 20

[metric]
name = "val_loss"
direction = "min"

[judge]
noise_runs = 2
max_runs = 2
recheck_every = 0

[tuner]
max_knobs = 1
"""

PROGRAM = "# Program\n\nChange one thing at a time.\n"


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "task"
    d.mkdir()
    (d / "rsilab.toml").write_text(TOML)
    (d / "train.py").write_text(TRAIN)
    (d / "program.md").write_text(PROGRAM)
    return d


def test_meta_finds_a_faster_tuner_strategy(
    tmp_path: Path, task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The premise below: TPE's random start-up outlasts a 3-experiment session even after one
    # halving (8 -> 4). With the tuner's own default (5 -> 2) n_startup could matter too.
    monkeypatch.setattr("rsilab.studies.strategy.N_STARTUP", 8)
    lines: list[str] = []
    root = tmp_path / "meta"
    state = StrategySearch(
        root, task_dir=task_dir, session_experiments=3, confirm_seeds=2, notify=lines.append
    ).run(2, 3)
    start, champion = state.strategy("s0"), state.strategy(state.champion)
    assert start.settings["max_knobs"] == 1 and start.settings["n_startup"] == 8
    # Sessions of 3 experiments: TPE never leaves its random start-up, so the only step that
    # can matter is max_knobs (tuner_neighbours leaves the others out).
    assert champion.settings["max_knobs"] >= 2 and champion.origin.startswith("mutation: max_knobs")
    lineage = [champion]
    while lineage[-1].parent is not None:
        lineage.append(state.strategy(lineage[-1].parent))
    assert lineage[-1].id == "s0"
    sessions = {s.strategy: s for s in state.session_list() if s.generation == 0}
    assert sessions["s0"].kept == 0 and sessions["s0"].gain == 0 and sessions["s0"].velocity == 0
    best = [s for s in state.session_list() if s.strategy == champion.id]
    assert all(
        s.kept >= 1 and s.gain is not None and s.gain > 0.4 for s in best
    )  # confirmed, fresh seeds
    assert all(
        s.velocity is not None and s.velocity > 0 and s.velocity_se is not None for s in best
    )
    # Two generations; the champion was re-run in the second one (with the variants it had
    # left: the space of sensible steps is small here).
    assert len(state.generations) == 2 and len(state.generations[0]["strategies"]) == 3
    assert state.generations[1]["strategies"][0] == state.generations[0]["champion"]
    assert state.generations[-1]["velocity_change_vs_start"] > 0
    n = sum(len(g["strategies"]) for g in state.generations)
    assert (
        len({(s.strategy, s.generation) for s in state.session_list()}) == len(state.sessions) == n
    )
    # Every session started from the same baseline commit, in its own workspace.
    for s in state.session_list():
        assert (Path(s.dir) / "results.tsv").read_text().splitlines()[1].split("\t")[3] == "keep"
    on_disk = json.loads((root / META_FILE).read_text())
    assert on_disk["champion"] == champion.id and len(on_disk["strategies"]) == len(
        state.strategies
    )
    assert "velocity change vs the starting strategy" in format_table(state)
    assert any("velocity" in line for line in lines)
    # Run again: everything is done, nothing is re-run.
    again = StrategySearch(
        root, task_dir=task_dir, session_experiments=3, confirm_seeds=2, notify=lines.append
    ).run(2, 3)
    assert len(again.sessions) == n and again.champion == champion.id


def answer(description: str, *flags: str) -> str:
    """An LLM answer in rsilab's SEARCH/REPLACE format that sets `flags` to True."""
    lines = {line.split(" = ")[0]: line for line in TRAIN.splitlines() if line.startswith("FLAG_")}
    blocks = "".join(
        f"train.py\n<<<<<<< SEARCH\n{lines[f]}\n=======\n{lines[f].replace('False', 'True', 1)}\n"
        ">>>>>>> REPLACE\n"
        for f in flags
    )
    return f"DESCRIPTION: {description}\n{blocks}"


def test_meta_with_an_llm_rewrites_the_program_from_the_evidence(
    tmp_path: Path, task_dir: Path
) -> None:
    with FakeLLM() as llm:
        llm.queue(
            answer("set FLAG_A", "FLAG_A"),
            "Here it is:\n```markdown\n# Program v2\n\nFlip FLAG_A and FLAG_B together.\n```\n",
            answer("set both flags", "FLAG_A", "FLAG_B"),
        )
        overrides = [f'llm.base_url="{llm.url_openai}"', 'llm.model="fake"', "llm.repair_rounds=0"]
        state = StrategySearch(
            tmp_path / "meta",
            task_dir=task_dir,
            overrides=overrides,
            proposer="llm",
            session_experiments=1,
            confirm_seeds=2,
            notify=lambda line: None,
        ).run(1, 2)
        assert llm.pending == 0
        first, rewrite, second = (r.json["messages"][-1]["content"] for r in llm.requests)
    assert "Change one thing at a time." in first  # the starting strategy: the task's program.md
    assert (
        "Change one thing at a time." in rewrite
        and "set FLAG_A" in rewrite
        and "discard" in rewrite
    )
    assert (
        "Flip FLAG_A and FLAG_B together." in second
    )  # the variant's program reached the proposer
    variant = state.strategy("s1")
    assert variant.parent == "s0" and variant.origin.startswith("llm rewrite")
    assert variant.program == "# Program v2\n\nFlip FLAG_A and FLAG_B together.\n"
    assert state.champion == "s1" and state.rewrites[0]["outcome"] == "s1"


def test_variants_and_parsing() -> None:
    s = Strategy("s0", "tuner", {"max_knobs": 1, "n_startup": 8, "sampler": "tpe"})
    steps = {why for _, why in tuner_neighbours(s)}
    assert steps == {
        "max_knobs 1 -> 2",
        "n_startup 8 -> 4",
        "n_startup 8 -> 16",
        "sampler tpe -> random",
    }
    # Sessions of 4 experiments: TPE would still be drawing at random, so only max_knobs matters.
    assert {why for _, why in tuner_neighbours(s, 4)} == {"max_knobs 1 -> 2"}
    assert {why for _, why in tuner_neighbours(s, 6)} == {"max_knobs 1 -> 2", "n_startup 8 -> 4"}
    assert parse_program("```md\nA\n```") == "A\n"
    assert parse_program("just text\n") == "just text\n"
    assert parse_program("   ") is None


def test_meta_command(tmp_path: Path, task_dir: Path) -> None:
    from click.testing import CliRunner

    from rsilab.cli import main

    root = tmp_path / "meta"
    result = CliRunner().invoke(
        main,
        [
            "meta",
            str(root),
            "--task",
            str(task_dir),
            "--generations",
            "1",
            "--strategies",
            "1",
            "--session-experiments",
            "1",
            "--confirm-seeds",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "s0 *" in result.output and f"wrote {root / META_FILE}" in result.output
    state = json.loads((root / META_FILE).read_text())
    assert [s["strategy"] for s in state["sessions"]] == ["s0"] and state["champion"] == "s0"
    bad = CliRunner().invoke(main, ["meta", str(tmp_path / "x"), "--task", str(task_dir)])
    assert bad.exit_code == 2 and "--session-experiments N or --session-minutes M" in bad.output
