"""The "ray" executor: each run a Ray task on a cluster. Owns: shipping a run to a node and back.

The only module of rsilab that imports ray (an optional extra: `pip install 'rsilab[ray]'`),
and only when a `RayExecutor` is built, so registering it costs nothing.

A run becomes one Ray task with the task's resource request: `num_gpus=1` when the
cluster has GPUs (Ray then sets `CUDA_VISIBLE_DEVICES` for it), else `num_cpus=threads`.
A GPU run starts its sealed evaluator with training (GPU nodes have cores to spare); a CPU
run does not, since Ray packs CPU tasks onto every core it has.
Ray retries it (`max_retries`) when its worker process or node is lost; `cancel` is
`ray.cancel` (the task's KeyboardInterrupt makes the run worker kill its processes; a
forced cancel follows after a grace). The supervisor stays on the head node.

On the node, the task materialises the checkout it was sent (every file of the worktree:
the candidate's editable files and the frozen task) in a temporary folder, prepares the
task's data once per node (`rsilab.data.prepare` is cached on disk and hash-checked; a
file lock keeps two tasks of one node from building it twice), and runs the very worker
the local executor uses (`python -m rsilab.run.executors.local`: the runner, its sandbox and
the evaluator). While it runs, the task reports its node and streams the train log to the
head through a small Ray queue; at the end it returns the RunResult with train.log,
eval.log and metrics.json, which the head writes into the run's folder byte for byte (the
audit checks metrics.json against the sha256 in the ledger). The model artifact stays on
the node and is deleted with the temporary folder.

Not covered: starting a cluster (`ray start`, KubeRay...), installing rsilab on the nodes
(every node needs the same rsilab as the head), and local data sources on nodes without
the path (a shared filesystem is needed for those; `shakespeare` and `hf:` work anywhere).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab.config import TaskSpec
from rsilab.errors import ConfigError
from rsilab.fsio import open_regular, read_regular
from rsilab.notify import Notify, silent
from rsilab.results import RunResult, Status
from rsilab.run.executors.base import RunFuture, RunRequest, register

GRACE_SECONDS = 10.0  # after a polite cancel, how long before a forced one
STREAM_SECONDS = 1.0  # how often a node sends new train-log bytes to the head
SHIPPED_LOGS = ("train.log", "eval.log", "metrics.json")
MAX_SHIPPED_BYTES = 64 * 2**20  # a checkout larger than this is not sent


@dataclass
class _RayRun:
    request: RunRequest
    future: RunFuture
    ref: Any = None  # ray.ObjectRef
    node: str = ""
    starts: int = 0  # "start" messages from nodes: more than one means Ray retried it
    cancelled: bool = False


@register("ray")
class RayExecutor:
    """Runs as Ray tasks (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        task: TaskSpec,
        workers: int | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        gpus_per_run: float | None = None,
        max_retries: int = 3,
        notify: Notify | None = None,
    ) -> None:
        """`notify` is told each start-up step as it begins and how long it took: starting
        Ray takes seconds (see benchmarks/ray_overhead.py), and a person should not wonder."""
        tell = notify or silent
        began = time.monotonic()
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'rsilab[ray]'") from None
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            if address:
                tell(f"ray: connecting to the cluster at {address} ...")
                ray.init(address=address, log_to_driver=False)
            else:  # a local Ray on this machine
                tell("ray: starting a local Ray (its GCS and raylet processes; seconds) ...")
                cpus = (
                    num_cpus
                    if num_cpus is not None
                    else (workers * task.threads if workers else None)
                )
                ray.init(
                    num_cpus=cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False
                )
            self._owns_ray = True
            tell(f"ray: up after {time.monotonic() - began:.1f} s")
        resources = ray.cluster_resources()
        self.gpus_per_run = float(
            gpus_per_run if gpus_per_run is not None else (1 if resources.get("GPU", 0) >= 1 else 0)
        )
        if self.gpus_per_run:
            capacity = int(resources.get("GPU", 0) // self.gpus_per_run)
        else:
            capacity = int(resources.get("CPU", 1) // task.threads)
        self._slots = workers or max(1, capacity)
        self.threads = task.threads
        self.max_retries = max_retries
        self._runs: dict[RunFuture, _RayRun] = {}
        self._by_key: dict[str, _RayRun] = {}
        self._lock = threading.Lock()
        # Nodes report where a run started and stream its log through this queue (an actor).
        tell("ray: starting the log channel (a Ray actor: one worker process) ...")
        self._channel = Queue(actor_options={"num_cpus": 0})
        self._channel.size()  # waits for the actor: its start is paid here, not by a run
        tell(
            f"ray: ready after {time.monotonic() - began:.1f} s; each run's first start on a "
            "worker also imports rsilab (and the task's libraries) there"
        )
        self._closed = threading.Event()
        threading.Thread(target=self._drain, daemon=True, name="rsilab-ray-channel").start()

    @property
    def slots(self) -> int:
        return self._slots

    def describe(self) -> str:
        res = self._ray.cluster_resources()
        unit = f"{self.gpus_per_run:g} GPU" if self.gpus_per_run else f"{self.threads} CPU"
        return (
            f"ray, {self._slots} slot(s) ({unit} per run; cluster: {res.get('CPU', 0):g} CPU, "
            f"{res.get('GPU', 0):g} GPU, {len(self._ray.nodes())} node(s))"
        )

    def submit(self, request: RunRequest) -> RunFuture:
        future: RunFuture = RunFuture()
        run = _RayRun(request, future)
        with self._lock:
            self._runs[future] = run
            self._by_key[request.key] = run
        try:
            payload = _payload(request)
        except (OSError, ValueError) as e:
            self._finish(
                run,
                RunResult(
                    Status.CRASH, request.seed, reason=f"crash: cannot ship the checkout: {e}"
                ),
            )
            return future
        remote = self._ray.remote(_node_run).options(
            num_cpus=1 if self.gpus_per_run else self.threads,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
            name=f"rsilab {request.key}",
        )
        run.ref = remote.remote(payload, self._channel)
        threading.Thread(
            target=self._collect, args=(run,), daemon=True, name=f"rsilab-ray {request.key}"
        ).start()
        return future

    def cancel(self, future: RunFuture) -> None:
        run = self._runs.get(future)
        if run is None or run.ref is None:
            return
        run.cancelled = True
        with contextlib.suppress(Exception):
            self._ray.cancel(run.ref, force=False)  # KeyboardInterrupt in the task: it cleans up

        def force() -> None:
            if not future.done():
                with contextlib.suppress(Exception):
                    self._ray.cancel(run.ref, force=True)

        timer = threading.Timer(GRACE_SECONDS, force)
        timer.daemon = True
        timer.start()

    def where(self, future: RunFuture) -> str:
        run = self._runs.get(future)
        return run.node if run is not None and run.node else "ray: pending"

    def close(self) -> None:
        for future in list(self._runs):
            self.cancel(future)
        deadline = time.monotonic() + GRACE_SECONDS + 5
        for future in list(self._runs):
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.1, deadline - time.monotonic()))
        self._closed.set()
        with contextlib.suppress(Exception):
            self._channel.shutdown()
        if self._owns_ray:
            self._ray.shutdown()

    # ---- the head's side --------------------------------------------------------------
    def _collect(self, run: _RayRun) -> None:
        from ray.exceptions import RayError, TaskCancelledError

        req = run.request
        try:
            out = self._ray.get(run.ref)
            with self._lock:  # no streamed log chunk may land after the final logs
                self._by_key.pop(req.key, None)
            retried = f"--- rsilab: retried {run.starts - 1} time(s): a Ray worker was lost ---\n"
            result = _land(req, out, retried if run.starts > 1 else "")
            run.node = str(out.get("node", run.node))
        except TaskCancelledError:
            result = _interrupted(req)
        except RayError as e:  # worker or node lost beyond the retries, an error in the task
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            result = (
                _interrupted(req)
                if run.cancelled
                else RunResult(
                    Status.CRASH,
                    req.seed,
                    reason=f"crash: ray: {first[:200]}",
                    log_tail=str(e)[-4000:],
                )
            )
        except Exception as e:  # a bug here must not leave the supervisor waiting forever
            result = RunResult(Status.CRASH, req.seed, reason=f"crash: ray executor: {e!r}")
        self._finish(run, result)

    def _finish(self, run: _RayRun, result: RunResult) -> None:
        with self._lock:
            self._runs.pop(run.future, None)
            self._by_key.pop(run.request.key, None)
        run.future.set_result(result)

    def _drain(self) -> None:
        """Messages from the nodes: ("start", key, node) and ("log", key, bytes)."""
        from ray.util.queue import Empty

        while not self._closed.is_set():
            try:
                message = self._channel.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue actor is gone (shutdown)
                return
            kind, key, *rest = message
            with self._lock, contextlib.suppress(OSError):
                run = self._by_key.get(key)
                if run is None:
                    continue
                log = run.request.run_dir / "train.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                if kind == "start":
                    run.node, run.starts = str(rest[0]), run.starts + 1
                    # A retried run starts its log again; say why, for the person reading it.
                    note = f"--- rsilab: retried on {rest[0]} (a Ray worker was lost) ---\n"
                    log.write_text(note if run.starts > 1 else "")
                elif kind == "log":
                    with open(log, "ab") as f:
                        f.write(rest[0])


def _interrupted(req: RunRequest) -> RunResult:
    return RunResult(Status.INTERRUPTED, req.seed, reason="interrupted: the run was cancelled")


def _payload(req: RunRequest) -> dict[str, Any]:
    """What a node needs: the checkout's files (bytes) and the request without head paths."""
    files: dict[str, bytes] = {}
    total = 0
    root = Path(req.workdir)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (
            rel.parts[0] == ".git"
            or "__pycache__" in rel.parts
            or not path.is_file()
            or path.is_symlink()
        ):
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_SHIPPED_BYTES:
            raise ValueError(f"{root} holds over {MAX_SHIPPED_BYTES >> 20} MiB")
        files[rel.as_posix()] = data
    return {
        "key": req.key,
        "files": files,
        "request": dataclasses.replace(
            req, workdir=Path("."), run_dir=Path("."), train_data=None, val_data=None
        ),
    }


def _land(req: RunRequest, out: dict[str, Any], note: str = "") -> RunResult:
    """Write what the node returned into the run's folder; the result, pointing there."""
    req.run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in out.get("logs", {}).items():
        if name in SHIPPED_LOGS:
            prefix = note.encode() if name == "train.log" else b""
            (req.run_dir / name).write_bytes(prefix + data)
    result = out["result"]
    assert isinstance(result, RunResult)
    return dataclasses.replace(result, log_path=str(req.run_dir / "train.log"))


# -- the node's side ------------------------------------------------------------------------

_prepared: dict[str, tuple[Path | None, Path | None]] = {}  # per worker process


def _node_data(task: TaskSpec) -> tuple[Path | None, Path | None]:
    """The task's data on this node: prepared once (cached on disk, hash-checked)."""
    if task.data == "none":
        return None, None
    if task.data not in _prepared:
        import fcntl

        from rsilab import paths
        from rsilab.data import prepare

        lock = paths.data_dir() / ".prepare.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # two tasks of one node never build it twice
            d = prepare(task.data)
        _prepared[task.data] = (d.train_path, d.val_path)
    return _prepared[task.data]


def _send(channel: Any, message: tuple[Any, ...]) -> None:
    with contextlib.suppress(Exception):  # the head's view is a convenience, never a failure
        channel.put_nowait(message)


def _node_run(payload: dict[str, Any], channel: Any) -> dict[str, Any]:
    """The Ray task: materialise the checkout, run the worker, return result and logs."""
    import ray

    key = payload["key"]
    req: RunRequest = payload["request"]
    node = ray.util.get_node_ip_address()
    gpus = ray.get_gpu_ids()
    where = node + (f"/gpu{','.join(str(g) for g in gpus)}" if gpus else "")
    with tempfile.TemporaryDirectory(prefix="rsilab-ray-") as tmp:
        work, run_dir = Path(tmp) / "work", Path(tmp) / "run"
        for rel, data in payload["files"].items():
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        run_dir.mkdir()
        _send(channel, ("start", key, where))
        try:
            train, val = _node_data(req.task)
        except Exception as e:  # e.g. a local data path this node does not have
            result = RunResult(Status.CRASH, req.seed, reason=f"crash: no data on node {node}: {e}")
            return {"result": result, "logs": {}, "node": where}
        local = dataclasses.replace(
            req,
            workdir=work,
            run_dir=run_dir,
            train_data=train,
            val_data=val,
            prestart_eval=bool(gpus) if req.prestart_eval is None else req.prestart_eval,
        )
        result = _run_worker(local, Path(tmp), channel, key)
        # Never through a link the run left in its folder (read_regular), as on the head.
        shipped = {name: read_regular(run_dir / name) for name in SHIPPED_LOGS}
        logs = {name: data for name, data in shipped.items() if data is not None}
        return {"result": result, "logs": logs, "node": where}


def _run_worker(req: RunRequest, tmp: Path, channel: Any, key: str) -> RunResult:
    """The local executor's worker process, with the train log streamed to the head."""
    env = {**os.environ, **req.env, "RSILAB_WORKER_PARENT": str(os.getpid())}
    out_path, err_path = tmp / "worker.out", tmp / "worker.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rsilab.run.executors.local"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(req))
    proc.stdin.close()
    log, sent = req.run_dir / "train.log", 0
    try:
        while True:
            try:
                proc.wait(timeout=STREAM_SECONDS)
                done = True
            except subprocess.TimeoutExpired:
                done = False
            with contextlib.suppress(OSError):
                with os.fdopen(open_regular(log), "rb") as f:  # no link the run planted
                    f.seek(sent)
                    data = f.read()
                if data:
                    _send(channel, ("log", key, data))
                    sent += len(data)
            if done:
                break
    except BaseException:  # ray.cancel: the worker's runner kills the run's processes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    if proc.returncode == 0:
        with contextlib.suppress(Exception):
            result = pickle.loads(out_path.read_bytes())
            if isinstance(result, RunResult):
                return result
    text = err_path.read_text(errors="replace")
    last = (text.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return RunResult(
        Status.CRASH,
        req.seed,
        reason=f"crash: the run's worker process failed: {last[:200]}",
        log_tail=text[-4000:],
    )
