"""Core value types shared by every layer. Owns: Status, Verdict, Metric, Proposal, RunResult.

These are plain frozen dataclasses and enums: no I/O, no behaviour beyond comparisons, so
any module may import them without pulling in anything heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Status(StrEnum):
    """How one run (train + evaluate) ended."""

    OK = "ok"
    CRASH = "crash"  # train.py or the evaluator exited non-zero
    TIMEOUT = "timeout"  # the runner killed it at the budget
    INVALID = "invalid"  # ran, but the result cannot be trusted (evaluator refused it)
    OOM = "oom"  # went past the memory cap
    INTERRUPTED = "interrupted"  # the supervisor died or was stopped mid-run


class Verdict(StrEnum):
    """The judge's decision about one experiment (the `status` column of results.tsv)."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    INVALID = "invalid"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    MORE = "more"  # not decided yet: needs another confirmation run


Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Metric:
    """A metric that knows its direction: code says `better`, never `<`."""

    name: str = "val_bpb"
    direction: Direction = "min"

    def better(self, a: float, b: float) -> bool:
        """True when value `a` is strictly better than `b`."""
        return a < b if self.direction == "min" else a > b

    def gain(self, candidate: float, reference: float) -> float:
        """Improvement of `candidate` over `reference`, positive when better."""
        return reference - candidate if self.direction == "min" else candidate - reference

    @property
    def worst(self) -> float:
        return math.inf if self.direction == "min" else -math.inf


@dataclass(frozen=True)
class Proposal:
    """A change to the editable files plus a one-line description.

    `files` maps a path relative to the task root to its complete new content. `knobs`
    holds the knob values the proposal sets (tuner and queue proposals), so the ledger
    and the tuner can learn from them without parsing diffs.
    """

    description: str
    files: dict[str, str]
    proposer: str
    knobs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# RunResult.summary keys the runner fills itself, from the kernel (never from train.py's
# output): the training tree's CPU seconds, and when its artifact last changed.
CPU_KEY = "train_cpu_seconds"
HANDOVER_KEY = "handover_seconds"


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run: a value, also when the run failed."""

    status: Status
    seed: int
    metric: float | None = None
    reason: str = ""
    summary: dict[str, float] = field(default_factory=dict)  # train.py's `key: value` block
    evaluation: dict[str, Any] = field(default_factory=dict)  # the evaluator's own figures
    train_seconds: float = 0.0  # wall time of the train process
    eval_seconds: float = 0.0
    log_path: str = ""
    isolation: str = "none"  # which sandbox the run had
    log_tail: str = ""  # last lines of the log, for crashes

    @property
    def ok(self) -> bool:
        return self.status is Status.OK and self.metric is not None and math.isfinite(self.metric)

    @property
    def peak_memory_gb(self) -> float:
        """The larger of the two peaks below (results.tsv's `memory_gb`)."""
        return float(self.summary.get("peak_memory_gb", 0.0))

    @property
    def peak_rss_gb(self) -> float:
        """Host memory of the run's process tree, as the runner's watchdog saw it."""
        return float(self.summary.get("peak_rss_gb", self.peak_memory_gb))  # rows before the split

    @property
    def peak_gpu_memory_gb(self) -> float:
        """The peak train.py reports itself (`peak_memory_gb:`; the bundled task: CUDA's)."""
        return float(self.summary.get("peak_gpu_memory_gb", 0.0))
