"""Red team: a second supervisor on a busy workspace. Started while the first one has an
experiment in flight, a second `rsilab run` (or `rsilab baseline`, or a Supervisor from
Python) would declare that experiment interrupted, delete its live worktree, run a
second baseline and duplicate experiments. Caught: it is refused in one line (exit 2,
naming the holder) before it touches anything; the first one's worktree, ledger and branch
are as they were; `status` and `audit --live` keep working beside it; and after the first
is killed with SIGKILL the lock it left is recovered by the next `rsilab run`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redteam_lab import row

from rsilab.errors import WorkspaceError
from rsilab.loop.supervisor import Supervisor
from rsilab.paths import bundled_tasks_dir
from rsilab.record.ledger import Ledger
from rsilab.run.bench import Bench
from rsilab.workspace import Workspace, init_workspace

CLASS = "two supervisors on one workspace"
RUN = ["run", "--task", "toy", "--proposer", "tuner", "--preset", "cpu"]


def rsilab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsilab.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(what: str, ready: Callable[[], bool], deadline_s: float = 90.0) -> None:
    """Poll `ready` until it holds; fail the test after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def live_worktrees(ws: Path) -> list[str]:
    folder = ws / ".rsilab" / "worktrees"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def state(ws: Path) -> tuple[list[tuple[object, ...]], int, str]:
    """The experiments (id, status, commit), the number of runs and the research branch tip."""
    with Ledger(ws / ".rsilab" / "ledger.db") as ledger:
        exps = [(e.id, e.kind, e.commit) for e in ledger.experiments()]
        runs = len(ledger.runs())
    tip = subprocess.run(
        ["git", "rev-parse", "rsilab/rt"], cwd=ws, capture_output=True, text=True
    ).stdout
    return exps, runs, tip


@pytest.fixture()
def busy(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes], dict[str, str]]]:
    """A toy workspace with a supervisor (a real `rsilab run`) working on it, stopped with
    an experiment's worktree live: SIGSTOP freezes it there, so what the second one sees
    cannot move under the test."""
    env = {**os.environ, "RSILAB_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    ws = tmp_path / "ws"
    init_workspace(ws, bundled_tasks_dir() / "toy", "rt")
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "rsilab.cli", RUN[0], str(ws), *RUN[1:]]
            + ["--set", "budget=2", "--max-experiments", "50"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for("an experiment in flight", lambda: bool(live_worktrees(ws)))
        first.send_signal(signal.SIGSTOP)
        yield ws, first, env
    finally:
        first.kill()
        first.wait()


def test_second_supervisor_is_refused_and_changes_nothing(
    busy: tuple[Path, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    ws, first, env = busy
    before, worktrees = state(ws), live_worktrees(ws)
    # --max-experiments 1: without the lock it would recover, run a baseline and stop.
    second = rsilab(RUN[0], str(ws), *RUN[1:], "--max-experiments", "1", env=env)
    baseline = rsilab("baseline", str(ws), "--task", "toy", "--preset", "cpu", env=env)
    with Ledger(ws / ".rsilab" / "ledger.db") as ledger:
        workspace = Workspace(ws, "rt")
        with pytest.raises(WorkspaceError, match="another supervisor"):
            Supervisor(workspace, ledger, Bench(workspace.load_task()), []).run()
    after = state(ws)
    status = rsilab("status", str(ws), env=env)
    audit = rsilab("audit", "--live", str(ws), env=env)
    message = second.stderr.strip()
    refused = (
        second.returncode == 2
        and baseline.returncode == 2
        and len(message.splitlines()) == 1
        and f"pid {first.pid}" in message
        and second.stdout == ""
    )
    unchanged = after == before and live_worktrees(ws) == worktrees
    row(
        CLASS,
        "refused in one line (exit 2, names the holder); nothing changed",
        (f"refused: exit {second.returncode}: {message}" if refused else f"NOT refused: {second}")
        + ("" if unchanged else "; THE WORKSPACE CHANGED"),
        refused and unchanged,
    )
    assert second.returncode == 2, second
    assert len(message.splitlines()) == 1 and "another supervisor" in message, message
    assert f"pid {first.pid}" in message and "since" in message, message
    assert second.stdout == "", second.stdout  # refused before printing anything else
    assert baseline.returncode == 2 and "another supervisor" in baseline.stderr, baseline
    assert after == before, "the second supervisor changed the ledger or the branch"
    assert live_worktrees(ws) == worktrees, "the live worktree was touched"
    assert status.returncode == 0 and "running" in status.stdout, status
    assert audit.returncode == 0, audit


def test_lock_left_by_kill_9_is_recovered(
    busy: tuple[Path, subprocess.Popen[bytes], dict[str, str]],
) -> None:
    ws, first, env = busy
    first.kill()  # SIGKILL: no cleanup at all
    first.wait()
    restart = rsilab(RUN[0], str(ws), *RUN[1:], "--max-experiments", "0", env=env)
    audit = rsilab("audit", str(ws), env=env)
    row(
        f"{CLASS}: lock left by kill -9",
        "the next run takes it over and recovers; audit ok",
        f"exit {restart.returncode}; audit exit {audit.returncode}",
        restart.returncode == 0 and audit.returncode == 0,
    )
    assert restart.returncode == 0, restart
    assert "interrupted" in restart.stdout, restart.stdout
    assert audit.returncode == 0, audit
    assert live_worktrees(ws) == []


def test_two_first_runs_on_one_new_folder_make_one_workspace(tmp_path: Path) -> None:
    """Both create it at once: one creates it and works, the other waits for the creation
    and is refused (or, if the first was done by then, finds its baseline)."""
    env = {**os.environ, "RSILAB_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    ws = tmp_path / "new"
    cmd = [sys.executable, "-m", "rsilab.cli", RUN[0], str(ws), *RUN[1:]]
    cmd += ["--tag", "rt", "--set", "budget=2", "--max-experiments", "0"]
    both = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    said = [p.communicate(timeout=300) for p in both]
    codes = sorted(p.returncode for p in both)
    audit = rsilab("audit", str(ws), env=env)
    exps, _, _ = state(ws)
    refusals = [err for p, (_, err) in zip(both, said, strict=True) if p.returncode == 2]
    ok = (
        codes in ([0, 2], [0, 0])
        and all("another supervisor" in err for err in refusals)
        and [kind for _, kind, _ in exps] == ["baseline"]
        and audit.returncode == 0
    )
    row(
        f"{CLASS}: two first runs on one new folder",
        "one workspace, one baseline; the other refused (exit 2) or resumed",
        f"exits {codes}; experiments {[kind for _, kind, _ in exps]}; audit exit {audit.returncode}",
        ok,
    )
    assert codes in ([0, 2], [0, 0]), said
    assert all("another supervisor" in err for err in refusals), refusals
    assert [kind for _, kind, _ in exps] == ["baseline"], exps
    assert audit.returncode == 0, audit
