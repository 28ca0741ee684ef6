"""Model collapse at CPU scale: does `replace` degrade while `accumulate` holds?

Runs a collapse study (`rsilab.studies.collapse`, the same code as `rsilab collapse`) on the
bundled `gpt` task: Shakespeare, the cpu preset, one thread, one training at a time, the
sealed evaluator on the real validation split. Then prints the study's table (mean and 95%
band over seeds), the paired differences replace - accumulate per generation (the same
seeds drive both policies, so per-seed differences are paired), and what each cell cost
(optimizer steps, seconds, sampling speed).

    RSILAB_HOME=/tmp/bench-home python benchmarks/collapse_study.py --out /tmp/collapse \
        [--seeds 2] [--generations 4] [--size 16k] [--budget-flops 6e11] [--budget 150]

Run the same command again after a stop to resume; give more --seeds / --generations /
--policies later to extend the study (finished cells are reused).

The training budget is estimated FLOPs (`budget_flops`; 6e11 is about 100 optimizer steps
of the cpu preset, some 20 s on a quiet core), with `budget` seconds as the wall-clock
cap. On a shared machine a wall-clock budget gives a cell 3x fewer steps when others are
busy, and that would be confounded with the generation. `--budget-flops 0` uses seconds.

Not covered: the gpu preset, other corpora (use `rsilab collapse --task` for those),
and sizes near the real training set (sampling a fixed-shape model is one forward pass
per B bytes: hours for 4.5 MB on a CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import fmt, machine_line, table

from rsilab.studies.collapse import open_study, write_report
from rsilab.studies.collapse.report import ci95, latest_ok
from rsilab.studies.collapse.study import SHARED, parse_size

PAIRED = ("val_bpb", "word_entropy", "distinct_2", "tail_types", "tail_mass", "nonwords", "rep8")


def paired(rows: list[dict[str, Any]], a: str, b: str) -> list[list[str]]:
    """Per generation: mean and 95% band of (a - b) over the seeds that finished both."""
    cells = {(r["policy"], r["seed"], r["generation"]): r for r in latest_ok(rows)}
    gens = sorted({g for (p, _, g) in cells if p == a})
    out = []
    for g in gens:
        seeds = sorted(s for (p, s, gg) in cells if p == a and gg == g and (b, s, g) in cells)
        line = [f"g{g}", str(len(seeds))]
        for m in PAIRED:

            def value(policy: str, seed: int, metric: str = m, gen: int = g) -> float:
                row = cells[(policy, seed, gen)]
                return float(row["val_bpb"] if metric == "val_bpb" else row["metrics"][metric])

            mean, lo, hi = ci95([value(a, s) - value(b, s) for s in seeds])
            line.append(
                fmt(mean, "+.3f")
                + (f" [{lo:+.3f},{hi:+.3f}]" if lo is not None and hi is not None else "")
            )
        out.append(line)
    return out


def costs(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in latest_ok(rows):
        s, run = r["samples"], r["run"]
        rate = s["size"] / s["seconds"] if s.get("seconds") else float("nan")
        out.append(
            [
                r["policy"],
                str(r["seed"]),
                str(r["generation"]),
                fmt(run["summary"].get("num_steps", 0), ".0f"),
                fmt(run["train_seconds"], ".0f"),
                fmt(run["eval_seconds"], ".0f"),
                fmt(s["seconds"], ".0f"),
                fmt(rate, ".0f"),
            ]
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("collapse-study"))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--policies", default="replace,accumulate")
    p.add_argument("--size", default="16k", help="bytes of R and of each synthetic corpus")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--budget-flops", type=float, default=6e11, help="0: a wall-clock budget of --budget s"
    )
    p.add_argument(
        "--budget", type=float, default=150.0, help="seconds (the cap when --budget-flops is set)"
    )
    args = p.parse_args()

    sets: list[tuple[str, Any]] = [("budget", args.budget)]
    if args.budget_flops > 0:
        sets.append(("budget_flops", args.budget_flops))
    print(machine_line())
    t0 = time.time()
    study = open_study(
        args.out,
        task_name="gpt",
        overrides=sets,
        policies=args.policies,
        seeds=args.seeds,
        generations=args.generations,
        temperature=args.temperature,
        size=parse_size(args.size),
        preset="cpu",
    )
    rows = study.run()
    print(
        f"\nstudy in {study.out}: {len(latest_ok(rows))} cells finished, {time.time() - t0:.0f} s this time"
    )
    print(machine_line())
    print(
        "\nmean ± half-width of the 95% band over seeds (n = seeds); real R / real val: real text\n"
    )
    print(write_report(study, rows))
    labels = [pol.label for pol in study.settings.policies]
    if "replace" in labels and "accumulate" in labels:
        print("\npaired difference replace - accumulate (mean [95% band]) per generation\n")
        print(table(["gen", "n", *PAIRED], paired(rows, "replace", "accumulate")))
    print("\ncost per cell (sampling speed in bytes/s includes the sampler's start-up)\n")
    print(
        table(
            ["policy", "seed", "gen", "steps", "train_s", "eval_s", "sample_s", "sample_B/s"],
            costs(rows),
        )
    )
    shared = [r for r in latest_ok(rows) if r["policy"] == SHARED]
    if shared:
        print(
            f"\ngeneration 0 trained on {shared[0]['data']['train']['size']:,} real bytes; "
            f"files: {study.out}/collapse.png, collapse_summary.csv, collapse.json"
        )


if __name__ == "__main__":
    main()
