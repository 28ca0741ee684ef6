"""The budget, enforced from outside the run: the watchdog counts the CPU time of the whole
process tree (a detached child included), the runner reads when the artifact was handed
over from the kernel's ctime, and the judge refuses a FLOPs-budget run that used far more
CPU than the incumbent."""

from __future__ import annotations

import sys
from pathlib import Path

from rsilab.config import load_task
from rsilab.loop.judge import judge
from rsilab.paths import bundled_tasks_dir
from rsilab.results import CPU_KEY, HANDOVER_KEY, Metric, RunResult, Status, Verdict
from rsilab.run import runner
from rsilab.run.process import run_process

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_cpu_seconds_count_a_detached_child(tmp_path: Path) -> None:
    """A child that leaves its parent's session and is never waited for still counts."""
    child = "import sys\n" + SPIN.format(s=0.8) + "open(sys.argv[1], 'w').write('done')\n"
    code = (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}, sys.argv[1]], start_new_session=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
        "time.sleep(0.6)  # the watchdog looks twice a second\n"
    )
    out = run_process(
        [sys.executable, "-c", code, str(tmp_path / "done")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        log=tmp_path / "log",
        timeout=30,
    )
    assert out.returncode == 0, (tmp_path / "log").read_text()
    assert out.cpu_seconds >= 0.7, out


def _toy(tmp_path: Path, train: str, **overrides: object) -> RunResult:
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    toy = bundled_tasks_dir() / "toy"
    for f in toy.iterdir():
        if f.is_file():
            (task_dir / f.name).write_bytes(f.read_bytes())
    (task_dir / "train.py").write_text(train)
    task = load_task(task_dir, [(k, v) for k, v in overrides.items()])
    return runner.run(task, task_dir, tmp_path / "run", seed=1, train_data=None, val_data=None)


TOY = (bundled_tasks_dir() / "toy" / "train.py").read_text()


def test_a_model_handed_over_after_the_budget_and_slack_is_invalid(tmp_path: Path) -> None:
    """The run read `overhead` and trained into it: the runner's clock says so."""
    late = "import time\ntime.sleep(3.5)  # 'training' past the budget, inside the overhead\n" + TOY
    r = _toy(tmp_path, late, budget=1, overhead=10, handover_slack=2)
    assert r.status is Status.INVALID, r
    assert "trained past its budget" in r.reason and "handover_slack" in r.reason
    assert r.summary[HANDOVER_KEY] > 3.0


def test_the_runner_overwrites_what_train_py_claims_about_its_own_figures(tmp_path: Path) -> None:
    claims = TOY.replace(
        '"num_steps": STEPS,', f'"num_steps": STEPS, "{CPU_KEY}": 0.0, "{HANDOVER_KEY}": 0.0,'
    )
    spin = SPIN.format(s=1.5) + claims
    r = _toy(tmp_path, spin, budget=5, handover_slack=20)
    assert r.status is Status.OK, r
    # The kernel's count, not the claimed 0 (the watchdog looks twice a second: the last
    # half second of a sandboxed process may be missed).
    assert r.summary[CPU_KEY] >= 1.0
    assert 1.5 <= r.summary[HANDOVER_KEY] < 20


def _run(cpu: float, metric: float, seed: int) -> RunResult:
    return RunResult(Status.OK, seed, metric=metric, summary={CPU_KEY: cpu})


def test_the_judge_refuses_a_flops_run_that_used_far_more_cpu() -> None:
    task = load_task(bundled_tasks_dir() / "toy")
    spec = task.judge
    inc = [1.0, 1.02, 0.98]
    stretched = [_run(9.0, 0.5, 1)]  # a large gain, bought with 4.5x the CPU time
    j = judge(stretched, inc, Metric("val_loss"), spec, cpu_reference=[2.0, 2.1, 1.9])
    assert j.verdict is Verdict.INVALID and "budget" in j.flags
    assert "4.5 times the incumbent's CPU time" in j.reason
    fair = [_run(3.0, 0.5, 1)]  # 1.5x: a slower model per FLOP, not a cheat
    j = judge(fair, inc, Metric("val_loss"), spec, cpu_reference=[2.0, 2.1, 1.9])
    assert j.verdict is not Verdict.INVALID
    # Without a reference (a wall-clock budget, or runs recorded before the count): no rule.
    j = judge(stretched, inc, Metric("val_loss"), spec)
    assert j.verdict is not Verdict.INVALID


def test_cpu_seconds_count_short_lived_workers_no_look_saw(tmp_path: Path) -> None:
    """Work split over processes that each live less than a look (0.5 s) still counts: the
    parent that waited for them carries their time."""
    worker = SPIN.format(s=0.15)
    code = (
        "import subprocess, sys\n"
        f"for _ in range(8): subprocess.run([sys.executable, '-c', {worker!r}], check=True)\n"
        "import time; time.sleep(0.6)  # one more look after the last worker\n"
    )
    out = run_process(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        log=tmp_path / "log",
        timeout=60,
    )
    assert out.returncode == 0, (tmp_path / "log").read_text()
    assert out.cpu_seconds >= 8 * 0.15, out
