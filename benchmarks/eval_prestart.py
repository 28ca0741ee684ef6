"""What starting the sealed evaluator with training saves per run (runner.run's `prestart`).

Runs the unmodified bundled `gpt` task (cpu preset, one thread, as `rsilab train` does)
through the real runner, alternating cold and pre-started evaluators, `--repeats` pairs,
each pair under one harness seed and a FLOPs budget (so both arms do the same training
work whatever the machine's load). Per arm: the median wall time of the whole run
(runner.run, from checkout to result), the training process's seconds, the evaluator's
seconds (for a pre-started one, from `go` to its exit), and whether the two arms' val_bpb
agree (they must: same seed, same program, same bytes scored).

    RSILAB_HOME=/tmp/bench-home python benchmarks/eval_prestart.py [--repeats 5] [--budget-flops 2e11]

Measured (2-core AMD Zen 3 VM, torch 2.13.0 CPU, 2026-11-26; 5 pairs at 2e11 FLOPs, about
9 s of training): run wall 14.37 s cold against 11.71 s pre-started (medians; saved 2.09 to
3.13 s per pair, median 2.66 s), evaluator 5.65 s against 3.13 s, training 8.69 s against
8.65 s (the waiting evaluator's imports ran on the spare core and did not slow it), val_bpb
identical in every pair. At the task's 60 s budget that is about 4% more runs per hour; at
the README's 20 s, about 9%.

Nothing is asserted. Not covered: GPUs (there the evaluator also pays for CUDA's start-up,
which a pre-start does not move), several slots (the local executor turns pre-starts off
when its slots take every core).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from _common import gpt_task, machine_line, out_dir, shakespeare, table

from rsilab.run import process, runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="pairs of runs (cold, pre-started)")
    ap.add_argument("--budget-flops", type=float, default=2e11, help="training FLOPs per run")
    ap.add_argument(
        "--out", type=Path, default=None, help="folder for the runs (default: under RSILAB_HOME)"
    )
    args = ap.parse_args()
    task = gpt_task(120.0, [("budget_flops", args.budget_flops)])
    data = shakespeare()
    where = out_dir("eval_prestart", args.out)
    print(machine_line())
    print(
        f"gpt task, cpu preset, {task.threads} thread(s), {args.budget_flops:g} FLOPs per run, "
        f"{args.repeats} pairs; usable cores {process.usable_cores()}"
    )
    arms: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    agree = True
    for k in range(args.repeats):
        metrics = {}
        for prestart in (False, True):
            run_dir = where / f"{'warm' if prestart else 'cold'}-{k}"
            shutil.rmtree(run_dir, ignore_errors=True)
            work = run_dir / "work"
            shutil.copytree(task.root, work, ignore=shutil.ignore_patterns("__pycache__"))
            t0 = time.monotonic()
            r = runner.run(
                task,
                work,
                run_dir,
                seed=k,
                train_data=data.train_path,
                val_data=data.val_path,
                preset="cpu",
                prestart=prestart,
            )
            wall = time.monotonic() - t0
            if not r.ok:
                raise SystemExit(f"run {run_dir} failed: {r.reason}")
            arms[prestart].append((wall, r.train_seconds, r.eval_seconds))
            metrics[prestart] = r.metric
            shutil.rmtree(run_dir / "artifact", ignore_errors=True)
            print(
                f"pair {k} {'pre-started' if prestart else 'cold':>11}: wall {wall:6.2f} s, train "
                f"{r.train_seconds:6.2f} s, eval {r.eval_seconds:5.2f} s, val_bpb {r.metric:.6f}",
                flush=True,
            )
        agree = agree and metrics[False] == metrics[True]
    rows = []
    for prestart, runs in arms.items():
        rows.append(
            [
                "pre-started" if prestart else "cold",
                *(f"{statistics.median(r[i] for r in runs):.2f}" for i in range(3)),
            ]
        )
    saved = [c[0] - w[0] for c, w in zip(arms[False], arms[True], strict=True)]
    print()
    print(table(["evaluator", "run wall s (median)", "train s", "eval s"], rows))
    print(
        f"\nsaved per run: median {statistics.median(saved):.2f} s (pairs: "
        f"{', '.join(f'{s:.2f}' for s in saved)}); val_bpb identical in every pair: {agree}"
    )


if __name__ == "__main__":
    main()
