"""The bundled `digits` task (issue 23, point 6): own code as a user writes it (a config file,
its own seeding, its own metric line, a wrap-up signal handler) on real data scikit-learn
ships, searched through declared knobs; and the research loop on it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rsilab.config import load_task, resolve_task_dir
from rsilab.proposers.base import Context
from rsilab.proposers.tuner import Tuner
from rsilab.record.ledger import Ledger
from rsilab.results import Status
from rsilab.run import runner
from rsilab.space import SearchSpace
from rsilab.workspace import open_workspace

pytest.importorskip("sklearn")
TASK = resolve_task_dir("digits")


def test_the_tuner_edits_config_toml_within_the_declared_space() -> None:
    task = load_task(TASK)
    files = {rel: (TASK / rel).read_text() for rel in task.editable_files()}
    knobs = SearchSpace.of(task).knobs(files)
    assert set(knobs) == set(task.knobs)  # every declared knob is found in config.toml
    tuner = Tuner.from_task(task)
    for _ in range(25):
        p = tuner.propose(
            Context(files, metric=task.metric_obj, incumbent_metric=1.0, history=[], in_flight=[])
        )
        assert p is not None and set(p.files) == {"config.toml"}
        tuner.observe(p, "discard", 2.0)
        cfg = tomllib.loads(p.files["config.toml"])
        assert 0.0003 <= cfg["optim"]["lr"] <= 0.3
        assert cfg["optim"]["name"] in ("sgd", "adam")
        assert 1 <= cfg["model"]["layers"] <= 3 and isinstance(cfg["model"]["layers"], int)
        if cfg["optim"]["momentum"] != 0.5:
            assert cfg["optim"]["name"] == "sgd"  # momentum moves only where it matters


def test_a_run_reads_its_own_metric_line_and_moves_with_the_seed(tmp_path: Path) -> None:
    shutil.copytree(TASK, tmp_path / "digits", ignore=shutil.ignore_patterns("__pycache__"))
    task = load_task(tmp_path / "digits")  # a copy: runs never write into the package
    values = []
    for seed in (1, 2):
        r = runner.run(
            task, task.root, tmp_path / f"run{seed}", seed=seed, train_data=None, val_data=None
        )
        assert r.status is Status.OK, r.reason + r.log_tail
        assert r.evaluation["sealed"] is False
        assert r.metric is not None and 0.0 < r.metric < 2.4  # chance is ln(10) = 2.30
        values.append(r.metric)
    assert values[0] != values[1]  # it seeds itself from RSILAB_SEED: the judge sees noise


@pytest.mark.slow
def test_the_research_loop_on_digits(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable, "-m", "rsilab.cli", "run", str(tmp_path / "lab"), "--task", "digits",
            "--proposer", "tuner", "--max-experiments", "3",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "does not use the run's seed" not in out.stdout
    with Ledger(open_workspace(tmp_path / "lab").ledger_path) as ledger:
        exps = ledger.experiments()
        assert exps[0].status == "keep" and len(exps) == 4, [(e.status, e.reason) for e in exps]
        assert all(e.status in ("keep", "discard") for e in exps[1:]), [
            (e.status, e.description) for e in exps
        ]
        assert ledger.incumbent() is not None and exps[0].metric is not None
