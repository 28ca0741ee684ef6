"""Supervisor overhead per experiment, outside training and evaluation.

Runs the real loop (git worktrees, SQLite ledger, tuner proposals, judge) on the bundled
`toy` task, whose training and evaluation take a fraction of a second, and measures for
each experiment the wall time between consecutive decisions minus the time its runs spent
in the train and evaluate processes. Target (issue 3): under 1% of the default 60 s
budget, i.e. < 0.6 s per experiment.

    python benchmarks/loop_overhead.py --experiments 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def supervisor_overheads(experiments: int) -> tuple[list[float], list[float]]:
    """The real loop on the toy task for `experiments` experiments, in a temporary folder.

    Returns, per experiment after the first, the supervisor's overhead (seconds between
    consecutive decisions minus the time its runs spent in the train and evaluate
    processes) and the mean time per run in those processes. RSILAB_HOME is pointed at the
    temporary folder meanwhile and restored after.
    """
    saved = os.environ.get("RSILAB_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RSILAB_HOME"] = str(Path(tmp) / "home")
        try:
            from rsilab.config import resolve_task_dir
            from rsilab.loop.limits import Limits
            from rsilab.loop.supervisor import Supervisor
            from rsilab.proposers import create
            from rsilab.record.ledger import Ledger
            from rsilab.run.bench import Bench
            from rsilab.workspace import init_workspace

            ws = init_workspace(Path(tmp) / "ws", resolve_task_dir("toy"), "bench")
            task = ws.load_task([("judge.recheck_every", 0)])
            ledger = Ledger(ws.ledger_path)
            sup = Supervisor(
                ws,
                ledger,
                Bench(task),
                [create("tuner", seed=0)],
                limits=Limits(max_experiments=experiments),
            )
            sup.run()
            exps = ledger.experiments()
            decisions = {d.experiment_id: d.created_at for d in ledger.decisions()}
            overheads, process = [], []
            for prev, cur in zip(exps, exps[1:], strict=False):
                runs = ledger.runs(cur.id)
                in_runs = sum(r.train_seconds + r.eval_seconds for r in runs)
                cycle = decisions[cur.id] - decisions[prev.id]
                overheads.append(cycle - in_runs)
                process.append(in_runs / max(len(runs), 1))
        finally:
            if saved is None:
                os.environ.pop("RSILAB_HOME", None)
            else:
                os.environ["RSILAB_HOME"] = saved
    return overheads, process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=40)
    args = ap.parse_args()
    t0 = time.time()
    overheads, process = supervisor_overheads(args.experiments)
    wall = time.time() - t0
    q = statistics.quantiles(overheads, n=10)
    print(f"experiments: {len(overheads)}   total wall: {wall:.1f} s")
    print(f"{'':28}{'median':>10}{'p10':>10}{'p90':>10}")
    print(
        f"{'supervisor overhead (s)':28}{statistics.median(overheads):>10.3f}{q[0]:>10.3f}{q[-1]:>10.3f}"
    )
    print(f"{'train+eval per run (s)':28}{statistics.median(process):>10.3f}")
    print(
        f"overhead vs a 60 s budget: {100 * statistics.median(overheads) / 60:.2f}% (target <= 1%)"
    )


if __name__ == "__main__":
    main()
