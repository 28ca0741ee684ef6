"""The fidelity ladder. Owns: re-testing a kept change at longer budgets before it is kept.

Wins found with a short budget often do not hold at a longer one (a higher learning rate
that only helps a short run, a smaller model that only wins before convergence). With
`--ladder 60,300` research runs at 60 s, and a change the judge keeps at 60 s becomes the
incumbent only if it also wins at 300 s: the candidate and the incumbent are trained at
each higher rung with fresh seeds (`LADDER_SEED_BASE`, apart from research and score
seeds) and the same judge decides, with the candidate getting confirmation runs until it
decides (rung by rung, stopping at the first rung where the win does not hold).

The runs at a higher rung are not runs of the experiment in the ledger (the incumbent's
noise floor is measured at the research budget and must stay so); they are recorded as a
"ladder" event with every figure, their compute as the experiment's "compute" cost, and
the outcome in the decision's reason ("ladder 300 s: transferred ..." or a discard with
"did not transfer to 300 s: ..."). When the task has a FLOPs budget, each rung scales it
by the same factor as the seconds.

The supervisor calls `Ladder.gate` at the keep site, before the decision is written and
before the research branch moves. Not covered: choosing rungs (the user's `--ladder`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab.config import TaskSpec
from rsilab.errors import ConfigError
from rsilab.fsio import read_regular
from rsilab.loop.judge import Judgement, judge, mean_or_none, seed_schedule
from rsilab.notify import Notify, silent
from rsilab.record.ledger import Ledger
from rsilab.results import RunResult, Verdict
from rsilab.run.bench import Bench
from rsilab.workspace import Workspace

LADDER_SEED_BASE = 5_000_011  # seeds of ladder runs (research: task.seed; score: 7_000_003)


def parse_ladder(text: str) -> list[float]:
    """`"60,300"` -> [60.0, 300.0]: budgets in seconds, strictly increasing, at least two."""
    try:
        rungs = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--ladder {text!r}: expected budgets in seconds, e.g. 60,300") from None
    if (
        len(rungs) < 2
        or any(r <= 0 for r in rungs)
        or any(b <= a for a, b in zip(rungs, rungs[1:], strict=False))
    ):
        raise ConfigError(
            f"--ladder {text!r}: give two or more increasing budgets in seconds, e.g. 60,300"
        )
    return rungs


def at_budget(task: TaskSpec, seconds: float) -> TaskSpec:
    """`task` with its budget set to `seconds` (and a FLOPs budget scaled alike)."""
    factor = seconds / task.budget
    return dataclasses.replace(task, budget=seconds, budget_flops=task.budget_flops * factor)


@dataclass(frozen=True)
class RungResult:
    """What one higher rung showed."""

    budget: float
    verdict: str
    reason: str
    incumbent: list[float]
    candidate: list[float]
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    compute_s: float


@dataclass(frozen=True)
class LadderOutcome:
    """Whether the win held on every higher rung; `reason` is one line for the decision."""

    ok: bool
    reason: str
    rungs: list[RungResult] = field(default_factory=list)

    @property
    def compute_s(self) -> float:
        return sum(r.compute_s for r in self.rungs)

    def figures(self) -> dict[str, Any]:
        return {
            "transferred": self.ok,
            "reason": self.reason,
            "rungs": [dataclasses.asdict(r) for r in self.rungs],
        }


@dataclass(frozen=True)
class _Rung:
    """How the runs of one rung are made: its bench (the task at the rung's budget), folder
    and seeds."""

    bench: Bench
    where: Path
    level: int
    experiment_id: int
    notify: Notify

    def run(self, workdir: Path, name: str, k: int, label: str) -> RunResult:
        # The incumbent's seeds are the same for every experiment (its runs are cached per
        # commit); the candidate's are fresh per experiment.
        seed = seed_schedule(
            LADDER_SEED_BASE + self.level, self.experiment_id if name == "candidate" else 0, k
        )
        self.notify(f"ladder {self.bench.task.budget:g} s: {label} (seed {seed})")
        return self.bench.run(workdir, self.where / f"{name}-{k}", seed, label=f"ladder {label}")


def _size(task: TaskSpec, workdir: Path) -> int:
    """Non-blank lines of the editable files (the judge's simplicity rule needs it); a file
    that is not a regular file (a link a run left) counts as empty, never followed."""
    total = 0
    for rel in task.editable_files(workdir):
        text = (read_regular(workdir / rel, base=workdir) or b"").decode(errors="replace")
        total += sum(1 for line in text.splitlines() if line.strip())
    return total


def _ok_values(results: Sequence[RunResult]) -> list[float]:
    return [float(r.metric) for r in results if r.ok and r.metric is not None]


def confirm_on_ladder(
    bench: Bench,
    rungs: Sequence[float],
    candidate_workdir: Path,
    incumbent_workdir: Path,
    *,
    run_root: Path,
    experiment_id: int,
    notify: Notify = silent,
    incumbent_cache: dict[float, list[float]] | None = None,
) -> LadderOutcome:
    """Run the candidate and the incumbent at every rung above the first and judge each.

    The incumbent gets `judge.noise_runs` runs per rung (reused from `incumbent_cache`, keyed
    by budget, when the same incumbent was measured before); the candidate gets runs until
    the judge stops asking for more. The first rung that does not keep ends the climb.
    """
    task = bench.task
    results: list[RungResult] = []
    metric = task.metric_obj
    cand_size, inc_size = _size(task, candidate_workdir), _size(task, incumbent_workdir)
    for level, seconds in enumerate(rungs[1:], start=1):
        rung = _Rung(
            bench.derive(task=at_budget(task, seconds)),
            run_root / f"rung-{seconds:g}s",
            level,
            experiment_id,
            notify,
        )
        run = rung.run
        spent = 0.0

        cached = incumbent_cache.get(seconds) if incumbent_cache is not None else None
        if cached:
            inc_values = list(cached)
        else:
            inc_runs = [
                run(incumbent_workdir, "incumbent", k, f"incumbent run {k + 1}")
                for k in range(max(1, task.judge.noise_runs))
            ]
            spent += sum(r.train_seconds + r.eval_seconds for r in inc_runs)
            inc_values = _ok_values(inc_runs)
            if incumbent_cache is not None and inc_values:
                incumbent_cache[seconds] = inc_values
        if not inc_values:
            results.append(
                RungResult(
                    seconds,
                    "crash",
                    "the incumbent failed at this budget",
                    [],
                    [],
                    None,
                    None,
                    None,
                    None,
                    spent,
                )
            )
            return LadderOutcome(
                False, f"ladder {seconds:g} s: the incumbent failed at this budget", results
            )
        cand_runs: list[RunResult] = []
        while True:
            r = run(
                candidate_workdir,
                "candidate",
                len(cand_runs),
                f"candidate run {len(cand_runs) + 1}",
            )
            spent += r.train_seconds + r.eval_seconds
            cand_runs.append(r)
            j: Judgement = judge(
                cand_runs,
                inc_values,
                metric,
                task.judge,
                memory_cap_gb=task.memory_gb,
                gpu_memory_cap_gb=task.gpu_memory_gb,
                constraints=task.constraints,
                candidate_size=cand_size,
                incumbent_size=inc_size,
            )
            if j.verdict is not Verdict.MORE:
                break
        results.append(
            RungResult(
                seconds,
                str(j.verdict),
                j.reason,
                inc_values,
                _ok_values(cand_runs),
                j.effect,
                j.ci_low,
                j.ci_high,
                j.p_value,
                spent,
            )
        )
        if j.verdict is not Verdict.KEEP:
            return LadderOutcome(False, f"did not transfer to {seconds:g} s: {j.reason}", results)
    shown = "; ".join(f"{r.budget:g} s gain {_g(r.effect)}" for r in results)
    return LadderOutcome(True, f"transferred ({shown})", results)


def _g(x: float | None) -> str:
    return f"{x:+.4g}" if x is not None else "-"


class Ladder:
    """The supervisor's gate: call `gate` when the judge says keep, before recording it."""

    def __init__(self, rungs: Sequence[float]) -> None:
        self.rungs = list(rungs)
        if len(self.rungs) < 2:
            raise ConfigError("a ladder needs at least two rungs")
        self._cache: dict[
            str, dict[float, list[float]]
        ] = {}  # incumbent commit -> budget -> values

    def check_task(self, task: TaskSpec) -> None:
        """Research runs at the first rung: the task's budget must be it."""
        if task.budget != self.rungs[0]:
            raise ConfigError(
                f"--ladder starts at {self.rungs[0]:g} s but the task's budget is {task.budget:g} s; "
                f"use --set budget={self.rungs[0]:g}"
            )

    def gate(
        self,
        j: Judgement,
        *,
        ws: Workspace,
        task: TaskSpec,
        ledger: Ledger,
        experiment_id: int,
        candidate: Path,
        incumbent_commit: str,
        bench: Bench,
        notify: Notify = silent,
    ) -> Judgement:
        """`j` when it is not a keep or the win holds on every higher rung (its reason then
        says so); else a DISCARD whose reason says at which rung the win did not hold."""
        if j.verdict is not Verdict.KEEP:
            return j
        worktree = ws.create_worktree(f"ladder-{experiment_id:04d}", incumbent_commit)
        try:
            outcome = confirm_on_ladder(
                bench,
                self.rungs,
                candidate,
                worktree,
                run_root=ws.run_dir(experiment_id, 0).parent / "ladder",
                experiment_id=experiment_id,
                notify=notify,
                incumbent_cache=self._cache.setdefault(incumbent_commit, {}),
            )
        finally:
            ws.remove_worktree(worktree)
        with ledger.transaction():
            ledger.add_cost(experiment_id, "compute", outcome.compute_s, "s")
            ledger.add_event(
                "ladder",
                f"experiment {experiment_id}: {outcome.reason}",
                data={"experiment": experiment_id, **outcome.figures()},
                source="ladder",
            )
        notify(f"ladder: experiment {experiment_id} {outcome.reason}")
        if outcome.ok:
            return dataclasses.replace(j, reason=f"{j.reason}; ladder: {outcome.reason}")
        return dataclasses.replace(
            j,
            verdict=Verdict.DISCARD,
            reason=f"kept at {self.rungs[0]:g} s ({j.reason}) but {outcome.reason}",
            flags=(*j.flags, "ladder"),
        )


def transfers(ledger: Ledger) -> list[dict[str, Any]]:
    """Every ladder check of a workspace, oldest first: which wins transferred (for reports)."""
    out = []
    for e in ledger.events():
        if e.kind == "ladder":
            means = {
                r["budget"]: (mean_or_none(r["incumbent"]), mean_or_none(r["candidate"]))
                for r in e.data.get("rungs", [])
            }
            out.append(
                {
                    "experiment": e.data.get("experiment"),
                    "transferred": bool(e.data.get("transferred")),
                    "reason": e.data.get("reason", e.message),
                    "means": means,
                }
            )
    return out
