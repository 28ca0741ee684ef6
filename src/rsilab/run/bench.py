"""The bench. Owns: how rsilab trains and evaluates a checkout (task, data, preset, isolation,
executor), built once and used by everything that runs code.

Every training run of rsilab goes through a `Bench`: the research loop (`Supervisor`), the
fidelity ladder, `rsilab score`, `rsilab meta`, `rsilab collapse` and `rsilab train`. The
bench turns (checkout, seed, folder) into a `RunRequest` and hands it to its executor; the
executor's worker (`rsilab.run.executors.local.run_request`, on this machine or a Ray node)
is the only caller of `runner.run`. So whatever runs on the loop's executor, the studies run
there too (`--executor ray`), with the same data, preset and sandbox.

A bench built without an executor makes a one-slot local executor on first use and closes
it in `close()` (or at the end of a `with` block). `derive()` makes a bench for another
task (a longer budget, generated training data) that shares the executor.

Results are values, never exceptions: a crash, a timeout or a cancelled run is a
`RunResult`. An interrupt (Ctrl-C) while `measure` waits cancels the bench's runs in flight
(each is then killed with its process group) before it propagates.

Not covered: which runs to make or what their results mean (the callers), and the run
itself (runner.py).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsilab.config import TaskSpec
from rsilab.results import RunResult
from rsilab.run.executors.base import Executor, RunFuture, RunRequest, create

log = logging.getLogger(__name__)

CANCEL_WAIT_SECONDS = 30.0  # after an interrupt, how long `measure` waits for its cancelled runs


class Bench:
    """Runs checkouts of one task: `submit` one run, or `measure` several and wait."""

    def __init__(
        self,
        task: TaskSpec,
        *,
        train_data: Path | None = None,
        val_data: Path | None = None,
        preset: str | None = None,
        isolation: str | None = None,
        executor: Executor | None = None,
        owns_executor: bool | None = None,
    ) -> None:
        """`isolation`: the runner's sandbox choice (rsilab.run.sandbox.CHOICES); None: the
        task's `sandbox` key. `executor`: where runs execute; None: one local slot, made on
        first use. The bench closes the executor in `close()` when it owns it: by default
        when it made it; `owns_executor=True` hands a given executor over to it."""
        self.task = task
        self.train_data, self.val_data, self.preset = train_data, val_data, preset
        self.isolation = isolation if isolation is not None else task.sandbox
        self._executor = executor
        self._owner = executor is None if owns_executor is None else owns_executor
        self._lock = threading.Lock()
        self._keys = itertools.count()

    @property
    def executor(self) -> Executor:
        with self._lock:
            if self._executor is None:
                self._executor = create("local", task=self.task, workers=1)
            return self._executor

    @property
    def slots(self) -> int:
        """How many runs execute at once."""
        return self.executor.slots

    def derive(
        self,
        *,
        task: TaskSpec | None = None,
        train_data: Path | None = None,
        val_data: Path | None = None,
    ) -> Bench:
        """A bench for another task or data on the same executor (this bench still owns it)."""
        return Bench(
            task or self.task,
            train_data=train_data or self.train_data,
            val_data=val_data or self.val_data,
            preset=self.preset,
            isolation=self.isolation,
            executor=self.executor,
        )

    def request(
        self,
        workdir: Path,
        run_dir: Path,
        seed: int,
        *,
        label: str = "",
        key: str | None = None,
        commit: str = "",
        env: Mapping[str, str] | None = None,
    ) -> RunRequest:
        """The request for one run of `workdir` (a checkout of `commit`) with `seed`, its
        files in `run_dir`. `key` must be unique among the runs in flight (default: a counter)."""
        return RunRequest(
            key or f"bench-{next(self._keys)}",
            self.task,
            Path(workdir),
            commit,
            Path(run_dir),
            seed,
            self.train_data,
            self.val_data,
            self.preset,
            self.isolation,
            label,
            dict(env or {}),
        )

    def submit(self, request: RunRequest) -> RunFuture:
        """Start (or queue) a run; the future resolves to its RunResult."""
        log.debug(
            "run %s (%s): %s with seed %d, files in %s",
            request.key,
            request.label or "-",
            request.workdir,
            request.seed,
            request.run_dir,
        )
        future = self.executor.submit(request)
        future.add_done_callback(lambda f: log.debug("run %s ended: %s", request.key, _shown(f)))
        return future

    def cancel(self, future: RunFuture) -> None:
        """Stop a run: it resolves soon after as an `interrupted` result."""
        self.executor.cancel(future)

    def where(self, future: RunFuture) -> str:
        """Where the run executes, in words, or "queued"."""
        return self.executor.where(future)

    def measure(
        self, workdir: Path, runs: Sequence[tuple[int, Path]], *, label: str = "", commit: str = ""
    ) -> list[RunResult]:
        """Train and evaluate `workdir` once per (seed, run folder), side by side when the
        executor has slots for it; the results in the order of `runs`."""
        futures = []
        for k, (seed, run_dir) in enumerate(runs):
            shown = f"{label} {k + 1}/{len(runs)}" if len(runs) > 1 else label
            futures.append(
                self.submit(self.request(workdir, run_dir, seed, label=shown, commit=commit))
            )
        return self.wait(futures)

    def run(self, workdir: Path, run_dir: Path, seed: int, *, label: str = "") -> RunResult:
        """One run of `workdir` with `seed` (see `measure`)."""
        return self.measure(workdir, [(seed, run_dir)], label=label)[0]

    def wait(self, futures: Sequence[RunFuture]) -> list[RunResult]:
        """The results of `futures`, in order; on an interrupt, cancel them first."""
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                if not f.done():
                    self.cancel(f)
            concurrent.futures.wait(futures, timeout=CANCEL_WAIT_SECONDS)
            raise

    def describe(self) -> str:
        """The executor, in words (for the first screen of a command)."""
        ex: Any = self.executor
        return str(ex.describe()) if hasattr(ex, "describe") else ex.name

    def close(self) -> None:
        """Cancel what is still running and release the executor, if this bench made it."""
        with self._lock:
            executor, self._executor = (
                (self._executor, None) if self._owner else (None, self._executor)
            )
        if executor is not None:
            executor.close()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shown(future: RunFuture) -> str:
    """A finished run in a few words, for the log."""
    if future.cancelled():
        return "cancelled"
    r = future.result()
    return f"{r.status} {r.metric:.4f}" if r.metric is not None else f"{r.status}: {r.reason}"
