"""Shared helpers for the scripts in `benchmarks/`. Not a benchmark itself.

Owns: loading the bundled `gpt` task with overrides, running its unmodified baseline
through the real runner (train, then the sealed evaluator), summary statistics, and
plain-text tables. The scripts import it as `from _common import ...`, which works when
they are run as files (`python benchmarks/NAME.py`): Python puts their folder on sys.path.

Not covered: anything that changes the task or the harness; these helpers only observe.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab import paths
from rsilab.config import TaskSpec, load_task
from rsilab.data import PreparedData, prepare
from rsilab.results import RunResult
from rsilab.run import runner


def gpt_task(budget: float | None, overrides: Sequence[tuple[str, Any]] = ()) -> TaskSpec:
    """The bundled `gpt` task with `budget` seconds (None: the task's own) and overrides."""
    sets = [("budget", float(budget))] if budget is not None else []
    return load_task(paths.bundled_tasks_dir() / "gpt", [*sets, *overrides])


def shakespeare() -> PreparedData:
    """The prepared default dataset (built on first use, verified after that)."""
    return prepare("shakespeare")


def out_dir(name: str, given: Path | None) -> Path:
    """`given`, or `<RSILAB_HOME>/benchmarks/<name>-<timestamp>`; created."""
    d = given or paths.home() / "benchmarks" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_baseline(
    task: TaskSpec, data: PreparedData, seed: int, run_dir: Path, preset: str | None = "cpu"
) -> RunResult:
    """One run of the task's unmodified code, exactly as `rsilab train` does it."""
    work = run_dir / "work"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(
        task.root, work, ignore=shutil.ignore_patterns("__pycache__", ".rsilab", ".git")
    )
    return runner.run(
        task,
        work,
        run_dir,
        seed=seed,
        train_data=data.train_path,
        val_data=data.val_path,
        preset=preset,
    )


@dataclass(frozen=True)
class Spread:
    """Median and spread of a sample (sd is the sample standard deviation, n-1)."""

    n: int
    median: float
    mean: float
    sd: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        vals = [v for v in values if math.isfinite(v)]
        if not vals:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        return cls(
            len(vals), statistics.median(vals), statistics.fmean(vals), sd, min(vals), max(vals)
        )

    @property
    def rel_range_percent(self) -> float:
        """(max - min) / median, in percent."""
        return 100 * (self.max - self.min) / self.median if self.median else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A right-aligned plain-text table; floats are printed as given (format them first)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line() -> str:
    """One line naming the machine and how busy it is now (the 1-minute load average)."""
    import torch

    load1, load5, _ = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    return (
        f"machine: {os.cpu_count()} cores ({cpu}), torch {torch.__version__}, "
        f"load average {load1:.2f} (1 min) {load5:.2f} (5 min)"
    )


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Average number of busy cores, machine-wide, between two `cpu_jiffies()` readings.

    A 1-thread run on an otherwise idle machine reads about 1.0; more means other
    processes competed for the machine during it.
    """
    total = after[1] - before[1]
    if total <= 0:
        return float("nan")
    return (os.cpu_count() or 1) * (after[0] - before[0]) / total


def fmt(value: float | None, spec: str = ".4f") -> str:
    """`value` formatted with `spec`, or `-` when it is missing or not finite."""
    return format(value, spec) if isinstance(value, int | float) and math.isfinite(value) else "-"


def paired_row(diff: Sequence[float]) -> list[str]:
    """Mean, standard error and "k of n" ahead for per-seed differences (two or more)."""
    return [
        f"{statistics.fmean(diff):+.4f}",
        f"{statistics.stdev(diff) / math.sqrt(len(diff)):.4f}",
        f"{sum(d > 0 for d in diff)} of {len(diff)}",
    ]
