"""`rsilab audit --deep`. Owns: re-checking kept results with what the record alone cannot
show: a fresh evaluation of every kept artifact, the content of kept diffs, and the figures
a run reported about itself against the runner's own.

For every kept experiment (the baseline included), on the research task's settings:

- each ok run whose artifact is still in its run folder is evaluated again by the task's
  evaluator, in the sandbox, from a checkout of the experiment's commit: the sealed
  evaluator draws fresh secrets, so a model that passed by luck or by knowing the old
  probes is refused now; a metric that differs from the recorded one by more than
  `TOLERANCE` does not reproduce;
- the kept commit may hold only regular files (no symlink, gitlink) and its diff against
  its parent no binary file;
- `train.py`'s own `training_seconds` must not exceed the wall time the runner measured for
  the process, and under a wall-clock budget the runner's `handover_seconds` must be within
  `budget + handover_slack`.

A run folder whose artifact was cleaned away is reported as not re-evaluated, not as a
problem. Not covered: re-training (a kept change is re-run by `rsilab score --commit`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rsilab.config import TaskSpec
from rsilab.notify import Notify, silent
from rsilab.record.ledger import Ledger
from rsilab.results import HANDOVER_KEY, RunResult, Verdict
from rsilab.run import runner
from rsilab.workspace import Workspace, export_tree, git

TOLERANCE = 1e-3  # metric units: a re-evaluation on another device may differ in the 4th digit
REGULAR_MODES = ("100644", "100755")


@dataclass
class DeepReport:
    """What the deep audit re-evaluated, and its findings (one line each)."""

    reevaluated: int = 0
    skipped: list[str] = field(default_factory=list)  # runs without an artifact to evaluate
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def deep_audit(
    ws: Workspace,
    ledger: Ledger,
    task: TaskSpec,
    *,
    val_data: Path | None,
    isolation: str = "auto",
    notify: Notify = silent,
) -> DeepReport:
    """Re-check every kept experiment of `ws` (see the module docstring)."""
    report = DeepReport()
    kept = [e for e in ledger.experiments() if e.status == Verdict.KEEP.value]
    with tempfile.TemporaryDirectory(prefix="rsilab-deep-") as tmp:
        for exp in kept:
            where = f"#{exp.id} ({exp.description})"
            report.problems += [f"{where}: {p}" for p in _tree_problems(ws, exp.commit, exp.parent)]
            runs = [r for r in ledger.runs(exp.id) if r.result.ok]
            work = Path(tmp) / f"exp-{exp.id}" / "work"
            exported = False
            for k, row in enumerate(runs):
                r = row.result
                report.problems += [f"{where} run {k + 1}: {p}" for p in _figure_problems(task, r)]
                artifact = Path(r.log_path).parent / "artifact"
                if not artifact.is_dir() or artifact.is_symlink():
                    report.skipped.append(f"{where} run {k + 1}: no artifact left to evaluate")
                    continue
                if not exported:
                    work.mkdir(parents=True)
                    export_tree(ws.root, exp.commit, work)
                    exported = True
                notify(f"deep audit: re-evaluating {where} run {k + 1}")
                outcome, figures = runner.reevaluate(
                    task,
                    work,
                    artifact,
                    Path(tmp) / f"exp-{exp.id}" / f"run-{k}",
                    seed=r.seed,
                    val_data=val_data,
                    isolation=isolation,
                )
                report.reevaluated += 1
                problem = _compare(task, r.metric, figures, outcome.timed_out, outcome.oom)
                if problem:
                    report.problems.append(f"{where} run {k + 1}: {problem}")
    return report


def _compare(
    task: TaskSpec, recorded: float | None, figures: dict[str, object], timed_out: bool, oom: bool
) -> str:
    """Why a re-evaluation does not confirm the recorded metric, or ""."""
    if "refused" in figures:
        return f"refused on re-evaluation with fresh secrets: {figures['refused']}"
    if timed_out or oom:
        return "the re-evaluation " + ("timed out" if timed_out else "went over the memory cap")
    value = figures.get(task.metric.name)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "the re-evaluation gave no finite metric"
    if recorded is None or abs(float(value) - recorded) > TOLERANCE:
        return f"does not reproduce: recorded {recorded}, re-evaluated {float(value):.6g}"
    return ""


def _tree_problems(ws: Workspace, commit: str, parent: str | None) -> list[str]:
    """Links, gitlinks or other non-file entries in the kept commit; binary files in its diff."""
    problems = []
    for line in git(ws.root, "ls-tree", "-r", "-z", commit).split("\0"):
        if not line:
            continue
        meta, _, path = line.partition("\t")
        mode = meta.split()[0]
        if mode not in REGULAR_MODES:
            kind = {"120000": "a symlink", "160000": "a gitlink"}.get(mode, f"mode {mode}")
            problems.append(f"the kept commit holds {path} as {kind}")
    if parent:
        for line in git(ws.root, "diff", "--numstat", "-z", parent, commit).split("\0"):
            added, _, rest = line.partition("\t")
            if added == "-":  # git's numstat marks a binary file with "-"
                problems.append(f"the kept diff adds a binary file {rest.partition(chr(9))[2]}")
    return problems


def _figure_problems(task: TaskSpec, r: RunResult) -> list[str]:
    """Figures the run reported about itself that the runner's own measurements contradict."""
    problems = []
    claimed = r.summary.get("training_seconds")
    if claimed is not None and r.train_seconds > 0 and claimed > r.train_seconds + 1.0:
        problems.append(
            f"reported {claimed:.1f} s of training, but its process ran {r.train_seconds:.1f} s"
        )
    handover = r.summary.get(HANDOVER_KEY)
    window = task.budget + task.handover_slack
    if handover is not None and not task.budget_flops and task.handover_slack and handover > window:
        problems.append(
            f"handed its model over {handover:.1f} s after the start, past the budget "
            f"{task.budget:g} s + handover_slack {task.handover_slack:g} s"
        )
    return problems
