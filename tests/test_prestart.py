"""The sealed evaluator started with training (runner.run's `prestart`): same score as a cold
start, a fresh start when training swaps the artifact folder, and nothing left behind when
training fails or the supervisor is interrupted."""

from __future__ import annotations

import _thread
import hashlib
import os
import shutil
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rsilab.config import TaskSpec, load_task
from rsilab.data import PreparedData, prepare
from rsilab.paths import bundled_tasks_dir
from rsilab.results import RunResult, Status
from rsilab.run import runner

TRAIN = """\
import os, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
from rsilab import harness

class Bigram(nn.Module):
    def __init__(self):
        super().__init__()
        self.now = nn.Embedding(256, 256)
        self.prev = nn.Embedding(256, 256)

    def forward(self, x):
        return self.now(x) + self.prev(F.pad(x[:, :-1], (1, 0)))

harness.setup()
model = Bigram()
opt = torch.optim.SGD(model.parameters(), lr=0.5)
batches = harness.train_batches(4, 16)
for _ in range(5):
    x, y = next(batches)
    F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).backward()
    opt.step()
    opt.zero_grad()
{before_save}
harness.save_model(model, torch.zeros(4, 16, dtype=torch.long))
harness.print_summary({{"training_seconds": 0.1}})
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("corpus")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n" * 200
    )
    return prepare(str(corpus), home=root / "home")


def _task(tmp_path: Path, before_save: str = "") -> TaskSpec:
    work = tmp_path / "task"
    shutil.copytree(
        bundled_tasks_dir() / "gpt", work, ignore=shutil.ignore_patterns("reference", "__pycache__")
    )
    (work / "train.py").write_text(TRAIN.format(before_save=textwrap.dedent(before_save)))
    return load_task(work, [("budget", 60), ("eval.bytes", 2048), ("eval_timeout", 120)])


def _run(task: TaskSpec, run_dir: Path, data: PreparedData, prestart: bool) -> RunResult:
    return runner.run(
        task,
        task.root,
        run_dir,
        seed=3,
        train_data=data.train_path,
        val_data=data.val_path,
        preset="cpu",
        prestart=prestart,
    )


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the runner puts evaluator folders (tempfile's folder), watched by the test."""
    folder = tmp_path / "runner-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _evaluators_of(run_dir: Path) -> list[int]:
    """Pids of live evaluator processes started for `run_dir`'s artifact."""
    needle = str((run_dir / "artifact").resolve()).encode()
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if b"rsilab.harness.evaluate" in cmdline and needle in cmdline:
                pids.append(int(entry.name))
    return pids


def test_a_prestarted_evaluator_scores_exactly_like_a_cold_one(
    tmp_path: Path, data: PreparedData, private_tmp: Path
) -> None:
    task = _task(tmp_path)
    cold = _run(task, tmp_path / "cold", data, prestart=False)
    warm = _run(task, tmp_path / "warm", data, prestart=True)
    assert cold.status is Status.OK and warm.status is Status.OK, (
        cold.reason,
        warm.reason,
        warm.log_tail,
    )
    assert warm.metric == cold.metric  # same seed, same program, same bytes scored
    assert (
        warm.evaluation["eval_prestarted"] is True and cold.evaluation["eval_prestarted"] is False
    )
    for run_dir, result in ((tmp_path / "cold", cold), (tmp_path / "warm", warm)):
        # The evaluator's own file and log land in the run folder, byte for byte what was read.
        raw = (run_dir / "metrics.json").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == result.evaluation[runner.METRICS_DIGEST]
        assert "val_bpb" in (run_dir / "eval.log").read_text()
    assert list(private_tmp.iterdir()) == []  # its private folders are gone


def test_training_that_swaps_the_artifact_folder_gets_a_fresh_evaluator(
    tmp_path: Path, data: PreparedData, private_tmp: Path
) -> None:
    """The waiting evaluator was shown the folder as it was; a replaced folder is scored by a
    new one, never by a process that would read the old (empty) one."""
    swap = """\
    import shutil
    folder = harness.artifact_dir()
    shutil.rmtree(folder)
    folder.mkdir()
    """
    task = _task(tmp_path, before_save=swap)
    r = _run(task, tmp_path / "run", data, prestart=True)
    assert r.status is Status.OK, (r.reason, r.log_tail)
    assert r.evaluation["eval_prestarted"] is False
    reference = _run(_task(tmp_path / "plain"), tmp_path / "plain-run", data, prestart=False)
    assert r.metric == reference.metric
    assert list(private_tmp.iterdir()) == []


def test_a_failed_training_run_leaves_no_evaluator_behind(
    tmp_path: Path, data: PreparedData, private_tmp: Path
) -> None:
    task = _task(tmp_path, before_save="raise SystemExit('boom')")
    r = _run(task, tmp_path / "run", data, prestart=True)
    assert r.status is Status.CRASH and "boom" in r.reason
    assert _evaluators_of(tmp_path / "run") == []
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_interrupted_run_leaves_no_evaluator_behind(
    tmp_path: Path, data: PreparedData, private_tmp: Path, sigint_handler: None
) -> None:
    """Ctrl-C in the supervisor while training runs (the evaluator waiting beside it)."""
    task = _task(tmp_path, before_save="print('training-is-running', flush=True)\ntime.sleep(120)")
    run_dir = tmp_path / "run"
    seen: list[int] = []

    def interrupt_when_both_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = run_dir / "train.log"
            if (
                log.is_file()
                and "training-is-running" in log.read_text()
                and _evaluators_of(run_dir)
            ):
                seen.extend(_evaluators_of(run_dir))
                _thread.interrupt_main()
                return
            time.sleep(0.05)  # polling for a condition, not sleeping in its place

    watcher = threading.Thread(target=interrupt_when_both_run, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        _run(task, run_dir, data, prestart=True)
    watcher.join()
    assert seen, "the evaluator was not waiting beside training"
    assert _evaluators_of(run_dir) == []
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("prestart", [False, True])
def test_training_that_deletes_the_artifact_folder_is_invalid_not_an_error(
    tmp_path: Path, data: PreparedData, private_tmp: Path, prestart: bool
) -> None:
    gone = """\
    import shutil
    harness.save_model(model, torch.zeros(4, 16, dtype=torch.long))
    shutil.rmtree(harness.artifact_dir())
    harness.print_summary({"training_seconds": 0.1})
    sys.exit(0)
    """
    r = _run(_task(tmp_path, before_save=gone), tmp_path / "run", data, prestart=prestart)
    assert r.status is Status.INVALID and "no exported model" in r.reason, (r.reason, r.log_tail)
    assert list(private_tmp.iterdir()) == []
