"""The executor protocol and its registry. Owns: RunRequest, Executor, register/create, slots.

An executor runs training runs; it decides nothing. The supervisor hands it a
`RunRequest` (a checkout of one commit, where the run's files go, the seed, the task) and
gets a `concurrent.futures.Future` that resolves to the run's `RunResult`, always a value:
a crash, a timeout, a lost worker or a cancelled run is a result, never an exception.
`slots` says how many runs it executes at once; the supervisor keeps at most that many in
flight. `where(future)` says where a run executes (a node, a GPU), for the live view.

Every executor, built-in or plugin, is registered here under a name, the built-ins with
`@register(...)` like the proposers, plugins through the `rsilab.run.executors` entry-point
group. `create(name, task=..., workers=..., **options)` is the one way to get one.

Not covered: which runs to start or what their results mean (the supervisor's job), and
the run itself (runner.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from rsilab.config import TaskSpec
from rsilab.errors import ConfigError
from rsilab.registry import Registry
from rsilab.results import RunResult
from rsilab.run import process

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rsilab.executors"
# Modules of rsilab that register built-in executors; imported on first use. The ray one
# registers without importing ray (that happens when a RayExecutor is built).
_BUILTIN_MODULES = ("local", "ray")

RunFuture = concurrent.futures.Future[RunResult]  # what `submit` returns


@dataclass(frozen=True)
class RunRequest:
    """One run to execute: train then evaluate `workdir` (a checkout of `commit`) once."""

    key: str  # unique among the runs in flight, e.g. "exp-0007/run-1"
    task: TaskSpec
    workdir: Path  # a checkout of the commit on the supervisor's machine
    commit: str
    run_dir: Path  # where train.log, eval.log, metrics.json and the artifact belong
    seed: int
    train_data: Path | None = None  # prepared data on the supervisor's machine
    val_data: Path | None = None
    preset: str | None = None
    isolation: str | None = None  # the runner's sandbox choice; None: the runner's default
    label: str = ""  # what a person sees: "experiment 7 run 2"
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for the run
    # Start the sealed evaluator with training (runner.run's `prestart`); the executor sets
    # it from what else shares the machine; None: the runner's guess for a lone run.
    prestart_eval: bool | None = None


@runtime_checkable
class Executor(Protocol):
    name: str

    @property
    def slots(self) -> int:
        """How many runs execute at once (the supervisor keeps at most this many in flight)."""
        ...

    def submit(self, request: RunRequest) -> RunFuture:
        """Start (or queue) a run; the future resolves to its RunResult."""
        ...

    def cancel(self, future: RunFuture) -> None:
        """Stop a run: it resolves soon after as an `interrupted` result."""
        ...

    def where(self, future: RunFuture) -> str:
        """Where the run executes, in words ("host/gpu0", "10.0.0.3"), or "queued"."""
        ...

    def close(self) -> None:
        """Cancel what is still running and release the resources."""
        ...


REGISTRY: Registry[Executor] = Registry(
    "executor", "rsilab.run.executors", _BUILTIN_MODULES, ENTRY_POINT_GROUP
)
F = TypeVar("F", bound=Callable[..., Executor])


def register(name: str) -> Callable[[F], F]:
    """Decorator: register an executor factory (usually the class) under `name`."""
    return REGISTRY.register(name)


def available() -> list[str]:
    """Names of every registered executor, sorted."""
    return REGISTRY.available()


def create(name: str, *, task: TaskSpec, workers: int | None = None, **options: Any) -> Executor:
    """Build the executor registered as `name` for `task`, running at most `workers` runs
    at once (None: as many as its resources allow)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    factory = REGISTRY.factory(name, task, workers=workers, **options)
    return factory(task, workers=workers, **options)


# -- resources ------------------------------------------------------------------------------


def local_gpus() -> list[str]:
    """GPU ids of this machine, without importing torch: CUDA_VISIBLE_DEVICES when set (""
    means none), else the GPUs `nvidia-smi -L` lists; [] without NVIDIA GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [
        str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))
    ]


def cpu_slots(threads: int) -> int:
    """Runs that fit this machine's CPUs side by side: usable cores // threads per run."""
    return max(1, process.usable_cores() // max(1, threads))
