"""Faults of the machine, not of the research: a full disk, a crashing evaluator, a worktree
deleted under the supervisor, a damaged ledger, two processes opening a new ledger.

Each must end as a recorded result or a one-line error that says how to recover, never
as a lost or half-recorded experiment; `rsilab.record.audit` checks git and the ledger after.
A full disk is real here: RLIMIT_FSIZE makes the kernel refuse a write past the limit
(EFBIG, as ENOSPC would), for the supervisor and every process it starts.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from loop_helpers import (
    TOY_TRAIN,
    make_ws,
    queue_knobs,
    queue_patch,
    start_rsilab,
    supervise,
    wait_for,
)

from rsilab.config import resolve_task_dir
from rsilab.errors import RsilabError
from rsilab.record.audit import audit
from rsilab.record.ledger import Ledger
from rsilab.workspace import init_workspace, open_workspace

LIMIT = 4 << 20  # bytes any one file may grow to under the simulated full disk
# Fewer runs per experiment: these tests are about faults, not about judging.
QUICK = (("judge.noise_runs", 2), ("judge.max_runs", 2))
QUICK_SETS = [arg for key, value in QUICK for arg in ("--set", f"{key}={value}")]
JUDGED = ("keep", "discard")


def _clean(ws_dir: Path) -> Ledger:
    """The workspace after the supervisor stopped: everything decided, audit clean."""
    ws = open_workspace(ws_dir)
    ledger = Ledger(ws.ledger_path)
    found = audit(ws, ledger)
    assert found.problems == []
    assert all(e.decided for e in ledger.experiments())
    return ledger


def _run_limited(ws_dir: Path, cwd: Path, limit: int) -> subprocess.CompletedProcess[str]:
    """`rsilab run` with every file it or its children write capped at `limit` bytes."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rsilab.cli",
            "run",
            str(ws_dir),
            "--proposer",
            "queue",
            *QUICK_SETS,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        preexec_fn=cap,
    )


def _one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


# -- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_in_a_run_is_a_crash_with_its_reason_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    ws_dir = make_ws(tmp_path)
    big = "(harness.artifact_dir() / 'ballast.bin').write_bytes(bytes(8 << 20))\nnp.save("
    queue_patch(ws_dir, "a-artifact", TOY_TRAIN, "np.save(", big)
    queue_patch(
        ws_dir, "b-log", TOY_TRAIN, "rng = np.random", "print('x' * (8 << 20))\nrng = np.random"
    )
    queue_knobs(ws_dir, "c", "less weight decay", L2=0.01)
    out = _run_limited(ws_dir, tmp_path, LIMIT)
    assert out.returncode == 0, out.stdout + out.stderr
    ledger = _clean(ws_dir)
    exps = ledger.experiments()
    assert [e.status for e in exps][:3] == ["keep", "crash", "crash"] and exps[3].status in JUDGED
    assert "File too large" in exps[1].reason  # the artifact write failed, and says so
    log_run = ledger.runs(exps[2].id)[0]
    assert os.path.getsize(log_run.log_path) <= LIMIT  # the log stopped at the full disk
    assert len(log_run.log_tail) < 10_000  # and a 4 MB line did not go into the ledger


def test_a_full_disk_under_the_ledger_stops_with_one_line_and_a_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    ws_dir = make_ws(tmp_path)
    for i, l2 in enumerate([0.05, 0.01]):
        queue_knobs(ws_dir, f"k{i}", f"L2 {l2}", L2=l2)
    proc = start_rsilab("run", str(ws_dir), "--proposer", "queue", *QUICK_SETS, cwd=tmp_path)
    ledger_path = ws_dir / ".rsilab" / "ledger.db"
    wal = ledger_path.with_name("ledger.db-wal")

    def baseline_decided() -> bool:
        if not ledger_path.exists():
            return False
        with Ledger(ledger_path) as ledger:
            exps = ledger.experiments()
            return bool(exps) and exps[0].decided

    wait_for(baseline_decided, proc=proc)
    # From now on no file of the supervisor may grow: the ledger's next write finds the disk full.
    size = wal.stat().st_size
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size, size))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, output
    last = output.strip().splitlines()[-1]
    assert "Traceback" not in output, output
    assert last.startswith("rsilab: ") and ("disk" in last or "too large" in last.lower()), last
    before = {e.id: e for e in Ledger(ledger_path).experiments()}
    # With space again, a plain restart recovers and finishes the queue.
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "run", str(ws_dir), "--proposer", "queue"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ledger = _clean(ws_dir)
    after = {e.id: e for e in ledger.experiments()}
    assert all(
        after[i].commit == e.commit and (not e.decided or after[i].status == e.status)
        for i, e in before.items()
    )  # nothing recorded before the fault is lost or changed
    done = sorted(
        e.description
        for e in after.values()
        if e.kind == "candidate" and e.status in ("keep", "discard")
    )
    assert done == ["L2 0.01", "L2 0.05"]


# -- the evaluator crashes -----------------------------------------------------------------


def _task_with_fragile_evaluator(tmp_path: Path) -> Path:
    """The toy task whose evaluator raises on an artifact holding `boom`, and dies of a
    signal on one holding `segv` (a candidate decides which, by what it saves)."""
    task = tmp_path / "task"
    shutil.copytree(resolve_task_dir("toy"), task, ignore=shutil.ignore_patterns("__pycache__"))
    src = (task / "evaluate.py").read_text()
    hook = (
        "if (args.artifact / 'boom').exists():\n"
        "    raise RuntimeError('evaluator blew up on this artifact')\n"
        "if (args.artifact / 'segv').exists():\n"
        "    import signal\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n"
        "w = np.load("
    )
    assert "w = np.load(" in src
    (task / "evaluate.py").write_text(src.replace("w = np.load(", hook, 1))
    return task


def test_an_evaluator_crash_is_a_crash_with_its_reason_and_the_loop_goes_on(tmp_path: Path) -> None:
    init_workspace(tmp_path / "ws", _task_with_fragile_evaluator(tmp_path), "t")
    ws_dir = tmp_path / "ws"
    for name in ("boom", "segv"):
        queue_patch(
            ws_dir,
            f"a-{name}",
            TOY_TRAIN,
            "np.save(",
            f"(harness.artifact_dir() / {name!r}).write_text('x')\nnp.save(",
        )
    queue_knobs(ws_dir, "c", "less weight decay", L2=0.01)
    reason, ledger = supervise(ws_dir, *QUICK)
    assert "nothing left to propose" in reason
    exps = ledger.experiments()
    assert [e.status for e in exps][:3] == ["keep", "crash", "crash"] and exps[3].status in JUDGED
    assert (
        "evaluator failed" in exps[1].reason
        and "evaluator blew up on this artifact" in exps[1].reason
    )
    assert "evaluator failed" in exps[2].reason
    assert "RuntimeError" in ledger.runs(exps[1].id)[0].log_tail  # the evaluator's own log
    _clean(ws_dir)


# -- the worktree is deleted under a running experiment ------------------------------------


def test_a_worktree_deleted_mid_run_ends_that_experiment_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    ws_dir = make_ws(tmp_path)
    # The run marks its run folder (a sandbox may hide everything else), then waits (polling,
    # with a timeout) for the test's go in the same folder.
    wait = (
        "import time\nhere = harness.artifact_dir().parent\n(here / 'started').write_text('x')\n"
        "t = time.time()\nwhile not (here / 'go').exists() and time.time() - t < 30:\n"
        "    time.sleep(0.02)\nrng = np.random"
    )
    queue_patch(ws_dir, "a-wait", TOY_TRAIN, "rng = np.random", wait)
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    proc = start_rsilab("run", str(ws_dir), "--proposer", "queue", *QUICK_SETS, cwd=tmp_path)
    wait_for(lambda: list(ws_dir.glob(".rsilab/runs/exp-0002/run-0/started")), proc=proc)
    (worktree,) = (ws_dir / ".rsilab" / "worktrees").iterdir()
    shutil.rmtree(worktree)
    (ws_dir / ".rsilab" / "runs" / "exp-0002" / "run-0" / "go").write_text("x")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    ledger = _clean(ws_dir)
    exps = ledger.experiments()
    assert exps[1].description == "a wait" and exps[1].status in ("crash", "interrupted"), exps[1]
    assert exps[2].description == "less weight decay" and exps[2].status in JUDGED


# -- a damaged ledger ----------------------------------------------------------------------


def _damage(ledger_path: Path, table: str) -> None:
    """Write garbage over the root page of `table` (all of its rows, for a small ledger)."""
    with Ledger(ledger_path) as ledger:  # the last connection to close folds the WAL in
        del ledger
    db = sqlite3.connect(ledger_path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    assert (
        not ledger_path.with_name("ledger.db-wal").exists()
        or ledger_path.with_name("ledger.db-wal").stat().st_size == 0
    )
    with open(ledger_path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes(range(256)) * (page_size // 256))


def test_a_corrupt_ledger_page_is_reported_with_how_to_recover(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    supervise(ws_dir, ("judge.noise_runs", 1))[1].close()  # a baseline: an experiment and its run
    ledger_path = ws_dir / ".rsilab" / "ledger.db"
    _damage(ledger_path, "runs")
    with pytest.raises(RsilabError, match="ledger is corrupt") as info:
        Ledger(ledger_path)
    assert ".recover" in str(info.value) and "\n" not in str(info.value)
    for command in ("status", "audit", "run"):  # never silently ignored, whoever opens it
        out = subprocess.run(
            [sys.executable, "-m", "rsilab.cli", command, str(ws_dir)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert "ledger is corrupt" in _one_line_error(out), command


def test_a_ledger_whose_first_page_is_garbage_is_reported_too(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with open(path, "r+b") as f:
        f.write(b"not a database at all" * 10)
    with pytest.raises(RsilabError, match="corrupt"):
        Ledger(path)


# -- two processes open a new ledger at once -----------------------------------------------


def test_opening_a_new_ledger_waits_for_another_process_instead_of_failing(tmp_path: Path) -> None:
    """The root cause of a flaky kill -9 test: the test's poller and the supervisor both
    opened the brand-new ledger; switching it to WAL, one of them failed at once with
    "database is locked" (SQLite skips the busy handler there), and a supervisor that
    died of it never reached the decisions the test waited for."""
    path = tmp_path / "ledger.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing the new file
    releaser = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    releaser.start()
    try:
        with Ledger(path) as ledger:  # without the retry: OperationalError at once
            assert ledger.experiments() == []
    finally:
        releaser.join()
        other.close()
