"""A baseline that does not move with the seed is said at the baseline (issue 23, point 4),
with what it means for the judging and what to do; never silently judged with zero noise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from rsilab.config import JudgeSpec
from rsilab.loop.seedcheck import baseline_seed_note
from rsilab.record.ledger import Ledger
from rsilab.results import RunResult, Status
from rsilab.workspace import git, open_workspace


def _runs(*pairs: tuple[int, float]) -> list[RunResult]:
    return [RunResult(Status.OK, seed, metric=value) for seed, value in pairs]


def test_the_note_says_what_it_means_and_what_to_do() -> None:
    note = baseline_seed_note(_runs((1, 0.5), (2, 0.5), (3, 0.5)), "val_loss", JudgeSpec())
    assert note is not None and "\n" not in note
    assert "3 runs gave the same val_loss 0.5 under 3 different seeds" in note
    assert "judged as deterministic" in note and "judge.min_effect (0)" in note
    assert "RSILAB_SEED" in note and "judge.noise_sd" in note
    declared = baseline_seed_note(_runs((1, 0.5), (2, 0.5)), "val_loss", JudgeSpec(noise_sd=0.01))
    assert declared is not None and "judge.noise_sd 0.01 is the only noise estimate" in declared


def test_no_note_when_the_runs_move_or_share_a_seed() -> None:
    spec = JudgeSpec()
    assert baseline_seed_note(_runs((1, 0.5), (2, 0.51), (3, 0.5)), "m", spec) is None
    assert baseline_seed_note(_runs((1, 0.5), (1, 0.5)), "m", spec) is None
    assert baseline_seed_note(_runs((1, 0.5)), "m", spec) is None
    crashed = [RunResult(Status.CRASH, 2), *_runs((1, 0.5))]
    assert baseline_seed_note(crashed, "m", spec) is None


# A script that seeds itself (it never reads RSILAB_SEED): every run gives the same value.
PINNED = """\
import numpy as np
lr = 0.1
rng = np.random.default_rng(0)
w = 0.0
for _ in range(100):
    w -= lr * (w - 1.0 + rng.normal(scale=0.1))
print(f"val loss {(w - 1.0) ** 2 + 0.5:.8f}")
"""


def test_rsilab_baseline_on_a_self_seeded_script_warns(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(PINNED)
    (repo / "rsilab.toml").write_text(
        textwrap.dedent("""\
        name = "pinned"
        editable = ["train.py"]
        frozen = ["rsilab.toml"]
        evaluator = "in-process"
        data = "none"
        budget = 5
        overhead = 10
        [metric]
        name = "val_loss"
        pattern = 'val loss ([0-9.]+)'
        """)
    )
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "mine")
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "baseline", str(repo)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "3 runs gave the same val_loss" in out.stdout, out.stdout
    with Ledger(open_workspace(repo).ledger_path) as ledger:
        events = [e.message for e in ledger.events() if e.kind == "baseline"]
    assert any("does not use the run's seed" in m for m in events)
