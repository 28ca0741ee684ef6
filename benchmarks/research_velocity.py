"""Research velocity: the confirmed val_bpb gain that each search arm buys with equal compute.

Runs the real research loop (Supervisor, git workspace, SQLite ledger, sealed evaluator)
on the bundled `gpt` task on CPU, once per (arm, seed), each in its own fresh workspace:

- `tuner`: Optuna TPE proposer with rsilab's noise-aware judge (the task's defaults:
  judge.noise_runs=3, max_runs=4, alpha=0.05, recheck_every=10);
- `random`: the uniform "random" proposer with the same judge;
- `autoresearch`: the tuner proposer with autoresearch's rule "keep any single-run
  improvement": judge.noise_runs=1, max_runs=1, alpha=0.5, recheck_every=0 (with one run
  each, the judge keeps any gain > 0 over the incumbent's single value).

Equal compute: every session stops at its first experiment boundary after the ledger's
"compute" costs (train + evaluate process seconds of every run, the baseline's noise runs
and rechecks included) reach `--compute-minutes`; the last experiment may overrun it by a
few runs, so the compute actually used is printed. A wall-clock backstop of 3x stops a
session that the machine slows down badly. Sessions are interleaved (seed 0 of every arm,
then seed 1, ...; the arm order rotates from seed to seed) so changes in machine load hit
all arms alike. Seed s sets both `seed` (the harness seed sequence) and `tuner.seed`.

After each session, the confirmation: the final incumbent commit and the baseline commit
are re-run (git worktrees of the workspace, the same task settings) under `--confirm-seeds`
fresh harness seeds, not used in any session, alternating baseline / incumbent runs.

- claimed gain = mean of the baseline's ok runs in the ledger - mean of the incumbent's;
- confirmed gain = mean of the baseline's fresh runs - mean of the incumbent's fresh runs,
  ± its standard error sqrt(sd_b^2/n_b + sd_i^2/n_i) (0 ± 0 when nothing was kept).

Positive = better (val_bpb is lower). A rule that keeps noise claims more than it confirms.

    RSILAB_HOME=/tmp/velocity-home python benchmarks/research_velocity.py \\
        --seeds 2 --compute-minutes 8 --budget 5 --confirm-seeds 3

Workspaces (ledgers, logs; model artifacts are deleted) stay under `--out` (default:
<RSILAB_HOME>/benchmarks/research_velocity-<time>). Nothing is asserted.

Not covered: the llm and agent proposers, GPU presets, parallel slots.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import busy_cores, cpu_jiffies, fmt, machine_line, out_dir, table

from rsilab import runner
from rsilab.config import resolve_task_dir
from rsilab.data import PreparedData, prepare
from rsilab.ledger import Ledger
from rsilab.orchestrator import Limits, Supervisor
from rsilab.proposers import create
from rsilab.workspace import init_workspace

ARMS: dict[str, tuple[str, list[tuple[str, Any]]]] = {
    "tuner": ("tuner", []),
    "random": ("random", []),
    "autoresearch": ("tuner", [("judge.noise_runs", 1), ("judge.max_runs", 1), ("judge.alpha", 0.5),
                               ("judge.recheck_every", 0)]),
}
CONFIRM_SEED_BASE = 1_000_000_007  # confirmation seeds: base + 1000 * session seed + k


@dataclass
class Session:
    arm: str
    seed: int
    experiments: int = 0
    kept: int = 0
    compute_s: float = 0.0
    wall_s: float = 0.0
    busy: float = math.nan  # average busy cores over the session (1.0: only this run)
    stop: str = ""
    claimed: float = math.nan
    confirmed: float = math.nan
    confirmed_se: float = math.nan
    confirm_fails: int = 0
    incumbent: str = ""  # description of the final incumbent


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


class ComputeCapped(Supervisor):
    """The Supervisor with one more stop rule: the compute seconds in its ledger."""

    compute_limit_s: float = math.inf

    def _stop_reason(self) -> str | None:
        used = self.ledger.costs().get("compute", 0.0)
        if used >= self.compute_limit_s:
            return f"compute {used / 60:.1f} min >= {self.compute_limit_s / 60:g} min"
        return super()._stop_reason()


def run_session(arm: str, seed: int, args: argparse.Namespace, data: PreparedData, root: Path) -> Session:
    proposer_name, arm_overrides = ARMS[arm]
    common: list[tuple[str, Any]] = [
        ("budget", float(args.budget)), ("overhead", float(args.overhead)),
        ("eval.bytes", args.eval_bytes), ("seed", seed), ("tuner.seed", seed),
    ]
    ws = init_workspace(root / f"{arm}-{seed}", resolve_task_dir("gpt"), f"velocity-{arm}-{seed}")
    task = ws.load_task(common + arm_overrides)
    metric = task.metric_obj
    s = Session(arm, seed)
    tag = f"[{arm} s{seed}]"

    def notify(message: str, progress: Any) -> None:
        if message.startswith(("#", "baseline val", "stopped")):
            print(f"{tag} {message}", flush=True)

    proposer = create(proposer_name, seed=task.tuner.seed, max_knobs=task.tuner.max_knobs,
                      exclude=task.tuner.exclude)
    before, t0 = cpu_jiffies(), time.time()
    with Ledger(ws.ledger_path) as ledger:
        sup = ComputeCapped(ws, task, ledger, [proposer], train_data=data.train_path, val_data=data.val_path,
                  preset="cpu", limits=Limits(hours=3 * args.compute_minutes / 60), notify=notify)
        sup.compute_limit_s = args.compute_minutes * 60
        s.stop = sup.run()
        s.wall_s = time.time() - t0
        s.busy = busy_cores(before, cpu_jiffies())
        exps = ledger.experiments()
        base, inc = exps[0], ledger.incumbent()
        assert base.kind == "baseline" and inc is not None
        trials = [e for e in exps if e.kind != "baseline"]
        s.experiments = len(trials)
        s.kept = sum(1 for e in trials if e.status == "keep")
        s.compute_s = ledger.costs().get("compute", 0.0)
        s.incumbent = "baseline" if inc.id == base.id else inc.description

        def ok_values(exp_id: int) -> list[float]:
            return [r.metric for r in ledger.runs(exp_id) if r.ok and r.metric is not None]

        s.claimed = metric.gain(_mean(ok_values(inc.id)), _mean(ok_values(base.id)))
        used = {r.seed for r in ledger.runs()}

    # Confirmation: fresh seeds, the same settings, baseline and incumbent alternating.
    if inc.commit == base.commit:
        s.confirmed, s.confirmed_se = 0.0, 0.0
    else:
        seeds = [x for x in (CONFIRM_SEED_BASE + 1000 * seed + k for k in range(args.confirm_seeds + 10))
                 if x not in used][: args.confirm_seeds]
        trees = {"base": ws.create_worktree("confirm-base", base.commit),
                 "inc": ws.create_worktree("confirm-inc", inc.commit)}
        values: dict[str, list[float]] = {"base": [], "inc": []}
        try:
            for k, cseed in enumerate(seeds):
                for which, tree in trees.items():
                    r = runner.run(task, tree, ws.state / "confirm" / f"{which}-{k}", seed=cseed,
                                   train_data=data.train_path, val_data=data.val_path, preset="cpu")
                    if r.ok and r.metric is not None:
                        values[which].append(r.metric)
                    else:
                        s.confirm_fails += 1
                    shown = f"{r.metric:.4f}" if r.metric is not None else r.reason
                    print(f"{tag} confirm {which} seed {cseed}: {shown}", flush=True)
        finally:
            for tree in trees.values():
                ws.remove_worktree(tree)
        b, i = values["base"], values["inc"]
        s.confirmed = metric.gain(_mean(i), _mean(b))
        s.confirmed_se = math.sqrt(_sd(b) ** 2 / len(b) + _sd(i) ** 2 / len(i)) if b and i else math.nan
    for artifact in ws.state.glob("**/artifact"):  # models are big; ledgers and logs stay
        shutil.rmtree(artifact, ignore_errors=True)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="sessions per arm (seeds 0..N-1)")
    ap.add_argument("--compute-minutes", type=float, default=8.0, help="compute per arm per seed")
    ap.add_argument("--budget", type=float, default=5.0, help="training seconds per run")
    ap.add_argument("--confirm-seeds", type=int, default=3, help="fresh runs of each commit to confirm")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    ap.add_argument("--eval-bytes", type=int, default=16384, help="validation bytes per evaluation")
    ap.add_argument("--overhead", type=float, default=30.0, help="seconds on top of the budget per run")
    ap.add_argument("--out", type=Path, default=None, help="workspaces (default: under RSILAB_HOME)")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        ap.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    os.environ.setdefault("RSILAB_HOME", "/tmp/velocity-home")  # read at call time, not import
    data = prepare("shakespeare")
    root = out_dir("research_velocity", args.out)
    print(machine_line())
    print(f"gpt task, cpu preset, budget {args.budget:g} s, eval bytes {args.eval_bytes}, "
          f"{args.compute_minutes:g} compute-min per arm per seed, {args.seeds} seeds, "
          f"{args.confirm_seeds} confirmation seeds; arms: {', '.join(arms)}; workspaces: {root}", flush=True)

    t0 = time.time()
    sessions: list[Session] = []
    for seed in range(args.seeds):
        order = arms[seed % len(arms):] + arms[: seed % len(arms)]
        for arm in order:
            s = run_session(arm, seed, args, data, root)
            sessions.append(s)
            print(f"== {arm} seed {seed}: {s.experiments} experiments, {s.kept} kept, "
                  f"compute {s.compute_s / 60:.1f} min, wall {s.wall_s / 60:.1f} min, busy cores {s.busy:.2f}, "
                  f"claimed {fmt(s.claimed, '+.4f')}, confirmed {fmt(s.confirmed, '+.4f')} ± "
                  f"{fmt(s.confirmed_se)}; incumbent: {s.incumbent}; stop: {s.stop}", flush=True)

    print()
    print(machine_line())
    print(f"total wall time: {(time.time() - t0) / 60:.1f} min")
    print("gain = baseline val_bpb - incumbent val_bpb (positive: better); confirmed ± standard error "
          f"over {args.confirm_seeds} fresh seeds per commit")
    rows = [[s.arm, s.seed, s.experiments, s.kept, f"{s.compute_s / 60:.1f}", f"{s.busy:.2f}",
             fmt(s.claimed, "+.4f"), f"{fmt(s.confirmed, '+.4f')} ± {fmt(s.confirmed_se)}"
             + (f" ({s.confirm_fails} failed)" if s.confirm_fails else "")] for s in sessions]
    print(table(["arm", "seed", "experiments", "kept", "compute min", "busy cores", "claimed gain",
                 "confirmed gain ± se"], rows))
    print()
    summary = []
    for arm in arms:
        mine = [s for s in sessions if s.arm == arm]
        conf = [s.confirmed for s in mine if math.isfinite(s.confirmed)]
        claim = [s.claimed for s in mine if math.isfinite(s.claimed)]
        summary.append([arm, len(mine), f"{_mean([s.experiments for s in mine]):.1f}",
                        f"{_mean([s.kept for s in mine]):.1f}",
                        f"{sum(s.compute_s for s in mine) / 3600:.3f}", fmt(_mean(claim), "+.4f"),
                        fmt(_mean(conf), "+.4f"), fmt(_sd(conf)),
                        fmt(_mean(claim) - _mean(conf), "+.4f")])
    print(table(["arm", "sessions", "mean experiments", "mean kept", "compute h", "mean claimed",
                 "mean confirmed", "sd (sessions)", "claimed - confirmed"], summary))


if __name__ == "__main__":
    main()
