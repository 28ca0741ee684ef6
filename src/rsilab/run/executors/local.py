"""The "local" executor: up to K runs at once on this machine. Owns: slots and run workers.

Slots come from the resources: one per GPU, each run pinned to its GPU through
`CUDA_VISIBLE_DEVICES` (which the runner passes through); without GPUs, usable cores //
the task's threads per run. `workers` asks for a number of slots instead (more than the
GPUs shares them round-robin). When the slots leave a core free (slots x threads < cores,
e.g. one run on a GPU box or the default single slot on a CPU), each run starts its sealed
evaluator with training, so the evaluator's imports overlap training (runner.run's
`prestart`); when the slots take every core, they would take CPU from training instead.

Each run executes in a short-lived worker process, `python -m rsilab.run.executors.local`,
that reads a pickled `RunRequest` on stdin, calls `runner.run` and writes the pickled
`RunResult` on stdout. A separate process rather than a thread calling the runner,
because it can be cancelled (SIGTERM makes the runner kill its process group; SIGKILL
follows after a grace) and because the same entry point runs a run on a Ray node. The
worker asks the kernel to kill it when the thread that started it dies (PR_SET_PDEATHSIG),
so `kill -9` of the supervisor takes every run down with it, as with a single run.

Not covered: other machines (executors/ray.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab.config import TaskSpec
from rsilab.results import RunResult, Status
from rsilab.run import process, runner
from rsilab.run.executors.base import RunFuture, RunRequest, cpu_slots, local_gpus, register

GRACE_SECONDS = 10.0  # after SIGTERM, how long a cancelled worker gets before SIGKILL
_PARENT_ENV = "RSILAB_WORKER_PARENT"  # the pid a worker must still have as its parent


@dataclass(frozen=True)
class Slot:
    index: int
    label: str  # "host/gpu0", "host/cpu1"
    env: dict[str, str]  # environment of the runs on this slot


@dataclass
class _Job:
    request: RunRequest
    future: RunFuture
    slot: Slot | None = None
    proc: subprocess.Popen[bytes] | None = None
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def slots_for(task: TaskSpec, workers: int | None, gpus: list[str] | None = None) -> list[Slot]:
    """The slots of this machine for `task` (see the module docstring)."""
    ids = local_gpus() if gpus is None else list(gpus)
    host = socket.gethostname()
    count = workers or (len(ids) if ids else cpu_slots(task.threads))
    if ids:
        return [
            Slot(i, f"{host}/gpu{ids[i % len(ids)]}", {"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]})
            for i in range(count)
        ]
    return [Slot(i, f"{host}/cpu{i}", {}) for i in range(count)]


@register("local")
class LocalExecutor:
    """Runs on this machine, at most `slots` at once (see the module docstring)."""

    name = "local"

    def __init__(
        self, task: TaskSpec, workers: int | None = None, gpus: list[str] | None = None
    ) -> None:
        self._slots = slots_for(task, workers, gpus)
        self._prestart = process.usable_cores() > len(self._slots) * task.threads
        self._free = list(self._slots)
        self._cond = threading.Condition()
        self._jobs: dict[RunFuture, _Job] = {}
        self._closed = False

    @property
    def slots(self) -> int:
        return len(self._slots)

    def describe(self) -> str:
        return f"local, {self.slots} slot(s): {', '.join(s.label for s in self._slots)}"

    def submit(self, request: RunRequest) -> RunFuture:
        future: RunFuture = RunFuture()
        job = _Job(request, future)
        with self._cond:
            self._jobs[future] = job
            if self._free:  # taken now, so `where` names the slot from the start
                job.slot = self._free.pop(0)
        # A daemon thread per run: it waits for a slot (if none was free), then for the worker.
        threading.Thread(
            target=self._execute, args=(job,), daemon=True, name=f"rsilab-run {request.key}"
        ).start()
        return future

    def cancel(self, future: RunFuture) -> None:
        job = self._jobs.get(future)
        if job is None:
            return
        with job.lock:
            job.cancelled = True
            proc = job.proc
        with self._cond:
            self._cond.notify_all()  # a job waiting for a slot gives up
        if proc is not None and proc.poll() is None:
            process.kill_group(proc.pid, signal.SIGTERM)  # the runner unwinds and kills its runs
            timer = threading.Timer(GRACE_SECONDS, process.kill_group, (proc.pid, signal.SIGKILL))
            timer.daemon = True
            timer.start()

    def where(self, future: RunFuture) -> str:
        job = self._jobs.get(future)
        if job is None:
            return "done" if future.done() else ""
        return job.slot.label if job.slot is not None else "queued"

    def close(self) -> None:
        self._closed = True
        for future in list(self._jobs):
            if not future.done():
                self.cancel(future)

    # ---- one run ----------------------------------------------------------------------
    def _execute(self, job: _Job) -> None:
        try:
            result = self._run(job)
        except BaseException as e:  # a bug here must not leave the supervisor waiting forever
            result = RunResult(
                Status.CRASH, job.request.seed, reason=f"crash: local executor: {e!r}"
            )
        finally:
            with self._cond:
                self._jobs.pop(job.future, None)
                if job.slot is not None:
                    self._free.append(job.slot)
                    self._free.sort(key=lambda s: s.index)
                self._cond.notify_all()
        job.future.set_result(result)

    def _run(self, job: _Job) -> RunResult:
        req = job.request
        with self._cond:
            while job.slot is None and not self._free and not job.cancelled:
                self._cond.wait()
            if job.cancelled:
                return _interrupted(req)
            if job.slot is None:
                job.slot = self._free.pop(0)
        env = {**os.environ, **req.env, **job.slot.env, _PARENT_ENV: str(os.getpid())}
        with job.lock:
            if job.cancelled:
                return _interrupted(req)
            # Its own session: a cancel signals the worker's whole group, never ours.
            job.proc = subprocess.Popen(
                [sys.executable, "-m", "rsilab.run.executors.local"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        if req.prestart_eval is None:
            req = dataclasses.replace(req, prestart_eval=self._prestart)
        out, err = job.proc.communicate(pickle.dumps(req))
        if job.proc.returncode == 0:
            with contextlib.suppress(Exception):
                result = pickle.loads(out)
                if isinstance(result, RunResult):
                    return result
        if job.cancelled:
            return _interrupted(req)
        last = (
            err.decode(errors="replace").strip().splitlines()
            or [f"exit code {job.proc.returncode}"]
        )[-1]
        return RunResult(
            Status.CRASH,
            req.seed,
            reason=f"crash: the run's worker process failed: {last[:200]}",
            log_tail=err.decode(errors="replace")[-4000:],
        )


def _interrupted(req: RunRequest) -> RunResult:
    return RunResult(Status.INTERRUPTED, req.seed, reason="interrupted: the run was cancelled")


def run_request(req: RunRequest) -> RunResult:
    """Execute one request in this process (the worker's body; the Ray node task's too)."""
    options: dict[str, Any] = {}
    if req.isolation is not None:
        options["isolation"] = req.isolation
    return runner.run(
        req.task,
        req.workdir,
        req.run_dir,
        seed=req.seed,
        train_data=req.train_data,
        val_data=req.val_data,
        preset=req.preset,
        prestart=req.prestart_eval,
        **options,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the runner's handler kills the run's process group, then we exit


def worker_main() -> int:
    """`python -m rsilab.run.executors.local`: one run, request on stdin, result on stdout."""
    process.die_with_parent()
    parent = os.environ.get(_PARENT_ENV)
    if parent is not None and os.getppid() != int(parent):
        return 3  # the supervisor died before we could ask to die with it
    signal.signal(signal.SIGTERM, _interrupt)
    request = pickle.loads(sys.stdin.buffer.read())
    assert isinstance(request, RunRequest)
    Path(request.run_dir).mkdir(parents=True, exist_ok=True)
    result = run_request(request)
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
