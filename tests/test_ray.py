"""The Ray executor on a real local Ray (`ray.init(num_cpus=2)` with two fake GPUs): runs
complete, a killed Ray worker is retried, a stop cancels the runs in flight, and the ledger
has the same shape as with the local executor."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loop_helpers import assert_consistent, make_shifted_ws, overlap, queue_patch, spans, wait_for

from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.record.ledger import Ledger
from rsilab.run.bench import Bench
from rsilab.run.executors import create as create_executor
from rsilab.workspace import open_workspace

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (the optional extra: pip install 'rsilab[ray]')"
)

FAST = [("judge.noise_runs", 2), ("judge.max_runs", 2)]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # Two CPUs and two fake GPUs: Ray only counts GPUs, so each run gets one "GPU" and its
    # own CUDA_VISIBLE_DEVICES, as on a real GPU node.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def supervise(
    ws_dir: Path,
    executor_name: str,
    *,
    workers: int | None,
    overrides: list[tuple[str, Any]],
    on_start: Any = None,
) -> tuple[str, Ledger]:
    ws = open_workspace(ws_dir)
    task = ws.load_task(overrides)
    ledger = Ledger(ws.ledger_path)
    executor = create_executor(executor_name, task=task, workers=workers)
    sup = Supervisor(
        ws, ledger, Bench(task, executor=executor), [create("queue", queue_dir=ws.queue_dir)]
    )
    if on_start is not None:
        threading.Thread(target=on_start, args=(sup,), daemon=True).start()
    try:
        return sup.run(), ledger
    finally:
        executor.close()


def shape(ledger: Ledger) -> list[Any]:
    """Everything that must not depend on where runs execute (not times, paths, nodes)."""
    return [
        [
            (e.kind, e.proposer, e.description, e.status, e.metric, e.parent is None)
            for e in ledger.experiments()
        ],
        [(r.experiment_id, r.kind, r.status, r.seed, r.metric) for r in ledger.runs()],
        ledger.lineage(),
    ]


def test_ray_runs_complete_and_the_ledger_matches_the_local_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledgers = {}
    for name in ("local", "ray"):
        # Each session its own RSILAB_HOME: the second would otherwise start from the noise
        # prior the first one's baseline carried (a 1-run baseline), not from the same state.
        monkeypatch.setenv("RSILAB_HOME", str(tmp_path / f"home-{name}"))
        ws_dir = make_shifted_ws(tmp_path / name, work=0.0)
        queue_patch(ws_dir, "a-fix-weight-0", "train.py", "SHIFT_A = 0.5 ", "SHIFT_A = 0.0 ")
        queue_patch(
            ws_dir, "b-worse-weight-1", "train.py", "w[1] += SHIFT_B", "w[1] += 2 * SHIFT_B"
        )
        _, ledgers[name] = supervise(ws_dir, name, workers=1, overrides=FAST)
        assert_consistent(ws_dir)
    assert shape(ledgers["ray"]) == shape(ledgers["local"])
    assert [e.status for e in ledgers["ray"].experiments()] == ["keep", "keep", "discard"]
    # The node's logs and the evaluator's own metrics file came back into the run folders.
    for r in ledgers["ray"].runs():
        folder = Path(r.log_path).parent
        assert (
            (folder / "train.log")
            .read_text()
            .rstrip()
            .endswith(f"train_mse: {r.summary['train_mse']:.6f}")
        )
        assert '"val_loss"' in (folder / "metrics.json").read_text()
        assert "/.rsilab/runs/" in r.log_path


def test_two_runs_at_once_each_on_its_own_gpu(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=1.0)
    _, ledger = supervise(ws_dir, "ray", workers=None, overrides=FAST)  # a slot per (fake) GPU
    base = spans(ledger, 1)  # the baseline's two runs
    assert len(base) == 2 and overlap(base[0], base[1])
    nodes = {
        ev.data["run"]: ev.data["node"]
        for ev in ledger.events()
        if ev.kind == "run"
        and ev.data.get("experiment") == 1
        and "/gpu" in str(ev.data.get("node"))
    }
    assert sorted(node.rsplit("/gpu", 1)[1] for node in nodes.values()) == ["0", "1"]


def _ray_worker_of(pid: int) -> int:
    """The Ray worker process above `pid` (its cmdline starts with "ray::")."""
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if cmdline.startswith("ray::"):
            return pid
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    raise AssertionError("no Ray worker above the run")


def test_a_killed_ray_worker_is_retried(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.0)
    marker = tmp_path / "first-attempt"
    # The first attempt records its pid and hangs; the retry finds the marker and trains.
    queue_patch(
        ws_dir,
        "b-hang-once",
        "train.py",
        "time.sleep(WORK_SECONDS)",
        f"import os, pathlib\nm = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n    m.write_text(str(os.getpid()))\n    time.sleep(120)",
    )
    killed: list[int] = []

    def kill_its_worker(sup: Supervisor) -> None:
        wait_for(lambda: marker.is_file() and marker.read_text().strip(), timeout=120)
        worker = _ray_worker_of(int(marker.read_text()))
        os.kill(worker, signal.SIGKILL)
        killed.append(worker)

    t0 = time.monotonic()
    # No sandbox here: the hanging attempt and its retry share the marker outside their folders.
    _, ledger = supervise(
        ws_dir, "ray", workers=1, overrides=[*FAST, ("sandbox", "none")], on_start=kill_its_worker
    )
    assert killed and time.monotonic() - t0 < 100  # the hang (120 s) did not have to end
    hung = next(e for e in ledger.experiments() if e.description == "b hang once")
    runs = ledger.runs(hung.id)
    assert runs and all(r.ok for r in runs)  # the retry trained; the loss of a worker is no result
    assert Path(runs[0].log_path).read_text().startswith("--- rsilab: retried 1 time(s)")
    assert_consistent(ws_dir)


def test_a_stop_cancels_the_runs_in_flight_on_ray(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.0)
    marker = tmp_path / "running"
    queue_patch(
        ws_dir,
        "a-slow",
        "train.py",
        "time.sleep(WORK_SECONDS)",
        f"import os, pathlib\npathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\ntime.sleep(120)",
    )

    def stop_when_running(sup: Supervisor) -> None:
        wait_for(lambda: marker.is_file() and marker.read_text().strip(), timeout=120)
        sup.stop(now=True)

    t0 = time.monotonic()
    reason, ledger = supervise(
        ws_dir, "ray", workers=1, overrides=[*FAST, ("sandbox", "none")], on_start=stop_when_running
    )
    assert "cancelling the runs in flight" in reason and time.monotonic() - t0 < 100
    slow = ledger.experiments()[1]
    assert slow.status == "interrupted" and ledger.runs(slow.id) == []
    assert (
        ws_dir / ".rsilab" / "queue" / "a-slow.patch"
    ).is_file()  # back in line for the next run
    # The training process on the node is gone.
    wait_for(lambda: not Path(f"/proc/{marker.read_text().strip()}").exists(), timeout=20)


class _Counting:
    """An executor that counts what goes through it, and otherwise is the one it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.submitted = inner, 0
        self.name, self.slots = inner.name, inner.slots

    def submit(self, request: Any) -> Any:
        self.submitted += 1
        return self.inner.submit(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_score_runs_on_ray_through_the_bench(tmp_path: Path) -> None:
    """`rsilab score --executor ray`: every contender's run goes through the Ray executor."""
    from rsilab.config import resolve_task_dir
    from rsilab.studies.score import score_workspace
    from rsilab.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws", resolve_task_dir("toy"), "ray")
    task = ws.load_task()
    ray_executor = _Counting(create_executor("ray", task=task, workers=2))
    with Bench(task, executor=ray_executor, owns_executor=True) as bench:  # type: ignore[arg-type]
        report = score_workspace(ws, bench, seeds=2)
    arms = {a["name"]: a for a in report["arms"]}
    assert set(arms) == {"baseline", "ridge", "incumbent"}
    # The incumbent is the baseline's code: it shares its runs; baseline and reference ran.
    assert ray_executor.submitted == 2 * 2
    assert all(v is not None for a in arms.values() for v in a["results"])
