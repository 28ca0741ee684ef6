"""Training throughput of the bundled GPT's cpu preset: tokens/s and MFU against this machine's peak.

What it measures, in one process, one thing at a time:

1. The fp32 matmul peak of this machine: square matrices of 256..2048, with 1 and with 2
   threads, best-of per size over a short window; the peak is the max over sizes.
2. The unmodified `train.py` of the bundled `gpt` task (cpu preset, 1 thread, as the
   runner runs it) for a short budget, several repeats with different seeds, through the
   real runner. tokens/s and train.py's own FLOPs/token come from its summary; MFU is
   recomputed against the 1-thread peak measured in step 1 (train.py's `mfu_percent` uses
   the harness's cached one-size peak, shown alongside).

The issue's target is MFU >= 50% of the 1-thread peak. Nothing is asserted: the script
prints tables of figures. The machine is shared: run it when nothing heavy runs beside
it, and read the load average it prints.

    RSILAB_HOME=/tmp/bench-home python benchmarks/train_throughput.py [--repeats 3] [--budget 15]

Not covered: the gpu preset, more than one thread per run, evaluation speed (see
eval_stability.py), and the metric (see noise_floor.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
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

SIZES = (256, 512, 1024, 1536, 2048)
THREADS = (1, 2)
EVAL_BYTES = 8192  # throughput runs only need a valid evaluation, not a precise metric


def matmul_gflops(size: int, threads: int, seconds: float, min_reps: int = 3) -> float:
    """Best-of fp32 `size`x`size` matmul throughput with `threads` threads (GFLOP/s)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up: first call allocates and picks kernels
    best, reps = 0.0, 0
    end = time.perf_counter() + seconds
    while reps < min_reps or time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
        reps += 1
    return best / 1e9


def measure_peaks(seconds: float) -> tuple[dict[int, dict[int, float]], dict[int, float]]:
    """GFLOP/s by thread count, then by size; and the machine's busy cores while measuring."""
    before = torch.get_num_threads()
    gflops, busy = {}, {}
    try:
        for n in THREADS:
            start = cpu_jiffies()
            gflops[n] = {s: matmul_gflops(s, n, seconds) for s in SIZES}
            busy[n] = busy_cores(start, cpu_jiffies())
    finally:
        torch.set_num_threads(before)
    return gflops, busy


def harness_cached_peak(threads: int) -> float | None:
    """The peak (FLOP/s) train.py's `mfu_percent` was computed against, if cached."""
    home = Path(os.environ.get("RSILAB_HOME") or Path.home() / ".cache" / "rsilab")
    try:
        return float(json.loads((home / "cpu_peak_flops.json").read_text())[str(threads)])
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="training runs (different seeds)")
    p.add_argument("--budget", type=float, default=15.0, help="training seconds per run")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run; then +1 per run")
    p.add_argument("--peak-seconds", type=float, default=0.5, help="timing window per matmul size")
    p.add_argument(
        "--out", type=Path, default=None, help="run folders (default: under RSILAB_HOME)"
    )
    args = p.parse_args()

    print(machine_line())
    peaks, busy_peak = measure_peaks(args.peak_seconds)
    best = {n: max(peaks[n].values()) for n in THREADS}
    rows = [[s, *(f"{peaks[n][s]:.1f}" for n in THREADS)] for s in SIZES]
    rows.append(["max", *(f"{best[n]:.1f}" for n in THREADS)])
    rows.append(["busy", *(fmt(busy_peak[n], ".2f") for n in THREADS)])
    print(f"\nfp32 matmul peak, GFLOP/s (best of >= 3 reps and {args.peak_seconds:g} s per size)")
    print(table(["size", *(f"{n} thread{'s' if n > 1 else ''}" for n in THREADS)], rows))

    task = gpt_task(args.budget, [("eval.bytes", EVAL_BYTES)])
    data = shakespeare()
    root = out_dir("train_throughput", args.out)
    peak1 = best[1] * 1e9
    runs = []
    for i in range(args.repeats):
        seed = args.seed + i
        before = cpu_jiffies()
        r = run_baseline(task, data, seed, root / f"run{i}-seed{seed}")
        runs.append((seed, busy_cores(before, cpu_jiffies()), r))

    rows, tps_all, mfu_all = [], [], []
    for seed, busy, r in runs:
        s = r.summary
        tps = s.get("tokens_per_second", float("nan"))
        steps = s.get("num_steps", float("nan"))
        train_s = s.get("training_seconds", float("nan"))
        cached = harness_cached_peak(task.threads)
        # train.py's own FLOPs/token, recovered from its summary (mfu = flops/token * tps / peak).
        flops_tok = (
            s.get("mfu_percent", float("nan")) / 100 * cached / tps
            if cached and tps > 0
            else float("nan")
        )
        mfu = 100 * flops_tok * tps / peak1
        tps_all.append(tps)
        mfu_all.append(mfu)
        rows.append(
            [
                seed,
                r.status.value,
                fmt(busy, ".2f"),
                fmt(steps, ".0f"),
                fmt(train_s, ".1f"),
                fmt(1000 * train_s / max(steps - 1, 1), ".1f"),
                fmt(tps, ".0f"),
                fmt(flops_tok / 1e6, ".3f"),
                fmt(s.get("mfu_percent", float("nan")), ".1f"),
                fmt(mfu, ".1f"),
                f"{r.train_seconds:.1f}",
            ]
        )
    print(
        f"\ntrain.py cpu preset, {task.threads} thread, budget {args.budget:g} s, "
        f"{args.repeats} runs through the runner (folders: {root})"
    )
    print(
        table(
            [
                "seed",
                "status",
                "busy",
                "steps",
                "train_s",
                "ms/step",
                "tokens/s",
                "MFLOP/tok",
                "mfu%(train.py)",
                "mfu%(measured)",
                "wall_s",
            ],
            rows,
        )
    )
    cached = harness_cached_peak(task.threads)
    print("busy: average busy cores machine-wide during the run (about 1.0 when nothing else runs)")
    print(
        f"mfu%(train.py): against the harness's cached {task.threads}-thread peak "
        f"{fmt(cached / 1e9 if cached else float('nan'), '.1f')} GFLOP/s (one size, 1024); "
        f"mfu%(measured): against the {best[1]:.1f} GFLOP/s measured above"
    )

    tps_s, mfu_s = Spread.of(tps_all), Spread.of(mfu_all)
    print()
    print(
        table(
            ["figure", "n", "median", "sd", "min", "max", "range/median"],
            [
                [
                    "tokens/s",
                    tps_s.n,
                    fmt(tps_s.median, ".0f"),
                    fmt(tps_s.sd, ".0f"),
                    fmt(tps_s.min, ".0f"),
                    fmt(tps_s.max, ".0f"),
                    fmt(tps_s.rel_range_percent, ".1f") + "%",
                ],
                [
                    "MFU % (1-thread peak)",
                    mfu_s.n,
                    fmt(mfu_s.median, ".1f"),
                    fmt(mfu_s.sd, ".1f"),
                    fmt(mfu_s.min, ".1f"),
                    fmt(mfu_s.max, ".1f"),
                    fmt(mfu_s.rel_range_percent, ".1f") + "%",
                ],
            ],
        )
    )
    verdict = "met" if mfu_s.median >= 50 else "not met"
    print(f"target MFU >= 50% of the 1-thread peak: median {fmt(mfu_s.median, '.1f')}% ({verdict})")
    print(machine_line())


if __name__ == "__main__":
    main()
