"""Where the time goes when `rsilab run --executor ray` runs on one machine.

Measures, on this machine, with a local Ray of `--cpus` CPUs (the box's, by default):

- start-up: `ray.init` (the GCS, the raylet, the first driver connection), the log
  channel (a Ray queue actor: one worker process started for it), the first task (another
  worker process, importing rsilab), and a second task once workers are warm;
- shipping: the checkout a run sends to its node (bytes) and a `ray.put` + `ray.get` of it;
- per run: the bundled `toy` task (a fraction of a second of work) run `--runs` times
  through the local executor and through the Ray executor, `--workers` at once; the
  difference per run is Ray's overhead on each run;
- in the background: the CPU the Ray daemons (GCS, raylet, idle workers, the queue actor)
  use while no run is in flight, as a share of one core (read from /proc), bare and with
  rsilab's Ray executor open (its head polls the log channel);
- `--steps N` makes each toy run CPU-bound (N SGD steps instead of 300), as a real
  training run is, so the per-run figures include the runs competing for the cores.

Every figure is the median of `--repeat` repetitions (start-up: fresh Ray sessions).

    python benchmarks/ray_overhead.py --repeat 3 --runs 6 --workers 2

Not covered: a real cluster (network transfers, remote nodes), GPUs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            continue
    return total / TICKS


def _noop() -> int:
    import rsilab  # what a node's task imports first

    return len(rsilab.__name__)


def startup(cpus: int) -> dict[str, float]:
    """One fresh local Ray: seconds for each start-up step, and the idle CPU share."""
    import ray
    from ray.util.queue import Queue

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    channel = Queue(actor_options={"num_cpus": 0})
    channel.put_nowait("ping")
    channel.get(timeout=60)
    t2 = time.perf_counter()
    remote = ray.remote(_noop)
    ray.get(remote.remote())
    t3 = time.perf_counter()
    ray.get(remote.remote())
    t4 = time.perf_counter()
    pids = _descendants(os.getpid())
    before, w0 = _cpu_seconds(pids), time.perf_counter()
    time.sleep(5.0)
    idle = (_cpu_seconds(pids) - before) / (time.perf_counter() - w0)
    channel.shutdown()
    ray.shutdown()
    return {
        "ray.init": t1 - t0,
        "log channel (queue actor)": t2 - t1,
        "first task (worker start)": t3 - t2,
        "warm task": t4 - t3,
        "idle daemons (share of a core)": idle,
    }


def idle_executor(checkout: Path, cpus: int) -> float:
    """CPU share of a core used by Ray and this process while rsilab's Ray executor is open
    and no run is in flight."""
    from rsilab.config import load_task
    from rsilab.run.executors import create

    ex = create("ray", task=load_task(checkout), workers=1, num_cpus=cpus)
    try:
        pids = [os.getpid(), *_descendants(os.getpid())]
        before, w0 = _cpu_seconds(pids), time.perf_counter()
        time.sleep(5.0)
        return (_cpu_seconds(pids) - before) / (time.perf_counter() - w0)
    finally:
        ex.close()


def shipping(checkout: Path) -> dict[str, float]:
    """The payload a run sends (bytes) and a put + get of it on a running Ray."""
    import ray

    from rsilab.run.executors.ray import _payload

    req = _request(checkout, Path(tempfile.mkdtemp()), 0)
    payload = _payload(req)
    t0 = time.perf_counter()
    ray.get(ray.put(payload))
    return {"payload bytes": float(len(pickle.dumps(payload))), "put+get": time.perf_counter() - t0}


def _request(checkout: Path, run_dir: Path, seed: int) -> Any:
    from rsilab.config import load_task
    from rsilab.run.bench import Bench

    task = load_task(checkout)
    return Bench(task).request(checkout, run_dir, seed, label="bench", key=f"b-{seed}")


def per_run(executor: str, checkout: Path, runs: int, workers: int, cpus: int) -> float:
    """Wall seconds per run of the toy task, `workers` at once, on `executor`."""
    from rsilab.config import load_task
    from rsilab.run.bench import Bench
    from rsilab.run.executors import create

    task = load_task(checkout)
    options: dict[str, Any] = {"num_cpus": cpus} if executor == "ray" else {}
    ex = create(executor, task=task, workers=workers, **options)
    with Bench(task, executor=ex, owns_executor=True) as bench, tempfile.TemporaryDirectory() as d:
        # One warm-up run per slot: each Ray worker process is started (and has imported
        # rsilab) before the clock runs; that start is in the start-up figures above.
        bench.measure(checkout, [(90 + k, Path(d) / f"warm{k}") for k in range(workers)])
        t0 = time.perf_counter()
        results = bench.measure(checkout, [(s, Path(d) / f"r{s}") for s in range(runs)])
        wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    return wall / runs * workers  # seconds of one slot per run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=6, help="toy runs per executor and repetition")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--steps", type=int, default=300, help="SGD steps of each toy run")
    args = ap.parse_args()

    from rsilab.paths import bundled_tasks_dir

    home = tempfile.mkdtemp(prefix="rsilab-bench-")
    os.environ["RSILAB_HOME"] = home
    checkout = Path(home) / "toy"
    shutil.copytree(bundled_tasks_dir() / "toy", checkout)
    train = checkout / "train.py"
    train.write_text(train.read_text().replace("STEPS = 300 ", f"STEPS = {args.steps} ", 1))

    steps: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for k, v in startup(args.cpus).items():
            steps.setdefault(k, []).append(v)
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ship = shipping(checkout)
    ray.shutdown()
    polling = statistics.median(idle_executor(checkout, args.cpus) for _ in range(args.repeat))
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(args.repeat):
        for name in walls:
            walls[name].append(per_run(name, checkout, args.runs, args.workers, args.cpus))
            if ray.is_initialized():
                ray.shutdown()

    print(f"# Ray on this machine: {os.cpu_count()} cores, Ray {ray.__version__}, local Ray of "
          f"{args.cpus} CPUs; medians of {args.repeat}")  # fmt: skip
    print("start-up step                      seconds (each repetition)")
    for k, vs in steps.items():
        shown = " ".join(f"{v:.2f}" for v in vs)
        if k.startswith("idle"):
            print(f"  {k:<33} {statistics.median(vs) * 100:5.1f} % ({shown})")
        else:
            print(f"  {k:<33} {statistics.median(vs):5.2f} s ({shown})")
    total = sum(statistics.median(steps[k]) for k in steps if not k.startswith(("idle", "warm")))
    print(f"  {'start-up before the first run':<33} {total:5.2f} s")
    print(f"  {'idle, rsilab executor open':<33} {polling * 100:5.1f} % (Ray and this process)")
    print(f"checkout shipped per run: {ship['payload bytes'] / 1024:.1f} KiB, "
          f"put+get {ship['put+get'] * 1000:.1f} ms")  # fmt: skip
    local, onray = statistics.median(walls["local"]), statistics.median(walls["ray"])
    print(f"toy run ({args.steps} steps), {args.workers} at once, slot-seconds per run: local {local:.2f} s, "
          f"ray {onray:.2f} s: ray adds {onray - local:+.2f} s per run "
          f"(local {' '.join(f'{v:.2f}' for v in walls['local'])}; "
          f"ray {' '.join(f'{v:.2f}' for v in walls['ray'])})")  # fmt: skip


if __name__ == "__main__":
    main()
