"""How many validation bytes the sealed evaluator needs: val_bpb and cost vs `[eval] bytes`.

Trains the unmodified baseline once (cpu preset, 1 thread, the task's 60 s budget) through
the real runner and keeps the run folder; or takes existing run folders (`--run-dir`,
e.g. the ones noise_floor.py keeps). Then it runs the sealed evaluator
(`python -m rsilab.harness.evaluate`, as the runner calls it, 1 thread) on each artifact
with several slice sizes, up to the whole validation split, and prints per size: val_bpb,
its deviation from the whole-split value, the evaluator's own seconds and the process's
wall seconds. A second pass, in this process, scores every window of the whole split to
estimate the standard error a slice of each size would have if its windows were drawn at
random (the evaluator's windows are evenly spaced, which usually does at least as well).
With several artifacts it also shows how far each slice moves the difference between two
models, which is what the judge compares.

    RSILAB_HOME=/tmp/bench-home python benchmarks/eval_stability.py [--budget 60] [--repeats 1]
    RSILAB_HOME=/tmp/bench-home python benchmarks/eval_stability.py --run-dir A --run-dir B

It justifies the default `[eval] bytes` in src/rsilab/tasks/gpt/rsilab.toml; nothing is
asserted. Not covered: models of other sizes or contexts (eval time grows with the model),
and the seed-to-seed noise of training itself (see noise_floor.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import fmt, gpt_task, machine_line, out_dir, run_baseline, shakespeare, table

from rsilab.harness import evaluate
from rsilab.run.process import run_process
from rsilab.run.runner import RunPaths

SIZES = (16384, 32768, 65536, 131072, 262144, 0)  # 0: the whole validation split


@dataclass(frozen=True)
class Scored:
    n_bytes: int  # requested
    val_bpb: float
    eval_tokens: int  # bytes scored: windows x context
    context: int
    eval_seconds: float  # the evaluator's own figure: load, purity and causality probes, scoring
    wall_seconds: float  # the evaluator process, start (imports) to exit


def score(
    artifact: Path, val: Path, n_bytes: int, *, threads: int, probes: int, work: Path
) -> Scored:
    """One sealed-evaluator process on `artifact` with `n_bytes` validation bytes."""
    out = work / f"metrics-{n_bytes}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "rsilab.harness.evaluate",
        "--artifact",
        str(artifact),
        "--val",
        str(val),
        "--out",
        str(out),
        "--threads",
        str(threads),
        "--bytes",
        str(n_bytes),
        "--probes",
        str(probes),
    ]
    env = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(
        {
            k: os.environ[k]
            for k in ("PATH", "HOME", "RSILAB_HOME", "VIRTUAL_ENV")
            if k in os.environ
        }
    )
    outcome = run_process(cmd, cwd=work, env=env, log=work / "eval.log", timeout=600)
    try:
        figures = json.loads(out.read_text())
    except (OSError, ValueError):
        figures = {}
    return Scored(
        n_bytes,
        float(figures.get("val_bpb", math.nan)),
        int(figures.get("eval_tokens", 0)),
        int(figures.get("context", 0)),
        float(figures.get("eval_seconds", math.nan)),
        outcome.seconds,
    )


def window_bits(artifact: Path, val: Path, threads: int) -> list[float]:
    """Mean bits per byte of every window of the whole split (the evaluator's windows, all of them)."""
    torch.set_num_threads(threads)
    program = torch.export.load(str(artifact / "model.pt2"))
    batch, seq_len = evaluate._input_shape(program)
    module = program.module()
    data = torch.frombuffer(bytearray(val.read_bytes()), dtype=torch.uint8)
    windows = evaluate._windows(data, data.numel(), seq_len)
    out: list[float] = []
    with torch.no_grad():
        for i in range(0, windows.shape[0], batch):
            chunk = windows[i : i + batch]
            real = chunk.shape[0]
            if real < batch:
                chunk = torch.cat([chunk, chunk[:1].expand(batch - real, -1)])
            logp = torch.log_softmax(module(chunk[:, :-1])[:real].double(), dim=-1)
            nats = -logp.gather(-1, chunk[:real, 1:].unsqueeze(-1)).squeeze(-1).mean(-1)
            out.extend((nats / math.log(2)).tolist())
    return out


def random_slice_se(per_window: list[float], n_windows: int) -> float:
    """Standard error of the mean of `n_windows` windows drawn without replacement."""
    total = len(per_window)
    if n_windows >= total or total < 2:
        return 0.0
    return statistics.stdev(per_window) / math.sqrt(n_windows) * math.sqrt(1 - n_windows / total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run-dir",
        type=Path,
        action="append",
        default=[],
        help="an existing run folder with artifact/model.pt2 (repeatable); else train one",
    )
    p.add_argument(
        "--budget", type=float, default=None, help="training seconds (default: the task's)"
    )
    p.add_argument("--seed", type=int, default=0, help="harness seed of the training run")
    p.add_argument(
        "--bytes",
        type=int,
        nargs="+",
        default=list(SIZES),
        help="slice sizes to score; 0 means the whole split",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="evaluator runs per size (seconds: median; val_bpb is deterministic)",
    )
    p.add_argument(
        "--noise-sd",
        type=float,
        default=None,
        help="seed-to-seed sd of val_bpb (from noise_floor.py), to express deviations in it",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: under RSILAB_HOME)")
    args = p.parse_args()

    task = gpt_task(args.budget)
    data = shakespeare()
    val_size = data.val_path.stat().st_size
    print(machine_line())
    runs = list(args.run_dir)
    if not runs:
        root = out_dir("eval_stability", args.out)
        run_dir = root / f"train-seed{args.seed}"
        print(
            f"training the baseline once: budget {task.budget:g} s, seed {args.seed} ({run_dir})",
            flush=True,
        )
        r = run_baseline(task, data, args.seed, run_dir)
        if not r.ok:
            print(f"the training run failed: {r.reason}")
            sys.exit(1)
        print(
            f"  steps {r.summary.get('num_steps', 0):.0f}, val_bpb {r.metric:.4f} at the task's "
            f"{task.eval.bytes} bytes",
            flush=True,
        )
        runs = [run_dir]

    # The whole split is always scored: it is the reference every deviation is measured from.
    sizes = sorted({min(b, val_size) if b > 0 else val_size for b in args.bytes} | {val_size})
    results: dict[Path, dict[int, Scored]] = {}
    for run_dir in runs:
        artifact = RunPaths(run_dir).artifact.resolve()
        work = run_dir / "eval_stability"
        work.mkdir(parents=True, exist_ok=True)
        per_size: dict[int, Scored] = {}
        for n in sizes:
            reps = [
                score(
                    artifact,
                    data.val_path,
                    n,
                    threads=task.threads,
                    probes=task.eval.probes,
                    work=work,
                )
                for _ in range(max(1, args.repeats))
            ]
            per_size[n] = Scored(
                n,
                reps[0].val_bpb,
                reps[0].eval_tokens,
                reps[0].context,
                statistics.median(s.eval_seconds for s in reps),
                statistics.median(s.wall_seconds for s in reps),
            )
        results[run_dir] = per_size
        t = time.perf_counter()
        bits = window_bits(artifact, data.val_path, task.threads)
        full_pass = time.perf_counter() - t
        full = per_size[sizes[-1]].val_bpb
        sd_note = f"; |dev|/sd uses the given noise sd {args.noise_sd:g}" if args.noise_sd else ""
        print(
            f"\nartifact {artifact} (whole split {val_size} bytes, {len(bits)} windows; "
            f"in-process mean {statistics.fmean(bits):.4f}, per-window sd {statistics.stdev(bits):.3f} bits; in-process full pass {full_pass:.1f} s{sd_note})"
        )
        rows = []
        for n in sizes:
            s = per_size[n]
            dev = s.val_bpb - full
            windows = s.eval_tokens // max(1, s.context)
            row = [
                "all" if n == val_size else n,
                s.eval_tokens,
                fmt(s.val_bpb),
                fmt(dev, "+.4f"),
                fmt(random_slice_se(bits, windows)),
                fmt(s.eval_seconds, ".2f"),
                fmt(s.wall_seconds, ".2f"),
            ]
            if args.noise_sd:
                row.insert(4, fmt(abs(dev) / args.noise_sd, ".2f"))
            rows.append(row)
        headers = ["bytes", "scored", "val_bpb", "dev_vs_all", "se(random)", "eval_s", "wall_s"]
        if args.noise_sd:
            headers.insert(4, "|dev|/sd")
        print(table(headers, rows))

    print(
        "se(random): standard error of a slice of that many windows drawn at random; eval_s: the "
        "evaluator's own seconds (load, purity and causality probes, scoring); wall_s: its process, "
        "with Python and torch start-up"
    )
    if len(runs) > 1:
        print("\nDifference between two artifacts: slice value minus whole-split value, per pair")
        rows = []
        pairs = list(itertools.combinations(runs, 2))
        for n in sizes:
            shifts = []
            for a, b in pairs:
                d_slice = results[a][n].val_bpb - results[b][n].val_bpb
                d_full = results[a][sizes[-1]].val_bpb - results[b][sizes[-1]].val_bpb
                shifts.append(d_slice - d_full)
            devs = [abs(results[r][n].val_bpb - results[r][sizes[-1]].val_bpb) for r in runs]
            rows.append(
                [
                    "all" if n == val_size else n,
                    f"{max(devs):.4f}",
                    f"{statistics.fmean(abs(x) for x in shifts):.4f}",
                    f"{max(abs(x) for x in shifts):.4f}",
                    fmt(statistics.median(results[r][n].eval_seconds for r in runs), ".2f"),
                ]
            )
        print(
            table(["bytes", "max |dev|", "mean |pair shift|", "max |pair shift|", "eval_s"], rows)
        )
    print(machine_line())


if __name__ == "__main__":
    main()
