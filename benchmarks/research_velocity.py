"""Research velocity: the confirmed val_bpb gain that each search arm buys with equal compute.

Runs the real research loop (Supervisor, git workspace, SQLite ledger, sealed evaluator)
on the bundled `gpt` task on CPU, once per (arm, seed), each in its own fresh workspace:

- `tuner`: Optuna TPE proposer with rsilab's noise-aware judge (the task's defaults:
  judge.noise_runs=3, max_runs=4, alpha=0.05, recheck_every=10; its proposals change knob
  values only, so judge.knob_min_runs=1 applies: a first run that is already significant
  is kept, an ambiguous one is confirmed unless its gain cannot become significant);
- `random`: the uniform "random" proposer with the same judge;
- `autoresearch`: the tuner proposer with autoresearch's rule "keep any single-run
  improvement": judge.noise_runs=1, max_runs=1, alpha=0.5, recheck_every=0 (with one run
  each, the judge keeps any gain > 0 over the incumbent's single value).

The budget. By default every run trains for a fixed number of FLOPs (`--budget-flops`,
the task key `budget_flops`; the wall-clock `--budget` is then only a cap), so a result does
not depend on how busy the machine is: the noise left is the harness seed's (data order,
init, dropout). That lets `--jobs` sessions run side by side. `--budget-flops 0` uses the
wall-clock budget as the task does by default; there the machine's load is part of the
noise, and parallel sessions add to it.

Equal compute: every session may start runs until its ledger holds `--runs` runs (the
baseline's noise runs, confirmation runs and rechecks all count), then stops at the next
experiment boundary; the last experiment may overrun by a few runs, so the runs actually
used are printed. With a fixed budget per run, equal runs are equal training compute.
Seed s sets both `seed` (the harness seed sequence) and `tuner.seed`.

After each session, the confirmation: the final incumbent commit and the baseline commit
are re-run (git worktrees of the workspace, the same task settings) under `--confirm-seeds`
fresh harness seeds, not used in any session, alternating baseline / incumbent runs.

- claimed gain = mean of the baseline's ok runs in the ledger - mean of the incumbent's;
- confirmed gain = mean of the baseline's fresh runs - mean of the incumbent's fresh runs,
  ± its standard error sqrt(sd_b^2/n_b + sd_i^2/n_i) (0 ± 0 when nothing was kept).

Positive = better (val_bpb is lower). A rule that keeps noise claims more than it confirms.

    RSILAB_HOME=/tmp/velocity-home python benchmarks/research_velocity.py \\
        --seeds 3 --runs 28 --budget-flops 6e11 --jobs 2

Two starts (`--start`): `defaults`, the task as shipped, where a first session finds large,
easy gains (val_bpb 3.79 -> about 2.8 at 6e11 FLOPs, each many times the noise); and
`tuned`, TUNED below, the best incumbent an earlier round confirmed: a second night, where
most gains left are about the size of the noise (larger for these small models: baseline sd
0.01-0.035, against about 0.008 at the defaults). Measured at 28 runs (issue 3's notes; the
tuner before fed122e): the single-run rule out-gained the judge in both. From the defaults,
6 seeds: confirmed +0.970 against +0.727 (tuner) and +0.757 (random), paired -0.243 ± 0.137;
with 27 experiments against 15-23 it found more of the rare large gains (two tuner sessions
stopped at +0.14 and +0.38, one of them on the same path as the single-run session until its
runs ran out). Re-measured from the defaults with the tuner of fed122e (3 seeds, `--arms
tuner,autoresearch`, 59 min): single-run rule +0.967 confirmed (claimed +0.984, 27
experiments, 7.7 kept), tuner + judge +0.933 (claimed +0.945, 19 experiments, 4.7 kept),
paired -0.034 ± 0.038, the judge ahead in 1 of 3; the random arm on the same seeds (`--arms
random`, 41 min): +0.954 confirmed (claimed +0.968, 18 experiments, 4.3 kept), tuner - random
-0.021 ± 0.042, the tuner ahead in 1 of 3. Three more seeds of tuner and autoresearch
(seeds 3-5: `--first-seed 3`, same settings): +1.006/+1.006, +0.144/+0.855, +0.361/+0.818
(autoresearch seed 5 confirmed on 1 run: 2 of its 3 confirmation runs timed out while a CI
run loaded the machine). Over the 6 seeds: judge +0.718, single-run rule +0.930, paired
-0.211 ± 0.123, the judge ahead in 1 of 6. Two judge sessions stalled (+0.144, +0.361: 16
experiments each, never proposing the large moves, shorter context and smaller batch, that the
others found); no single-run session did, with 27 experiments each. From tuned, 3 seeds: +0.026 against +0.009. Claimed minus confirmed, per
session: single-run rule up to +0.097, judge arms within 0.06 either way. Re-measured from
tuned with the tuner of fed122e (3 seeds, `--arms tuner,autoresearch`, about 20 min per
seed): single-run rule +0.026 confirmed (claimed +0.050), tuner + judge +0.007 (claimed
+0.021; it kept one change in three sessions), paired -0.019 ± 0.011. The single-run
sessions' claims missed by -0.029 to +0.093 each: +0.111 claimed for +0.018
(WARMUP_FRAC 0.05 -> 0.34), +0.0015 for +0.030 (swiglu).

Workspaces (ledgers, logs; model artifacts are deleted) stay under `--out` (default:
<RSILAB_HOME>/benchmarks/research_velocity-<time>). Nothing is asserted.

Not covered: the llm and agent proposers, GPU presets, parallel slots within a session.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import busy_cores, cpu_jiffies, fmt, machine_line, out_dir, paired_row, table

from rsilab.config import resolve_task_dir
from rsilab.data import PreparedData, prepare
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.proposers.knobs import set_knobs_in_files
from rsilab.record.ledger import Ledger
from rsilab.run import process, runner
from rsilab.run.bench import Bench
from rsilab.workspace import init_workspace

ARMS: dict[str, tuple[str, list[tuple[str, Any]]]] = {
    "tuner": ("tuner", []),
    "random": ("random", []),
    "autoresearch": (
        "tuner",
        [
            ("judge.noise_runs", 1),
            ("judge.max_runs", 1),
            ("judge.alpha", 0.5),
            ("judge.recheck_every", 0),
        ],
    ),
}
CONFIRM_SEED_BASE = 1_000_000_007  # confirmation seeds: base + 1000 * session seed + k
# `--start tuned`: the best incumbent that round 4 of this benchmark confirmed (tuner arm,
# seed 1, at 6e11 FLOPs: +1.064 val_bpb over the defaults). A session from here is a
# "second night": most gains left are about the size of the noise (not all: one session
# found WIDTH 120 -> 69 and confirmed +0.187).
TUNED = {
    "DEPTH": 1,
    "WIDTH": 120,
    "HEADS": 14,
    "SEQ_LEN": 36,
    "BATCH_SIZE": 4,
    "LR": 0.0025,
    "WEIGHT_DECAY": 0.0318,
    "BETA2": 0.97,
    "POS_ENCODING": "rope",
}


@dataclass
class Session:
    arm: str
    seed: int
    experiments: int = 0
    kept: int = 0
    runs: int = 0
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


class RunCapped(Supervisor):
    """The Supervisor with one more stop rule: the number of runs in its ledger."""

    run_limit: int = 0

    def _stop_reason(self) -> str | None:
        used = len(self.ledger.runs())
        if used >= self.run_limit:
            return f"{used} runs >= {self.run_limit}"
        return super()._stop_reason()


def run_session(
    arm: str, seed: int, args: argparse.Namespace, data: PreparedData, root: Path
) -> Session:
    proposer_name, arm_overrides = ARMS[arm]
    common: list[tuple[str, Any]] = [
        ("budget", float(args.budget)),
        ("budget_flops", float(args.budget_flops)),
        ("overhead", float(args.overhead)),
        ("eval.bytes", args.eval_bytes),
        ("seed", seed),
        ("tuner.seed", seed),
    ]
    ws = init_workspace(root / f"{arm}-{seed}", args.task_dir, f"velocity-{arm}-{seed}")
    task = ws.load_task(common + arm_overrides)
    metric = task.metric_obj
    s = Session(arm, seed)
    tag = f"[{arm} s{seed}]"

    def notify(message: str, progress: Any) -> None:
        if message.startswith(("#", "baseline val", "stopped")):
            print(f"{tag} {message}", flush=True)

    proposer = create(proposer_name, task=task)
    before, t0 = cpu_jiffies(), time.time()
    with Ledger(ws.ledger_path) as ledger:
        bench = Bench(task, train_data=data.train_path, val_data=data.val_path, preset="cpu")
        sup = RunCapped(ws, ledger, bench, [proposer], view=notify)
        sup.run_limit = args.runs
        s.stop = sup.run()
        s.wall_s = time.time() - t0
        s.busy = busy_cores(before, cpu_jiffies())
        exps = ledger.experiments()
        base, inc = exps[0], ledger.incumbent()
        assert base.kind == "baseline" and inc is not None
        trials = [e for e in exps if e.kind != "baseline"]
        s.experiments = len(trials)
        s.kept = sum(1 for e in trials if e.status == "keep")
        s.runs = len(ledger.runs())
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
        seeds = [
            x
            for x in (CONFIRM_SEED_BASE + 1000 * seed + k for k in range(args.confirm_seeds + 10))
            if x not in used
        ][: args.confirm_seeds]
        trees = {
            "base": ws.create_worktree("confirm-base", base.commit),
            "inc": ws.create_worktree("confirm-inc", inc.commit),
        }
        values: dict[str, list[float]] = {"base": [], "inc": []}
        try:
            for k, cseed in enumerate(seeds):
                for which, tree in trees.items():
                    r = runner.run(
                        task,
                        tree,
                        ws.state / "confirm" / f"{which}-{k}",
                        seed=cseed,
                        train_data=data.train_path,
                        val_data=data.val_path,
                        preset="cpu",
                    )
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
        s.confirmed_se = (
            math.sqrt(_sd(b) ** 2 / len(b) + _sd(i) ** 2 / len(i)) if b and i else math.nan
        )
    for artifact in ws.state.glob("**/artifact"):  # models are big; ledgers and logs stay
        shutil.rmtree(artifact, ignore_errors=True)
    return s


def start_task(start: str, root: Path) -> Path:
    """The task folder sessions start from: the bundled gpt task, or a copy with TUNED set."""
    bundled = resolve_task_dir("gpt")
    if start == "defaults":
        return bundled
    task_dir = root / "start-tuned"
    if task_dir.exists():
        shutil.rmtree(task_dir)
    shutil.copytree(bundled, task_dir, ignore=shutil.ignore_patterns("__pycache__"))
    files = {"train.py": (task_dir / "train.py").read_text()}
    for path, text in set_knobs_in_files(files, TUNED, "cpu").items():
        (task_dir / path).write_text(text)
    return task_dir


def _report(s: Session) -> str:
    return (
        f"== {s.arm} seed {s.seed}: {s.experiments} experiments, {s.kept} kept, {s.runs} runs, "
        f"compute {s.compute_s / 60:.1f} min, wall {s.wall_s / 60:.1f} min, busy cores {s.busy:.2f}, "
        f"claimed {fmt(s.claimed, '+.4f')}, confirmed {fmt(s.confirmed, '+.4f')} ± "
        f"{fmt(s.confirmed_se)}; incumbent: {s.incumbent}; stop: {s.stop}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="sessions per arm")
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first..first+N-1 (to add sessions to an earlier run)",
    )
    ap.add_argument("--runs", type=int, default=28, help="runs per session (equal compute)")
    ap.add_argument(
        "--budget-flops",
        type=float,
        default=6e11,
        help="training FLOPs per run (0: train for --budget wall seconds instead)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="training seconds per run (default: 90 as a cap with --budget-flops, else 10)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="sessions at once (default: 2 with --budget-flops, else 1)",
    )
    ap.add_argument(
        "--confirm-seeds", type=int, default=3, help="fresh runs of each commit to confirm"
    )
    ap.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}"
    )
    ap.add_argument("--eval-bytes", type=int, default=16384, help="validation bytes per evaluation")
    ap.add_argument(
        "--overhead", type=float, default=30.0, help="seconds on top of the budget per run"
    )
    ap.add_argument(
        "--start",
        choices=("defaults", "tuned"),
        default="defaults",
        help="the task as shipped, or TUNED (a second night: small gains left)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="workspaces (default: under RSILAB_HOME)"
    )
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 90.0 if args.budget_flops else 10.0
    if args.jobs is None:
        args.jobs = 2 if args.budget_flops else 1
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        ap.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    os.environ.setdefault("RSILAB_HOME", "/tmp/velocity-home")  # read at call time, not import
    data = prepare("shakespeare")
    root = out_dir("research_velocity", args.out)
    args.task_dir = start_task(args.start, root)
    budget = (
        f"budget {args.budget_flops:.3g} FLOPs (wall cap {args.budget:g} s)"
        if args.budget_flops
        else f"budget {args.budget:g} s wall clock"
    )
    print(machine_line())
    print(
        f"gpt task ({args.start}), cpu preset, {budget}, eval bytes {args.eval_bytes}, {args.runs} runs per session, "
        f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, {args.confirm_seeds} confirmation seeds, {args.jobs} sessions at once; "
        f"arms: {', '.join(arms)}; workspaces: {root}",
        flush=True,
    )

    t0 = time.time()
    # Seed 0 of every arm, then seed 1, ...; the arm order rotates from seed to seed, so a
    # change in machine load hits every arm alike.
    plan = [
        (arm, seed)
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for arm in arms[seed % len(arms) :] + arms[: seed % len(arms)]
    ]
    sessions: list[Session] = []
    if args.jobs <= 1:
        for arm, seed in plan:
            sessions.append(run_session(arm, seed, args, data, root))
            print(_report(sessions[-1]), flush=True)
    else:  # spawn: each session is a fresh process with its own supervisor and signal handlers
        ctx = multiprocessing.get_context("spawn")
        # initializer: a session dies with this process, even when it is killed, not left to
        # run on with no one to read its result.
        with concurrent.futures.ProcessPoolExecutor(
            args.jobs, mp_context=ctx, initializer=process.die_with_parent
        ) as pool:
            futures = [pool.submit(run_session, arm, seed, args, data, root) for arm, seed in plan]
            for future in concurrent.futures.as_completed(futures):
                sessions.append(future.result())
                print(_report(sessions[-1]), flush=True)
        order = {key: i for i, key in enumerate(plan)}
        sessions.sort(key=lambda s: order[(s.arm, s.seed)])

    print()
    print(machine_line())
    print(f"total wall time: {(time.time() - t0) / 60:.1f} min")
    print(
        "gain = baseline val_bpb - incumbent val_bpb (positive: better); confirmed ± standard error "
        f"over {args.confirm_seeds} fresh seeds per commit"
    )
    rows = [
        [
            s.arm,
            s.seed,
            s.experiments,
            s.kept,
            s.runs,
            f"{s.compute_s / 60:.1f}",
            f"{s.busy:.2f}",
            fmt(s.claimed, "+.4f"),
            f"{fmt(s.confirmed, '+.4f')} ± {fmt(s.confirmed_se)}"
            + (f" ({s.confirm_fails} failed)" if s.confirm_fails else ""),
        ]
        for s in sessions
    ]
    print(
        table(
            [
                "arm",
                "seed",
                "experiments",
                "kept",
                "runs",
                "compute min",
                "busy cores",
                "claimed gain",
                "confirmed gain ± se",
            ],
            rows,
        )
    )
    print()
    summary = []
    for arm in arms:
        mine = [s for s in sessions if s.arm == arm]
        conf = [s.confirmed for s in mine if math.isfinite(s.confirmed)]
        claim = [s.claimed for s in mine if math.isfinite(s.claimed)]
        summary.append(
            [
                arm,
                len(mine),
                f"{_mean([s.experiments for s in mine]):.1f}",
                f"{_mean([s.kept for s in mine]):.1f}",
                f"{sum(s.compute_s for s in mine) / 3600:.3f}",
                fmt(_mean(claim), "+.4f"),
                fmt(_mean(conf), "+.4f"),
                fmt(_sd(conf)),
                fmt(_mean(claim) - _mean(conf), "+.4f"),
            ]
        )
    print(
        table(
            [
                "arm",
                "sessions",
                "mean experiments",
                "mean kept",
                "compute h",
                "mean claimed",
                "mean confirmed",
                "sd (sessions)",
                "claimed - confirmed",
            ],
            summary,
        )
    )
    pairs = paired(sessions, arms)
    if pairs:
        print()
        print(
            "paired by seed (same seed: same harness seeds; tuner and random also share their first "
            "draws): the first arm's confirmed gain minus the second's"
        )
        print(table(["arms", "seeds", "mean difference", "se", "first ahead"], pairs))


def paired(sessions: Sequence[Session], arms: Sequence[str]) -> list[list[Any]]:
    """Rows comparing each pair of arms over the seeds both ran (mean, se, wins of the first)."""
    gain = {(s.arm, s.seed): s.confirmed for s in sessions if math.isfinite(s.confirmed)}
    rows: list[list[Any]] = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            seeds = sorted(seed for arm, seed in gain if arm == a and (b, seed) in gain)
            diff = [gain[a, seed] - gain[b, seed] for seed in seeds]
            if len(diff) < 2:
                continue
            rows.append([f"{a} - {b}", len(diff), *paired_row(diff)])
    return rows


if __name__ == "__main__":
    main()
