"""One run: train then evaluate one checkout with one seed. Owns: processes, budget, logs.

The runner, not train.py, owns the clock: the training process gets `budget + overhead`
seconds from its start, in its own session (process group); past that it gets SIGTERM,
then SIGKILL after a short grace, and the run is `timeout`. A memory watchdog sums the
RSS of the whole process group and kills it past the cap (`oom`). Every expected failure
comes back as a `RunResult` value, never as an exception.

The metric never comes from train.py's output (unless the task chose the unsealed
`in-process` evaluator): a separate evaluator process reads the artifact and writes its
own metrics file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab import harness
from rsilab.config import TaskSpec
from rsilab.types import RunResult, Status

GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05
TAIL_LINES = 25


@dataclass(frozen=True)
class RunPaths:
    """Where one run writes: `<run_dir>/train.log`, `eval.log`, `artifact/`, `metrics.json`."""

    run_dir: Path

    @property
    def train_log(self) -> Path:
        return self.run_dir / "train.log"

    @property
    def eval_log(self) -> Path:
        return self.run_dir / "eval.log"

    @property
    def artifact(self) -> Path:
        return self.run_dir / "artifact"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.json"


@dataclass(frozen=True)
class ProcessOutcome:
    returncode: int | None  # None: killed by us
    seconds: float
    timed_out: bool
    oom: bool
    peak_rss_gb: float


def _group_rss_bytes(sid: int) -> int:
    """Sum of RSS over every process in session `sid` (the run and all its descendants)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # field 6 of stat: session id
                total += int(fields[21]) * page  # field 24: rss in pages
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return total


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _live_members(sid: int) -> list[int]:
    """Pids in session `sid` that have not exited (a zombie has; its parent reaps it)."""
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []  # no /proc (macOS): the group kill is all we can do
    pids = []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):  # field 3: state
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def kill_session(sid: int, deadline: float) -> None:
    """SIGKILL what is left of the run's session and wait, until `deadline`, for it to be
    gone: a killed process keeps its memory (and its GPU) until its exit completes, and a
    run must not overlap the next one on its slot."""
    kill_group(sid, signal.SIGKILL)
    while (alive := _live_members(sid)) and time.monotonic() < deadline:
        for pid in alive:  # also any that moved to another process group of the session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS / 5)


def _wait_until(pid: int, deadline: float) -> int | None:
    """Poll for `pid` to exit until `deadline`; its wait status, or None if still running."""
    while time.monotonic() < deadline:
        done, status, _ = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return status
        time.sleep(POLL_SECONDS)
    return None


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the supervisor dies (even by kill -9),
    so no training process outlives the supervisor that owns its budget (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the process group is still killed when the run ends


def run_process(cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float,
                memory_cap_gb: float = 0.0) -> ProcessOutcome:
    """Run `cmd` in its own session with output to `log`; enforce wall time and memory."""
    import subprocess

    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
    pgid = proc.pid
    timed_out = oom = False
    peak = 0
    next_mem_check = 0.0
    status: int | None = None
    try:
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status = wait_status
                peak = max(peak, usage.ru_maxrss * 1024)
                break
            now = time.monotonic()
            if now - start > timeout:
                timed_out = True
                kill_group(pgid, signal.SIGTERM)
                status = _wait_until(proc.pid, now + GRACE_SECONDS)
                if status is None:
                    kill_group(pgid, signal.SIGKILL)
                    _, status, _ = os.wait4(proc.pid, 0)
                break
            if memory_cap_gb > 0 and now >= next_mem_check:
                next_mem_check = now + 0.5
                rss = _group_rss_bytes(pgid)
                peak = max(peak, rss)
                if rss > memory_cap_gb * 2**30:
                    oom = True
                    kill_group(pgid, signal.SIGKILL)
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
            time.sleep(POLL_SECONDS)
    except BaseException:
        # Ctrl-C (or any error) in the supervisor: the run must not outlive it.
        kill_group(pgid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.wait4(proc.pid, 0)
        raise
    # Kill leftovers of the group (a grandchild that outlived its parent) and wait for them.
    kill_session(pgid, time.monotonic() + GRACE_SECONDS)
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -9
    rc = None if (timed_out or oom) else proc.returncode
    return ProcessOutcome(rc, time.monotonic() - start, timed_out, oom, peak / 2**30)


def parse_summary(text: str) -> dict[str, float]:
    """The numeric `key: value` lines after the last `---` line (autoresearch's format)."""
    lines = text.splitlines()
    try:
        start = len(lines) - 1 - lines[::-1].index("---")
    except ValueError:
        return {}
    out: dict[str, float] = {}
    for line in lines[start + 1 :]:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            out[key.strip()] = float(value.strip())
        except ValueError:
            continue
    return out


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _command(task: TaskSpec) -> list[str]:
    # "python" in a task's command means this interpreter, so the harness is importable.
    return [sys.executable if part in ("python", "python3") else part for part in task.train]


def _base_env(task: TaskSpec) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "RSILAB_HOME", "CUDA_VISIBLE_DEVICES",
            "RSILAB_PRESET", "VIRTUAL_ENV")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(task.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = str(task.threads)
    env["MKL_NUM_THREADS"] = str(task.threads)
    return env


def run(task: TaskSpec, workdir: Path, run_dir: Path, *, seed: int, train_data: Path | None,
        val_data: Path | None, preset: str | None = None) -> RunResult:
    """Train `workdir` (a checkout of the task) with `seed`, then evaluate. Never raises for
    a failure of the task's code."""
    paths = RunPaths(run_dir)
    paths.artifact.mkdir(parents=True, exist_ok=True)
    env = _base_env(task)
    env.update({
        harness.ENV_BUDGET: repr(float(task.budget)),
        harness.ENV_SEED: str(seed),
        harness.ENV_THREADS: str(task.threads),
        harness.ENV_ARTIFACT_DIR: str(paths.artifact.resolve()),
    })
    if preset:
        env[harness.ENV_PRESET] = preset
    if train_data is not None:
        env[harness.ENV_TRAIN_DATA] = str(train_data)

    train = run_process(_command(task), cwd=workdir, env=env, log=paths.train_log,
                        timeout=task.budget + task.overhead, memory_cap_gb=task.memory_gb)
    summary = parse_summary(paths.train_log.read_text(errors="replace"))
    summary["peak_memory_gb"] = max(summary.get("peak_memory_gb", 0.0), train.peak_rss_gb)

    def result(status: Status, reason: str = "", *, metric: float | None = None,
               evaluation: dict[str, Any] | None = None, log: Path | None = None,
               eval_seconds: float = 0.0) -> RunResult:
        return RunResult(status, seed, metric=metric, reason=reason, summary=summary,
                         evaluation=evaluation or {}, train_seconds=train.seconds,
                         eval_seconds=eval_seconds, log_path=str(paths.train_log),
                         log_tail=tail(log) if log else "")

    if train.oom:
        return result(Status.OOM, f"oom: over the memory cap of {task.memory_gb} GB", log=paths.train_log)
    if train.timed_out:
        limit = task.budget + task.overhead
        return result(Status.TIMEOUT, f"timeout: killed after {limit:.0f} s (budget {task.budget:.0f} s"
                      f" + overhead {task.overhead:.0f} s)", log=paths.train_log)
    if train.returncode != 0:
        last = tail(paths.train_log, 1).strip() or f"exit code {train.returncode}"
        return result(Status.CRASH, f"crash: {last[:200]}", log=paths.train_log)

    if task.evaluator == "in-process":
        value = summary.get(task.metric.name)
        if value is None or not math.isfinite(value):
            return result(Status.CRASH, f"crash: train.py printed no finite {task.metric.name}",
                          log=paths.train_log)
        return result(Status.OK, metric=value, evaluation={"sealed": False})
    if val_data is None and task.evaluator == "sealed":
        return result(Status.CRASH, "crash: no validation data for the evaluator")

    ev, figures = _evaluate(task, workdir, paths, env, seed, val_data)
    value = figures.get(task.metric.name)
    if ev.timed_out:
        return result(Status.TIMEOUT, f"timeout: evaluation took over {task.eval_timeout:.0f} s",
                      evaluation=figures, log=paths.eval_log, eval_seconds=ev.seconds)
    if "refused" in figures:
        return result(Status.INVALID, f"invalid: {figures['refused']}", evaluation=figures,
                      log=paths.eval_log, eval_seconds=ev.seconds)
    if ev.returncode != 0 or not isinstance(value, int | float) or not math.isfinite(value):
        last = tail(paths.eval_log, 1).strip() or f"exit code {ev.returncode}"
        return result(Status.CRASH, f"crash: evaluator failed: {last[:200]}", evaluation=figures,
                      log=paths.eval_log, eval_seconds=ev.seconds)
    return result(Status.OK, metric=float(value), evaluation={"sealed": True, **figures},
                  eval_seconds=ev.seconds)


def _evaluate(task: TaskSpec, workdir: Path, paths: RunPaths, env: dict[str, str], seed: int,
              val_data: Path | None) -> tuple[ProcessOutcome, dict[str, Any]]:
    """Run the task's evaluator on the artifact; its outcome and the figures it wrote."""
    args = ["--artifact", str(paths.artifact.resolve()), "--val", str(val_data or ""),
            "--out", str(paths.metrics.resolve()), "--seed", str(seed), "--threads", str(task.threads)]
    if task.evaluator == "sealed":
        cmd = [sys.executable, "-m", "rsilab.harness.evaluate", *args,
               "--bytes", str(task.eval.bytes), "--probes", str(task.eval.probes)]
    else:
        cmd = [sys.executable, task.evaluator.removeprefix("script:"), *args]
    # The evaluator never sees the path of the training split.
    eval_env = {k: v for k, v in env.items() if k != harness.ENV_TRAIN_DATA}
    ev = run_process(cmd, cwd=workdir, env=eval_env, log=paths.eval_log, timeout=task.eval_timeout)
    try:
        figures = json.loads(paths.metrics.read_text())
    except (OSError, ValueError):
        figures = {}
    return ev, figures if isinstance(figures, dict) else {}
