"""One run: train then evaluate one checkout with one seed. Owns: processes, budget, logs.

The runner, not train.py, owns the clock: the training process gets `budget + overhead`
seconds from its start, in its own session (process group); past that it gets SIGTERM,
then SIGKILL after a short grace, and the run is `timeout`. A task's `wrap_up_signal` goes
to the train command alone when the budget is up, so a loop that knows nothing of the
harness can stop, evaluate and print within the overhead. Watchdogs sum the memory
(shared and memfd memory included: memory.py) and the tasks of the run's whole process
tree (its session and every descendant, in or out of a sandbox) and kill it past
`memory_gb` (`oom`) or `max_procs` (a fork bomb: `crash`); the evaluator runs under the
same two watchdogs (its `oom` is the run's: it runs the run's model). Every
expected failure comes back as a `RunResult` value, never as an exception.

Both processes run in the sandbox of `rsilab.run.sandbox` (bubblewrap when it works; the
result records the level). The evaluator runs from a private copy of the task folder
taken before training, and the folder is put back to that copy after the run.

The metric never comes from train.py's output (unless the task chose the unsealed
`in-process` evaluator): a separate evaluator process reads the artifact and writes its
own metrics file, into a private folder no run can reach; the runner copies that file and
the evaluator's log into the run folder. When a core is spare, the sealed evaluator is
started together with training and waits, its imports done (about 2.4 s of the 5.3 s an
evaluation took on a 2-core CPU), until training has ended and been checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab import harness, provenance
from rsilab.config import TaskSpec
from rsilab.fsio import READ_CAP, atomic_write, is_regular, read_regular, sha256_bytes, tail_regular
from rsilab.results import CPU_KEY, HANDOVER_KEY, RunResult, Status
from rsilab.run import sandbox
from rsilab.run.process import (
    ProcessOutcome,
    kill_and_reap,
    members_of,
    run_process,
    scan,
    spawn,
    tail,
    usable_cores,
    watch,
)
from rsilab.space import SearchSpace

SUMMARY_LINES = 1000
# Set when the task has a wrap_up_signal: its name (SIGUSR1, ...), so train code can tell.
ENV_WRAP_UP = "RSILAB_WRAP_UP_SIGNAL"
METRICS_DIGEST = "metrics_sha256"  # key in RunResult.evaluation: sha256 of the metrics file


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


def metric_from_log(log: Path, pattern: str) -> tuple[float | None, str]:
    """The metric as `metric.pattern` reads it from a training log: the last match (its first
    group, else the whole match) as a number; else None and why, in words. Only the log's
    last READ_CAP bytes are read, never through a link."""
    raw = tail_regular(log, READ_CAP)
    text = raw.decode(errors="replace") if raw is not None else ""
    last = None
    for match in re.finditer(pattern, text, flags=re.MULTILINE):
        last = match
    if last is None:
        return None, f"no line of the training log matches metric.pattern {pattern!r}"
    found = last.group(1) if last.re.groups else last.group(0)
    try:
        value = float(found)
    except (TypeError, ValueError):
        return None, f"metric.pattern {pattern!r} matched {found!r}, which is not a number"
    if not math.isfinite(value):
        return None, f"metric.pattern {pattern!r} matched {found!r}, which is not finite"
    return value, ""


def _command(task: TaskSpec, workdir: Path) -> list[str]:
    # "python" in a task's command means this interpreter, so the harness is importable.
    # Declared flag knobs follow the command, their values read from this checkout.
    argv = [sys.executable if part in ("python", "python3") else part for part in task.train]
    return argv + SearchSpace.of(task).flag_args(workdir)


def _base_env(task: TaskSpec) -> dict[str, str]:
    keep = (
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "RSILAB_HOME",
        "CUDA_VISIBLE_DEVICES",
        "RSILAB_PRESET",
        "VIRTUAL_ENV",
    )
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(task.env)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = str(task.threads)
    env["MKL_NUM_THREADS"] = str(task.threads)
    return env


def run(
    task: TaskSpec,
    workdir: Path,
    run_dir: Path,
    *,
    seed: int,
    train_data: Path | None,
    val_data: Path | None,
    preset: str | None = None,
    isolation: str = "auto",
    prestart: bool | None = None,
) -> RunResult:
    """Train `workdir` (a checkout of the task) with `seed`, then evaluate. Never raises for
    a failure of the task's code.

    `isolation` (rsilab.run.sandbox.CHOICES) picks the sandbox; `require`, or a level that does
    not work here, raises RsilabError before anything runs. The result records the level.
    `prestart`: start the sealed evaluator with training, so that its imports overlap it
    (see `_start_evaluator`); None: when this machine has a core beyond the run's threads
    (right for one run at a time; an executor with several slots decides for them).
    """
    level = sandbox.resolve(isolation)
    if prestart is None:
        prestart = usable_cores() > task.threads
    # The folder as it was checked out: the evaluator runs from this copy, and the folder is
    # put back to it afterwards, so what a run writes there reaches neither the evaluator
    # nor the next run of the same commit.
    pristine = sandbox.Pristine.take(workdir)
    try:
        with contextlib.ExitStack() as cleanup:  # a started evaluator never outlives the run
            result = _run(
                task,
                workdir,
                run_dir,
                seed=seed,
                train_data=train_data,
                val_data=val_data,
                preset=preset,
                level=level,
                pristine=pristine,
                prestart=prestart,
                cleanup=cleanup,
            )
    finally:
        pristine.restore()
        pristine.drop()
    return dataclasses.replace(result, isolation=level)


def reevaluate(
    task: TaskSpec,
    workdir: Path,
    artifact: Path,
    out_dir: Path,
    *,
    seed: int,
    val_data: Path | None,
    isolation: str = "auto",
) -> tuple[ProcessOutcome, dict[str, Any]]:
    """Evaluate a kept run's `artifact` again, as the runner did after training: the task's
    evaluator from `workdir` (a checkout of the run's commit), in the sandbox, on a copy of
    the artifact in `out_dir` (links copied as links, never followed). The sealed evaluator
    draws fresh secrets; a task's script gets `seed` (the run's, so its noise is the same).
    Returns the evaluator's outcome and figures (empty when it wrote none)."""
    level = sandbox.resolve(isolation)
    paths = RunPaths(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(artifact, paths.artifact, symlinks=True)
    env = _base_env(task)
    env[harness.ENV_THREADS] = str(task.threads)
    hidden = _hidden(workdir, val_data)
    return _evaluate(task, workdir, paths, env, seed, val_data, level=level, hidden=hidden)


def _hidden(workdir: Path, val_data: Path | None) -> list[Path]:
    """What a run must not see besides sandbox.default_hidden(): the workspace's git dir and
    state (ledger, queue, other worktrees) and the folder of the validation split (the
    training split next to it is bound back read-only)."""
    hidden = sandbox.workspace_private(workdir)
    if val_data is not None:
        hidden.append(val_data.resolve().parent)
    return hidden


def _run(
    task: TaskSpec,
    workdir: Path,
    run_dir: Path,
    *,
    seed: int,
    train_data: Path | None,
    val_data: Path | None,
    preset: str | None,
    level: str,
    pristine: sandbox.Pristine,
    prestart: bool,
    cleanup: contextlib.ExitStack,
) -> RunResult:
    paths = RunPaths(run_dir)
    paths.artifact.mkdir(parents=True, exist_ok=True)
    # The guard: real, hash-locked validation data; generated training data only when the
    # task allows it. Checked before training, and recorded with every result.
    data, refusal = provenance.check_run_data(
        train_data, val_data, allow_generated=task.allow_generated_data
    )
    if refusal:
        return RunResult(
            Status.INVALID, seed, reason=f"invalid: {refusal}", evaluation={"data": data}
        )
    env = _base_env(task)
    env.update(
        {
            harness.ENV_BUDGET: repr(float(task.budget)),
            harness.ENV_SEED: str(seed),
            harness.ENV_THREADS: str(task.threads),
            harness.ENV_ARTIFACT_DIR: str(paths.artifact.resolve()),
        }
    )
    if task.wrap_up_signal:
        env[ENV_WRAP_UP] = task.wrap_up_signal
    if preset:
        env[harness.ENV_PRESET] = preset
    if train_data is not None:
        env[harness.ENV_TRAIN_DATA] = str(train_data)

    frozen = task.frozen_files(pristine.copy)
    hidden = _hidden(workdir, val_data)
    # Read-only inside the writable worktree: the frozen files, and a worktree's `.git` file
    # (git run later in this folder must not follow a git dir the run chose).
    readonly = [workdir / rel for rel in frozen] + [p for p in [workdir / ".git"] if p.is_file()]
    readonly += [train_data] if train_data is not None else []
    eval_hidden = [*hidden, *([train_data] if train_data is not None else [])]
    waiting = None
    if prestart and task.evaluator == "sealed" and val_data is not None:
        waiting = _start_evaluator(
            task,
            pristine.copy,
            paths,
            env,
            seed,
            val_data,
            level=level,
            hidden=eval_hidden,
            wait=True,
        )
        cleanup.callback(waiting.close)
    cmd, _ = sandbox.wrap(
        _command(task, workdir),
        workdir=workdir,
        readonly=readonly,
        writable=[workdir, run_dir],
        hidden=hidden,
        max_procs=task.max_procs,
        isolation=level,
    )
    started = time.time()  # the kernel's ctimes below are on this clock
    try:
        train = run_process(
            cmd,
            cwd=workdir,
            env=env,
            log=paths.train_log,
            timeout=task.budget + task.overhead,
            memory_cap_gb=task.memory_gb,
            max_procs=task.max_procs,
            wrap_up=(task.budget, signal.Signals[task.wrap_up_signal])
            if task.wrap_up_signal
            else None,
        )
        # Before reclaim: taking the files back changes their ctime.
        handover = _handover(paths.artifact, started)
    finally:
        sandbox.reclaim([workdir, run_dir])
    # The run can write its run folder: it could swap its log for a link to a file of the
    # supervisor's user, whose tail would land in the ledger and in the next prompt. Never
    # read through one.
    log_replaced = not is_regular(paths.train_log)
    if log_replaced:
        sandbox.remove(paths.train_log)
        # By rename: whatever is still there (a link, a FIFO) is replaced, never written through.
        atomic_write(paths.train_log, "rsilab: the run replaced or removed this log\n")
    summary = parse_summary(tail(paths.train_log, SUMMARY_LINES))  # the `---` block ends the log
    # Two resources, two caps (memory_gb, gpu_memory_gb): what train.py reports is its
    # device's peak (CUDA's allocator for the bundled task), what the watchdog saw is host RSS.
    reported = float(summary.get("peak_memory_gb", 0.0))
    summary["peak_gpu_memory_gb"] = reported
    summary["peak_rss_gb"] = train.peak_rss_gb
    summary["peak_memory_gb"] = max(reported, train.peak_rss_gb)
    # The runner's own figures, from the kernel; what train.py printed under these keys is
    # overwritten (the judge and the audit read them).
    summary[CPU_KEY] = round(train.cpu_seconds, 3)
    if handover is not None:
        summary[HANDOVER_KEY] = round(handover, 3)

    def result(
        status: Status,
        reason: str = "",
        *,
        metric: float | None = None,
        evaluation: dict[str, Any] | None = None,
        log: Path | None = None,
        eval_seconds: float = 0.0,
    ) -> RunResult:
        return RunResult(
            status,
            seed,
            metric=metric,
            reason=reason,
            summary=summary,
            evaluation={**(evaluation or {}), **({"data": data} if data else {})},
            train_seconds=train.seconds,
            eval_seconds=eval_seconds,
            log_path=str(paths.train_log),
            log_tail=tail(log) if log else "",
        )

    if not workdir.is_dir():  # deleted under the run (from outside: a sandbox keeps its mount)
        return result(
            Status.CRASH,
            f"crash: the worktree {workdir} was deleted during the run",
            log=paths.train_log,
        )
    # Frozen files are read-only in a sandbox; without one, a change is caught here.
    if log_replaced:
        return result(
            Status.INVALID, "invalid: the run replaced or removed its log file (train.log)"
        )
    tampered = pristine.changed(frozen)
    if tampered:
        return result(
            Status.INVALID,
            f"invalid: the run changed the frozen file {tampered[0]}",
            log=paths.train_log,
        )
    if train.oom:
        return result(
            Status.OOM, f"oom: over the memory cap of {task.memory_gb} GB", log=paths.train_log
        )
    if train.timed_out:
        limit = task.budget + task.overhead
        return result(
            Status.TIMEOUT,
            f"timeout: killed after {limit:.0f} s (budget {task.budget:.0f} s"
            f" + overhead {task.overhead:.0f} s)",
            log=paths.train_log,
        )
    if train.too_many_procs:
        return result(
            Status.CRASH,
            f"crash: over the limit of {task.max_procs} processes and threads"
            " (max_procs): a fork bomb?",
            log=paths.train_log,
        )
    if train.returncode != 0:
        last = tail(paths.train_log, 1).strip() or f"exit code {train.returncode}"
        return result(Status.CRASH, f"crash: {last[:200]}", log=paths.train_log)

    window = task.budget + task.handover_slack
    if (
        task.handover_slack > 0
        and not task.budget_flops
        and handover is not None
        and handover > window
    ):
        return result(
            Status.INVALID,
            f"invalid: trained past its budget: the artifact last changed {handover:.1f} s after "
            f"the start, later than the budget {task.budget:g} s + {task.handover_slack:g} s for "
            "start-up and saving (handover_slack; the runner's clock, not train.py's)",
            log=paths.train_log,
        )
    if task.evaluator == "in-process":
        if task.metric.pattern:
            value, missing = metric_from_log(paths.train_log, task.metric.pattern)
            if value is not None:
                summary[task.metric.name] = value
        else:
            value = summary.get(task.metric.name)
            missing = f"train.py printed no finite {task.metric.name}"
        if value is None or not math.isfinite(value):
            return result(Status.CRASH, f"crash: {missing}", log=paths.train_log)
        return result(Status.OK, metric=value, evaluation={"sealed": False})
    if val_data is None and task.evaluator == "sealed":
        return result(Status.CRASH, "crash: no validation data for the evaluator")
    if paths.artifact.is_symlink():  # the evaluator would be shown whatever it points to
        return result(Status.INVALID, "invalid: the run replaced its artifact folder with a link")

    ev, figures = _evaluate(
        task,
        pristine.copy,
        paths,
        env,
        seed,
        val_data,
        level=level,
        hidden=eval_hidden,
        waiting=waiting,
    )
    value = figures.get(task.metric.name)
    if ev.timed_out:
        return result(
            Status.TIMEOUT,
            f"timeout: evaluation took over {task.eval_timeout:.0f} s",
            evaluation=figures,
            log=paths.eval_log,
            eval_seconds=ev.seconds,
        )
    if ev.oom:
        return result(
            Status.OOM,
            f"oom: evaluation over the memory cap of {task.memory_gb} GB",
            evaluation=figures,
            log=paths.eval_log,
            eval_seconds=ev.seconds,
        )
    if "refused" in figures:
        return result(
            Status.INVALID,
            f"invalid: {figures['refused']}",
            evaluation=figures,
            log=paths.eval_log,
            eval_seconds=ev.seconds,
        )
    if ev.returncode != 0 or not isinstance(value, int | float) or not math.isfinite(value):
        last = tail(paths.eval_log, 1).strip() or f"exit code {ev.returncode}"
        return result(
            Status.CRASH,
            f"crash: evaluator failed: {last[:200]}",
            evaluation=figures,
            log=paths.eval_log,
            eval_seconds=ev.seconds,
        )
    return result(
        Status.OK,
        metric=float(value),
        evaluation={"sealed": True, **figures},
        eval_seconds=ev.seconds,
    )


def _handover(artifact: Path, started: float, limit: int = 10_000) -> float | None:
    """Seconds from `started` (time.time()) to the last change in the `artifact` folder: the
    newest ctime of the folder and everything below it, links not followed. A run cannot set
    a ctime back (touching a file moves it forward), so a model saved late cannot pass for one
    saved in time. None when the folder is gone; at most `limit` entries are read."""
    try:
        newest = os.lstat(artifact).st_ctime
    except OSError:
        return None
    seen = 0
    for root, dirs, files in os.walk(artifact):  # os.walk follows no links by default
        for name in dirs + files:
            seen += 1
            if seen > limit:
                return newest - started
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_ctime)
    return newest - started


@dataclass
class _Evaluator:
    """A started evaluator and its private folder: its metrics file and log, out of any run's
    reach (a sandboxed run has its own /tmp); `_evaluate` copies both into the run folder."""

    proc: subprocess.Popen[bytes] | ProcessOutcome  # an outcome: it could not start
    files: RunPaths  # the private folder; its metrics file and eval log, named as a run's
    artifact: tuple[int, int] | None  # (st_dev, st_ino) of the artifact folder in its sandbox
    waiting: bool  # started with --wait: it needs `go` on stdin

    def close(self) -> None:
        """Kill it if it still runs (a waiting one also exits at the end of its input) and
        delete its folder. Idempotent."""
        if isinstance(self.proc, subprocess.Popen) and self.proc.returncode is None:
            seen = {
                m.pid: m.start for m in members_of(scan(), self.proc.pid)
            }  # inside its sandbox too
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            kill_and_reap(self.proc, seen)
        sandbox.reclaim([self.files.run_dir])
        shutil.rmtree(self.files.run_dir, ignore_errors=True)


def _identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what `path` names now; None when nothing does."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _start_evaluator(
    task: TaskSpec,
    workdir: Path,
    paths: RunPaths,
    env: dict[str, str],
    seed: int,
    val_data: Path | None,
    *,
    level: str,
    hidden: list[Path],
    wait: bool,
) -> _Evaluator:
    """Start the task's evaluator on the run's artifact folder; `_evaluate` finishes it.

    `workdir` is the pristine copy of the task folder. The evaluator gets the same sandbox
    as training, with only its private folder writable, the artifact folder and the
    validation split read-only, and not the training split. `-I` (sealed) and `-s` (a
    script) keep the user's site folder and the working folder off its import path, so no
    module a run could plant there shadows one the evaluator imports.

    `wait` (the sealed evaluator only): started before training, it imports and then waits
    for `go`. What it is shown cannot change under it: the pristine copy and the validation
    split are the runner's, and its artifact binding is the folder as it was when it
    started (`_evaluate` falls back to a fresh evaluator if training replaced that folder).
    Training cannot reach its folder, and it reads the artifact only after training ended.
    """
    files = RunPaths(Path(tempfile.mkdtemp(prefix="rsilab-eval-")))
    args = [
        "--artifact",
        str(paths.artifact.resolve()),
        "--val",
        str(val_data or ""),
        "--out",
        str(files.metrics),
        "--threads",
        str(task.threads),
    ]
    # The evaluator never sees the path of the training split.
    eval_env = {k: v for k, v in env.items() if k != harness.ENV_TRAIN_DATA}
    if task.evaluator == "sealed":
        # Not the run's seed either, nor anything else the run knows: the sealed evaluator
        # draws its secrets (probe positions, probed batches) from the OS at evaluation time.
        eval_env.pop(harness.ENV_SEED, None)
        cmd = [
            sys.executable,
            "-I",
            "-B",
            "-m",
            "rsilab.harness.evaluate",
            *args,
            "--bytes",
            str(task.eval.bytes),
            "--probes",
            str(task.eval.probes),
            *(["--wait"] if wait else []),
        ]
    else:  # a task's own script: --seed is part of its documented interface
        cmd = [
            sys.executable,
            "-s",
            "-B",
            str(workdir / task.evaluator.removeprefix("script:")),
            *args,
            "--seed",
            str(seed),
        ]
    readonly = [workdir, paths.artifact] + ([val_data] if val_data is not None else [])
    cmd, _ = sandbox.wrap(
        cmd,
        workdir=workdir,
        readonly=readonly,
        writable=[files.run_dir],
        hidden=hidden,
        max_procs=task.max_procs,
        isolation=level,
    )
    proc = spawn(
        cmd,
        cwd=workdir,
        env=eval_env,
        log=files.eval_log,
        stdin=subprocess.PIPE if wait else subprocess.DEVNULL,
    )
    return _Evaluator(proc, files, _identity(paths.artifact), wait)


def _evaluate(
    task: TaskSpec,
    workdir: Path,
    paths: RunPaths,
    env: dict[str, str],
    seed: int,
    val_data: Path | None,
    *,
    level: str = "none",
    hidden: list[Path] | None = None,
    waiting: _Evaluator | None = None,
) -> tuple[ProcessOutcome, dict[str, Any]]:
    """Run the task's evaluator on the artifact; its outcome and the figures it wrote (with
    `eval_prestarted`). `waiting`: one started with training (`_start_evaluator`, wait)."""
    # Provenance: the metrics file must be this evaluator's. One already in the run folder
    # (planted by train.py, which can reach the folder, or left by an earlier attempt) goes.
    # So does a log there: a link planted in its place would make the runner write through it.
    # Removed whatever they are, never followed.
    for planted in (paths.metrics, paths.eval_log):
        sandbox.remove(planted)
    ev = waiting
    if ev is not None and (
        isinstance(ev.proc, ProcessOutcome) or _identity(paths.artifact) != ev.artifact
    ):
        ev.close()  # training swapped the artifact folder for another one: start afresh
        ev = None
    if ev is None:
        ev = _start_evaluator(
            task, workdir, paths, env, seed, val_data, level=level, hidden=hidden or [], wait=False
        )
    try:
        start = time.monotonic()
        if isinstance(ev.proc, ProcessOutcome):
            outcome = ev.proc
        else:
            if ev.waiting:
                assert ev.proc.stdin is not None
                with contextlib.suppress(OSError):  # it died waiting: its exit status says why
                    ev.proc.stdin.write(b"go\n")
                    ev.proc.stdin.close()
            # The same memory cap as training: the evaluator runs the run's model (an
            # exported graph may expand whatever it likes), so what it holds is the run's.
            outcome = watch(
                ev.proc,
                start=start,
                timeout=task.eval_timeout,
                memory_cap_gb=task.memory_gb,
                max_procs=task.max_procs,
            )
        sandbox.reclaim([ev.files.run_dir])
        # Into the run folder by rename (atomic_write), never through whatever path a run
        # may have put there since; the metrics file byte for byte, as `rsilab audit`
        # checks it against the sha256 in the ledger.
        log, metrics = ev.files.eval_log, ev.files.metrics
        text = tail_regular(log, READ_CAP)  # never through a link (the evaluator runs model code)
        if text is not None:
            atomic_write(paths.eval_log, text)
        raw = read_regular(metrics)  # the evaluator writes a regular file
        if raw is None:
            return outcome, {}
    finally:
        ev.close()
    atomic_write(paths.metrics, raw)
    try:
        figures = json.loads(raw)
    except ValueError:
        return outcome, {}
    if not isinstance(figures, dict):
        return outcome, {}
    return outcome, {**figures, METRICS_DIGEST: sha256_bytes(raw), "eval_prestarted": ev.waiting}
