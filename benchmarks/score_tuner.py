"""Figures for issue 8: an unattended tuner run scored against the human references, and one
`meta` generation's change of research velocity.

    RSILAB_HOME=/tmp/score-home .venv/bin/python benchmarks/score_tuner.py \\
        --budget 20 --session-experiments 5 --strategies 2 --seeds 3

What it does, on the bundled `gpt` task, cpu preset, one training at a time:

1. `rsilab meta` for one generation: the starting strategy (the tuner as `rsilab run` would
   use it) gets a research session of N experiments from the baseline commit, then K-1
   tuner variants get one session each; every session's final incumbent is confirmed with
   fresh seeds against the baseline, giving research velocity (confirmed gain per compute
   hour) per strategy, and the change of the best strategy over the starting one.
2. `rsilab score` of the starting strategy's session (that is the unattended tuner run of a
   fixed length): the baseline, each human reference (`tasks/gpt/reference/`) and the
   session's incumbent, all with the same fresh seeds; the normalized score (0 = baseline,
   1 = reference) with its paired Fieller 95% interval, and the milestone reached.

Everything lands under `--out` (default <RSILAB_HOME>/benchmarks/score_tuner-<time>): the
meta folder with meta.json and every session workspace (ledgers, logs), score.json in the
scored session, and summary.json with the headline figures. Nothing is asserted; the
figures are printed whatever they are. `--task toy --budget 1` runs the same pipeline on
the toy task in a minute (a smoke test of the script).

Not covered: LLM proposers (offline only), GPU presets, parallel sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from _common import fmt, machine_line, out_dir

from rsilab.config import resolve_task_dir
from rsilab.data import prepare
from rsilab.run.bench import Bench
from rsilab.studies.score import format_table as score_table
from rsilab.studies.score import score_workspace
from rsilab.studies.strategy import StrategySearch, format_table, summary
from rsilab.workspace import open_workspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="gpt", help="bundled task (gpt; toy for a quick smoke test)")
    ap.add_argument("--budget", type=float, default=20.0, help="training seconds per run")
    ap.add_argument(
        "--session-experiments", type=int, default=5, help="experiments per research session"
    )
    ap.add_argument(
        "--strategies", type=int, default=2, help="strategies in the meta generation (start + K-1)"
    )
    ap.add_argument("--generations", type=int, default=1, help="meta generations")
    ap.add_argument("--seeds", type=int, default=3, help="runs of each contender when scoring")
    ap.add_argument(
        "--confirm-seeds", type=int, default=3, help="fresh runs confirming each session"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="output folder (default: under RSILAB_HOME)"
    )
    args = ap.parse_args()
    os.environ.setdefault("RSILAB_HOME", "/tmp/score-home")  # read at call time, not import
    task_dir = resolve_task_dir(args.task)
    overrides = [f"budget={args.budget:g}"]
    root = out_dir("score_tuner", args.out)
    data = prepare("shakespeare") if args.task == "gpt" else None
    train, val = (data.train_path, data.val_path) if data else (None, None)
    print(machine_line())
    print(
        f"{args.task} task, cpu preset, budget {args.budget:g} s, sessions of {args.session_experiments} "
        f"experiments, {args.strategies} strategies x {args.generations} generation(s), score seeds "
        f"{args.seeds}, confirmation seeds {args.confirm_seeds}; output: {root}",
        flush=True,
    )

    t0 = time.time()
    meta = StrategySearch(
        root / "meta",
        task_dir=task_dir,
        overrides=overrides,
        preset="cpu",
        proposer="tuner",
        session_experiments=args.session_experiments,
        confirm_seeds=args.confirm_seeds,
        train_data=train,
        val_data=val,
        notify=lambda line: print(line, flush=True),
    )
    state = meta.run(args.generations, args.strategies)
    meta_min = (time.time() - t0) / 60

    t1 = time.time()
    start_session = next(
        s for s in state.session_list() if s.strategy == "s0" and s.generation == 0
    )
    ws = open_workspace(Path(start_session.dir))
    task = ws.load_task([("budget", args.budget)])
    with Bench(task, train_data=train, val_data=val, preset="cpu") as bench:
        report = score_workspace(
            ws, bench, seeds=args.seeds, notify=lambda line: print(line, flush=True)
        )
    score_min = (time.time() - t1) / 60

    print()
    print(machine_line())
    print(f"wall time: meta {meta_min:.1f} min, score {score_min:.1f} min")
    print()
    print("== meta: strategies (velocity = confirmed gain in val metric per compute-hour) ==")
    print(format_table(state))
    print()
    print(
        f"== score of the unattended tuner session {Path(start_session.dir).name} "
        f"({start_session.experiments} experiments, {start_session.kept} kept) =="
    )
    print(score_table(report))
    head = summary(state)
    gen = state.generations[-1]
    out: dict[str, Any] = {
        "task": args.task,
        "budget_s": args.budget,
        "session_experiments": args.session_experiments,
        "meta": {
            "start_velocity": head["start_velocity"],
            "champion": head["champion"],
            "champion_velocity": head["champion_velocity"],
            "velocity_change": gen["velocity_change_vs_start"],
            "velocity_change_se": gen["velocity_change_se"],
            "strategies": state.strategies,
        },
        "score": {
            "reference": report["reference"],
            "score": report["score"],
            "scores": report["scores"],
            "milestone": report["milestone"],
            "means": {a["name"]: a["mean"] for a in report["arms"]},
            "sds": {a["name"]: a["sd"] for a in report["arms"]},
        },
        "wall_min": {"meta": meta_min, "score": score_min},
    }
    (root / "summary.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    s = report["score"] or {}
    print()
    print(
        f"headline: normalized score of the tuner run vs {report['reference']}: {fmt(s.get('estimate'), '.3f')} "
        f"[{fmt(s.get('low'), '.3f')}, {fmt(s.get('high'), '.3f')}]; milestone {report['milestone'] or 'none'}; "
        f"meta velocity change {fmt(gen['velocity_change_vs_start'], '+.4g')} ± "
        f"{fmt(gen['velocity_change_se'], '.3g')} per compute-hour ({head['champion']} vs s0)"
    )
    print(f"wrote {root / 'summary.json'}")


if __name__ == "__main__":
    main()
