"""Tests for rsilab.run.runner: real task folders, real train processes, real evaluators.

Each test writes a small task (rsilab.toml + train.py) into tmp_path and loads it with
`config.load_task`, so the runner sees exactly what a user's task gives it. Most tasks
are numpy-only with the bundled toy task's frozen script evaluator, to stay fast; the
bundled gpt task runs for real with a budget of a few seconds.
"""

from __future__ import annotations

import math
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rsilab.config import TaskSpec, load_task
from rsilab.paths import bundled_tasks_dir
from rsilab.results import RunResult, Status
from rsilab.run import process, runner

TOY = bundled_tasks_dir() / "toy"

# A toy train.py that does real (if short) work and saves what the toy evaluator reads.
TOY_TRAIN = """
import numpy as np
import toydata
from rsilab import harness

x, y = toydata.train_split()
w = np.linalg.lstsq(x, y, rcond=None)[0] * 0.5   # deliberately half-way: a clearly non-zero loss
np.save(harness.artifact_dir() / "weights.npy", w)
"""


def _task(
    root: Path, train: str, *, evaluator: str = "script:evaluate.py", **keys: object
) -> TaskSpec:
    """A toy-style task folder in `root`: the toy's frozen data and evaluator, our train.py."""
    root.mkdir(parents=True)
    for name in ("toydata.py", "evaluate.py"):
        shutil.copy(TOY / name, root / name)
    (root / "train.py").write_text(textwrap.dedent(train))
    settings = {"budget": 1, "overhead": 2, "eval_timeout": 60, **keys}
    lines = [
        'name = "t"',
        'editable = ["train.py"]',
        'frozen = ["rsilab.toml", "toydata.py", "evaluate.py"]',
        'train = "python train.py"',
        f'evaluator = "{evaluator}"',
        'data = "none"',
    ]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    lines += ["[env]", 'TOY_NOISE = "0"', "[metric]", 'name = "val_loss"', 'direction = "min"']
    (root / "rsilab.toml").write_text("\n".join(lines) + "\n")
    return load_task(root)


def _run(task: TaskSpec, tmp_path: Path, seed: int = 0, isolation: str = "auto") -> RunResult:
    return runner.run(
        task,
        task.root,
        tmp_path / "run",
        seed=seed,
        train_data=None,
        val_data=None,
        isolation=isolation,
    )


# Tests that look up a process on the host run unsandboxed (a sandboxed pid is a namespace
# pid) and leave pid files in the artifact folder (the task folder is restored after a run).
PID_DIR = 'Path(__import__("os").environ["RSILAB_ARTIFACT_DIR"])'


def _pid_file(tmp_path: Path, name: str) -> Path:
    return tmp_path / "run" / "artifact" / name


def _running(pid: int) -> bool:
    """Whether `pid` is a live process. A zombie (dead, not yet reaped by its new parent,
    init, which the runner does not control) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _toy_val_loss(task_root: Path, weights: np.ndarray) -> float:
    import importlib.util

    spec = importlib.util.spec_from_file_location("toydata_for_test", task_root / "toydata.py")
    assert spec is not None and spec.loader is not None
    toydata = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toydata)
    x, y = toydata.val_split()
    return float(np.mean((x @ weights - y) ** 2))


# --- the summary block ---------------------------------------------------------------


def test_parse_summary_reads_the_last_block_only() -> None:
    text = textwrap.dedent("""\
        step 0 | loss 5.0
        ---
        val_bpb: 9.5
        early: 1
        ---
        val_bpb:          1.250000
        num_steps:        42
        preset:           cpu
        note without a colon
        ratio: 1e-3
        step 100 | loss: nan-ish
    """)
    assert runner.parse_summary(text) == {"val_bpb": 1.25, "num_steps": 42.0, "ratio": 1e-3}
    assert runner.parse_summary("val_bpb: 1.0\nno separator here\n") == {}
    assert runner.parse_summary("---\n") == {}


# --- how a run ends ------------------------------------------------------------------


def test_ok_run_takes_the_metric_from_the_evaluator_not_from_train_output(tmp_path: Path) -> None:
    task = _task(
        tmp_path / "task",
        TOY_TRAIN
        + """
print("---")
print("val_loss: 0.000001")   # a lie: the evaluator scores the saved weights itself
""",
    )
    result = _run(task, tmp_path, seed=3)
    assert result.status is Status.OK, result.reason
    assert result.summary["val_loss"] == 1e-6  # what train.py claimed, recorded but unused
    weights = np.load(tmp_path / "run" / "artifact" / "weights.npy")
    expected = _toy_val_loss(task.root, weights)
    assert expected > 1.0
    assert result.metric == pytest.approx(expected, rel=1e-12)
    assert result.evaluation["sealed"] is True and result.evaluation["val_loss"] == result.metric
    assert result.seed == 3 and result.ok


def test_reported_device_memory_and_host_rss_are_recorded_apart(tmp_path: Path) -> None:
    task = _task(
        tmp_path / "task",
        TOY_TRAIN
        + """
print("---")
print("peak_memory_gb: 0.000123")   # what a GPU script reports: its device's peak
""",
    )
    result = _run(task, tmp_path)
    assert result.status is Status.OK, result.reason
    assert result.peak_gpu_memory_gb == pytest.approx(0.000123)
    assert result.peak_rss_gb > 0.01  # a Python process with numpy loaded, as the watchdog saw it
    assert result.peak_memory_gb == max(result.peak_rss_gb, result.peak_gpu_memory_gb)


def test_train_that_raises_is_a_crash_with_the_traceback(tmp_path: Path) -> None:
    task = _task(
        tmp_path / "task",
        """
        def build():
            raise ValueError("bad knob: WIDTH=-1")
        build()
    """,
    )
    result = _run(task, tmp_path)
    assert result.status is Status.CRASH
    assert result.metric is None and not result.ok
    assert "ValueError: bad knob: WIDTH=-1" in result.reason
    assert "Traceback (most recent call last)" in result.log_tail
    assert 'raise ValueError("bad knob: WIDTH=-1")' in result.log_tail
    assert result.log_path == str(tmp_path / "run" / "train.log")


def test_train_past_the_budget_is_killed_with_its_children(tmp_path: Path) -> None:
    # train.py and the child it starts both ignore SIGTERM: only the runner's SIGKILL of
    # the whole process group after the grace period can end them.
    task = _task(
        tmp_path / "task",
        """
        import signal, subprocess, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        (PID_DIR / "child.pid").write_text(str(child.pid))
        time.sleep(600)
    """.replace("PID_DIR", PID_DIR),
    )
    t0 = time.monotonic()
    result = _run(task, tmp_path, isolation="none")
    elapsed = time.monotonic() - t0
    limit = task.budget + task.overhead
    assert result.status is Status.TIMEOUT
    assert "timeout: killed after 3 s" in result.reason
    assert limit <= elapsed < limit + process.GRACE_SECONDS + 3.0
    assert limit <= result.train_seconds < limit + process.GRACE_SECONDS + 1.0
    child = int(_pid_file(tmp_path, "child.pid").read_text())
    assert not _running(child)


def test_train_that_exits_early_leaves_no_grandchild_behind(tmp_path: Path) -> None:
    # train.py returns at once; a daemon it started would keep running if the runner
    # only waited for its direct child.
    task = _task(
        tmp_path / "task",
        TOY_TRAIN
        + """
import subprocess, sys
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(PID_DIR / "child.pid").write_text(str(child.pid))
""".replace("PID_DIR", PID_DIR),
    )
    result = _run(task, tmp_path, isolation="none")
    assert result.status is Status.OK, result.reason
    assert not _running(int(_pid_file(tmp_path, "child.pid").read_text()))


@pytest.mark.parametrize("where", ["train.py", "two children"])
def test_memory_watchdog_kills_a_run_past_the_cap(tmp_path: Path, where: str) -> None:
    # 0.2 GB cap. One process at ~600 MB, or two children at ~150 MB each: each child is
    # under the cap on its own, so only the sum over the process group catches them.
    hog = "import time; block = b'x' * ({mb} << 20); time.sleep(600)"
    if where == "train.py":
        train = hog.format(mb=600)
    else:
        train = f"""
import subprocess, sys
from pathlib import Path
kids = [subprocess.Popen([sys.executable, "-c", {hog.format(mb=150)!r}]) for _ in range(2)]
(PID_DIR / "children.pid").write_text(" ".join(str(k.pid) for k in kids))
for k in kids:
    k.wait()
""".replace("PID_DIR", PID_DIR)
    task = _task(tmp_path / "task", train, memory_gb=0.2, overhead=20)
    t0 = time.monotonic()
    result = _run(task, tmp_path, isolation="none")
    assert result.status is Status.OOM, result.reason
    assert "over the memory cap of 0.2 GB" in result.reason
    assert time.monotonic() - t0 < 15  # the watchdog, not the 21 s wall limit, ended it
    assert result.peak_memory_gb > 0.2
    if where != "train.py":
        for pid in _pid_file(tmp_path, "children.pid").read_text().split():
            assert not _running(int(pid))


def test_in_process_mode_reads_the_summary_and_is_marked_unsealed(tmp_path: Path) -> None:
    task = _task(
        tmp_path / "task",
        """
        from rsilab import harness
        harness.print_summary({"val_loss": 0.25 + harness.seed() / 100, "budget": harness.budget_seconds()})
    """,
        evaluator="in-process",
    )
    result = _run(task, tmp_path, seed=7)
    assert result.status is Status.OK, result.reason
    assert result.metric == pytest.approx(0.32)
    assert result.evaluation == {"sealed": False}
    assert result.summary["budget"] == 1.0  # the runner's budget reached train.py
    assert not (tmp_path / "run" / "metrics.json").exists()  # no evaluator ran


def test_in_process_mode_without_the_metric_is_a_crash(tmp_path: Path) -> None:
    task = _task(tmp_path / "task", "print('---')\nprint('loss: 1.5')\n", evaluator="in-process")
    result = _run(task, tmp_path)
    assert result.status is Status.CRASH
    assert result.reason == "crash: train.py printed no finite val_loss"


def test_evaluator_refusal_is_invalid(tmp_path: Path) -> None:
    task = _task(
        tmp_path / "task",
        """
        import numpy as np
        from rsilab import harness
        np.save(harness.artifact_dir() / "weights.npy", np.zeros(3))   # wrong shape
    """,
    )
    result = _run(task, tmp_path)
    assert result.status is Status.INVALID
    assert result.reason.startswith("invalid: weights must be 16 finite numbers")


# --- the bundled gpt task, for real --------------------------------------------------


def _gpt_run(tmp_path: Path, overrides: list[tuple[str, object]]) -> RunResult:
    from rsilab.data import prepare

    task_dir = tmp_path / "gpt"
    shutil.copytree(bundled_tasks_dir() / "gpt", task_dir)
    task = load_task(task_dir, overrides=overrides)
    assert task.evaluator == "sealed" and task.budget == dict(overrides)["budget"]
    corpus = tmp_path / "corpus.txt"
    verses = [
        "Shall I compare thee to a summer's day?",
        "Thou art more lovely and more temperate:",
        "Rough winds do shake the darling buds of May,",
        "And summer's lease hath all too short a date;",
        "Sometime too hot the eye of heaven shines,",
        "And often is his gold complexion dimm'd;",
    ]
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(verses[i] for i in rng.integers(0, len(verses), 3000)) + "\n")
    data = prepare(str(corpus), home=tmp_path / "data")
    return runner.run(
        task, task_dir, tmp_path / "run", seed=1, train_data=data.train_path, val_data=data.val_path
    )


def _check_gpt(result: RunResult) -> None:
    assert result.status is Status.OK, f"{result.reason}\n{result.log_tail}"
    assert result.metric is not None and math.isfinite(result.metric)
    assert 0 < result.metric < 8
    assert result.evaluation["sealed"] is True and result.evaluation["val_bpb"] == result.metric
    assert result.evaluation["eval_tokens"] > 0
    assert result.summary["num_steps"] >= 1


def test_gpt_task_short_real_run(tmp_path: Path) -> None:
    # 2 s of training and a smaller validation slice, to keep the default suite fast.
    result = _gpt_run(tmp_path, [("budget", 2), ("eval.bytes", 8192)])
    _check_gpt(result)
    assert result.evaluation["eval_tokens"] == 8192


@pytest.mark.slow
def test_gpt_task_real_run(tmp_path: Path) -> None:
    result = _gpt_run(tmp_path, [("budget", 3)])
    _check_gpt(result)
    assert result.evaluation["eval_tokens"] == 65536  # the task's own validation slice
