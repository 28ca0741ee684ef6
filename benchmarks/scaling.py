"""Experiments per hour with 1 and 2 local workers and with Ray; the scaling ratio.

The task is the bundled `toy` whose train.py first sleeps RUN_SECONDS (default 3 s): a run
that takes a fixed few seconds and is CPU-light, so this 2-core machine (shared with other
work) is not what limits it. The proposer writes a new comment into train.py each time
(unique files, no effect on the loss), and the judge decides after one run (max_runs = 1,
an alpha so small nothing is kept), so every experiment is exactly one run and no
re-application happens: what is measured is how well the supervisor keeps its slots busy.

Throughput = candidate experiments / (last decision - first candidate's start), per hour
(the baseline is left out). Ratio = K-worker throughput / (K x the 1-worker throughput);
the target is >= 0.9. The Ray row uses a local Ray (`ray.init(num_cpus=2)`, started before
the clock) with 2 slots; it is skipped when Ray is not installed.

    python benchmarks/scaling.py                      # 12 experiments per slot, 3 s runs
    python benchmarks/scaling.py --per-slot 6 --run-seconds 2 --no-ray
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


class NoteProposer:
    """A new comment line in train.py per proposal: a unique change that does nothing."""

    name = "notes"

    def __init__(self) -> None:
        self.count = 0

    def propose(self, ctx: Any) -> Any:
        from rsilab.results import Proposal

        self.count += 1
        src = ctx.files["train.py"]
        return Proposal(
            f"note {self.count}", {"train.py": src + f"# note {self.count}\n"}, self.name
        )

    def observe(self, proposal: Any, verdict: str, metric: float | None) -> None:
        pass


def sleepy_task(root: Path, seconds: float) -> Path:
    from rsilab.config import resolve_task_dir

    task = root / "task"
    shutil.copytree(resolve_task_dir("toy"), task, ignore=shutil.ignore_patterns("__pycache__"))
    src = (task / "train.py").read_text()
    (task / "train.py").write_text(
        src.replace("rng = np.random", f"import time\ntime.sleep({seconds})\nrng = np.random", 1)
    )
    return task


def measure(
    root: Path, name: str, executor_name: str, workers: int, experiments: int, seconds: float
) -> dict[str, Any]:
    from rsilab.loop.limits import Limits
    from rsilab.loop.supervisor import Supervisor
    from rsilab.record.ledger import Ledger
    from rsilab.run.bench import Bench
    from rsilab.run.executors import create as create_executor
    from rsilab.workspace import init_workspace

    ws = init_workspace(root / name, sleepy_task(root / f"{name}-task", seconds), "scaling")
    task = ws.load_task(
        [
            ("judge.noise_runs", 2),
            ("judge.max_runs", 1),
            ("judge.alpha", 1e-12),
            ("judge.recheck_every", 0),
        ]
    )
    executor = create_executor(executor_name, task=task, workers=workers)
    with (
        Ledger(ws.ledger_path) as ledger,
        Bench(task, executor=executor, owns_executor=True) as bench,
    ):
        sup = Supervisor(
            ws, ledger, bench, [NoteProposer()], limits=Limits(max_experiments=experiments)
        )
        sup.run()
        exps = [e for e in ledger.experiments() if e.kind == "candidate"]
        runs = [r for r in ledger.runs() if r.experiment_id in {e.id for e in exps}]
        span = max(e.decided_at or 0.0 for e in exps) - min(e.started_at for e in exps)
        isolation = runs[0].isolation if runs else "?"
    busy = sum(r.train_seconds + r.eval_seconds for r in runs)
    return {
        "name": name,
        "workers": workers,
        "experiments": len(exps),
        "span_s": span,
        "per_hour": len(exps) / span * 3600,
        "busy": busy / (span * workers),
        "isolation": isolation,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-slot", type=int, default=12, help="experiments per worker slot")
    ap.add_argument("--run-seconds", type=float, default=3.0, help="how long train.py sleeps")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["RSILAB_HOME"] = str(root / "home")
        rows = [
            measure(root, "local-1", "local", 1, args.per_slot, args.run_seconds),
            measure(root, "local-2", "local", 2, 2 * args.per_slot, args.run_seconds),
        ]
        if not args.no_ray:
            try:
                import ray
            except ImportError:
                print("(ray is not installed: no Ray row; pip install 'rsilab[ray]')")
            else:
                t0 = time.time()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                print(f"(local Ray started in {time.time() - t0:.1f} s, outside the measurement)")
                rows.append(measure(root, "ray-2", "ray", 2, 2 * args.per_slot, args.run_seconds))
                ray.shutdown()
    single = rows[0]["per_hour"]
    print(
        f"\ntoy task, train.py sleeps {args.run_seconds:g} s per run; one run per experiment; "
        f"sandbox: {rows[0]['isolation']}; {os.cpu_count()} CPUs"
    )
    print(
        f"{'executor':<10} {'K':>2} {'experiments':>11} {'wall s':>7} {'exp/hour':>9} {'slots busy':>10} "
        f"{'ratio to K x 1':>14}"
    )
    for r in rows:
        ratio = r["per_hour"] / (r["workers"] * single)
        print(
            f"{r['name']:<10} {r['workers']:>2} {r['experiments']:>11} {r['span_s']:>7.1f} {r['per_hour']:>9.0f} "
            f"{r['busy']:>9.0%} {ratio:>14.2f}"
        )


if __name__ == "__main__":
    main()
