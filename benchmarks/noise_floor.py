"""The noise floor the judge faces: val_bpb of the unmodified baseline across harness seeds.

Runs the bundled `gpt` task's own `train.py` (cpu preset, 1 thread, the task's default
60 s budget and `[eval] bytes`) through the real runner and the sealed evaluator, once per
seed, strictly one run at a time. Prints one row per run (val_bpb, optimizer steps, so
the speed jitter of a wall-clock budget shows, and how busy the machine was), then the
median and spread (sd, min, max) of val_bpb and of the step count.

    RSILAB_HOME=/tmp/bench-home python benchmarks/noise_floor.py [--repeats 3] [--budget 60]

The run folders are kept (their path is printed); `eval_stability.py --run-dir` can score
their artifacts again on other validation slices. Nothing is asserted.

Not covered: the noise of a modified train.py (a candidate can be more or less seed-
sensitive than the baseline), the gpu preset, and runs with more than one thread.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import (
    Spread,
    busy_cores,
    cpu_jiffies,
    fmt,
    gpt_task,
    machine_line,
    out_dir,
    run_baseline,
    shakespeare,
    table,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs, one per seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run; then +1 per run")
    p.add_argument(
        "--budget", type=float, default=None, help="training seconds (default: the task's)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run folders (default: under RSILAB_HOME)"
    )
    args = p.parse_args()

    task = gpt_task(args.budget)
    data = shakespeare()
    root = out_dir("noise_floor", args.out)
    print(machine_line())
    print(
        f"baseline train.py, cpu preset, {task.threads} thread, budget {task.budget:g} s, "
        f"eval bytes {task.eval.bytes}; runs one at a time (folders: {root})",
        flush=True,
    )

    rows, bpb, steps, tps = [], [], [], []
    for i in range(args.repeats):
        seed = args.seed + i
        before = cpu_jiffies()
        r = run_baseline(task, data, seed, root / f"run{i}-seed{seed}")
        busy = busy_cores(before, cpu_jiffies())
        s = r.summary
        value = r.metric if r.ok and r.metric is not None else math.nan
        bpb.append(value)
        steps.append(s.get("num_steps", math.nan))
        tps.append(s.get("tokens_per_second", math.nan))
        rows.append(
            [
                seed,
                r.status.value,
                fmt(busy, ".2f"),
                fmt(value),
                fmt(steps[-1], ".0f"),
                fmt(tps[-1], ".0f"),
                fmt(s.get("final_train_loss", math.nan), ".3f"),
                f"{r.train_seconds:.1f}",
                f"{r.eval_seconds:.1f}",
            ]
        )
        print(
            f"  seed {seed}: {r.status.value} val_bpb {fmt(value)} steps {fmt(steps[-1], '.0f')}"
            + (f" ({r.reason})" if not r.ok else ""),
            flush=True,
        )

    print()
    print(
        table(
            [
                "seed",
                "status",
                "busy",
                "val_bpb",
                "steps",
                "tokens/s",
                "train_loss",
                "train_wall_s",
                "eval_wall_s",
            ],
            rows,
        )
    )
    print("busy: average busy cores machine-wide during the run (about 1.0 when nothing else runs)")

    spreads = [
        ("val_bpb", Spread.of(bpb), ".4f"),
        ("num_steps", Spread.of(steps), ".0f"),
        ("tokens/s", Spread.of(tps), ".0f"),
    ]
    print()
    print(
        table(
            ["figure", "n", "median", "mean", "sd", "min", "max", "range/median"],
            [
                [
                    name,
                    sp.n,
                    fmt(sp.median, f),
                    fmt(sp.mean, f),
                    fmt(sp.sd, f if f != ".0f" else ".1f"),
                    fmt(sp.min, f),
                    fmt(sp.max, f),
                    fmt(sp.rel_range_percent, ".1f") + "%",
                ]
                for name, sp, f in spreads
            ],
        )
    )
    sd = spreads[0][1].sd
    if math.isfinite(sd):
        print(
            f"sd of the difference of two single runs: {math.sqrt(2) * sd:.4f} bits/byte "
            f"(one-sided 5% threshold for one run each: {1.645 * math.sqrt(2) * sd:.4f})"
        )
    print(machine_line())


if __name__ == "__main__":
    main()
