"""Several experiments at once on one machine: overlap, one lineage, no duplicates, conflicts.

The task is the "shifted" toy of loop_helpers (`make_shifted_ws`): two independent knobs,
SHIFT_A and SHIFT_B, each a clear win to fix, and every run's start and end time in its
summary, so overlap is read from the ledger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loop_helpers import (
    assert_consistent,
    make_shifted_ws,
    overlap,
    queue_knobs,
    queue_patch,
    spans,
    wait_for,
)

from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers import create
from rsilab.proposers.choice import parse_proposers
from rsilab.record.ledger import Ledger
from rsilab.run.bench import Bench
from rsilab.run.executors import create as create_executor
from rsilab.workspace import git, open_workspace


def supervise(
    ws_dir: Path,
    workers: int = 2,
    proposers: list[object] | None = None,
    max_experiments: int | None = None,
) -> Ledger:
    ws = open_workspace(ws_dir)
    task = ws.load_task()
    ledger = Ledger(ws.ledger_path)
    executor = create_executor("local", task=task, workers=workers)
    try:
        Supervisor(
            ws,
            ledger,
            Bench(task, executor=executor),
            proposers or [create("queue", queue_dir=ws.queue_dir)],
            limits=Limits(max_experiments=max_experiments),
        ).run()
    finally:
        executor.close()
    return ledger


def test_two_workers_run_at_once_and_merge_into_one_lineage(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path)
    queue_patch(ws_dir, "a-fix-weight-0", "train.py", "SHIFT_A = 0.5 ", "SHIFT_A = 0.0 ")  # a knob
    queue_patch(
        ws_dir, "b-fix-weight-1", "train.py", "w[1] += SHIFT_B", "w[1] += 0.0 * SHIFT_B"
    )  # code, far below
    ledger = supervise(ws_dir, workers=2)
    exps = ledger.experiments()
    # Both slots were busy at once: two baseline runs, then the two ideas' first runs.
    base = spans(ledger, 1)
    assert overlap(base[0], base[1])
    assert overlap(spans(ledger, 2)[0], spans(ledger, 3)[0])
    # Both ideas won against the baseline; the one decided first was kept, the other was
    # re-applied onto it (a git three-way merge) and confirmed there as a new experiment.
    assert len(exps) == 4 and exps[0].status == exps[3].status == "keep"
    assert sorted([exps[1].status, exps[2].status]) == ["discard", "keep"]
    kept, moved = sorted(exps[1:3], key=lambda e: e.status != "keep")
    merged = exps[3]
    assert kept.status == "keep" and moved.status == "discard"
    assert (
        moved.reason.startswith("re-applied: won against its parent #1")
        and f"#{merged.id}" in moved.reason
    )
    assert moved.effect is not None and moved.effect > 0.1
    assert merged.description == moved.description and merged.proposer == "queue"
    assert merged.meta["reapply_of"] == moved.id and merged.meta["merged_onto"] == kept.id
    assert merged.meta["merge"] == "git"  # a three-way merge (cherry-pick) did it
    assert merged.parent == kept.commit and merged.effect is not None and merged.effect > 0.1
    # The lineage graph: both ideas descend from the baseline; the merge from its idea, onto the first.
    graph = {row.experiment_id: (row.parent, row.merged_onto) for row in ledger.lineage()}
    assert graph == {
        1: (None, None),
        kept.id: (1, None),
        moved.id: (1, None),
        merged.id: (moved.id, kept.id),
    }
    # git agrees: the branch went baseline -> first idea -> merged second idea, fast-forward only.
    ws = open_workspace(ws_dir)
    assert ws.incumbent_commit() == merged.commit
    assert git(ws_dir, "rev-parse", f"{merged.commit}^").strip() == kept.commit
    final = git(ws_dir, "show", f"{merged.commit}:train.py")
    assert "SHIFT_A = 0.0 " in final and "w[1] += 0.0 * SHIFT_B" in final
    assert_consistent(ws_dir)


def test_wins_on_neighbouring_knobs_merge_at_the_knob_level(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.5)
    # SHIFT_A and SHIFT_B are declared on adjacent lines: git's merge calls that a conflict.
    queue_knobs(ws_dir, "a", "fix weight 0", SHIFT_A=0.0)
    queue_knobs(ws_dir, "b", "fix weight 1", SHIFT_B=0.0)
    ledger = supervise(ws_dir, workers=2)
    exps = ledger.experiments()
    assert len(exps) == 4 and exps[3].meta["merge"] == "knobs" and exps[3].status == "keep"
    assert exps[3].knobs in ({"SHIFT_A": 0.0}, {"SHIFT_B": 0.0})
    final = git(ws_dir, "show", f"{exps[3].commit}:train.py")
    assert "SHIFT_A = 0.0 " in final and "SHIFT_B = 0.0 " in final
    assert open_workspace(ws_dir).incumbent_commit() == exps[3].commit


def test_a_conflicting_winner_is_recorded_as_a_conflict(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.5)
    # Two fixes of the same line: whichever is kept first, the other no longer applies.
    queue_patch(ws_dir, "a-fix-weight-0", "train.py", "SHIFT_A = 0.5 ", "SHIFT_A = 0.0 ")
    queue_patch(ws_dir, "b-nearly-fix-weight-0", "train.py", "SHIFT_A = 0.5 ", "SHIFT_A = 0.1 ")
    ledger = supervise(ws_dir, workers=2)
    exps = ledger.experiments()
    assert len(exps) == 3  # no merged experiment was made
    kept, lost = sorted(exps[1:], key=lambda e: e.status != "keep")
    assert kept.status == "keep" and lost.status == "discard"
    assert lost.reason.startswith("conflict: won against its parent #1")
    assert f"onto the incumbent #{kept.id}" in lost.reason and "train.py" in lost.reason
    assert "the incumbent changed SHIFT_A too" in lost.reason  # no knob-level way round it either
    assert all(row.merged_onto is None for row in ledger.lineage())
    assert open_workspace(ws_dir).incumbent_commit() == kept.commit
    assert_consistent(ws_dir)


def test_duplicates_are_skipped_without_a_run(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.5)
    # A bad idea (a larger error), so the incumbent stays and the same patch still applies later.
    queue_patch(ws_dir, "1-worse-weight-1", "train.py", "SHIFT_B = 0.5 ", "SHIFT_B = 0.9 ")
    queue_patch(
        ws_dir, "2-worse-weight-1-again", "train.py", "SHIFT_B = 0.5 ", "SHIFT_B = 0.9 "
    )  # the same diff
    ledger = supervise(ws_dir, workers=2)  # the second is proposed while the first is in flight
    queue_patch(
        ws_dir, "3-worse-weight-1-once-more", "train.py", "SHIFT_B = 0.5 ", "SHIFT_B = 0.9 "
    )
    supervise(ws_dir, workers=2)  # the third after the first was tried (and discarded)
    exps = ledger.experiments()
    assert [(e.description, e.status) for e in exps] == [
        ("baseline", "keep"),
        ("worse weight 1", "discard"),
    ]
    dups = [ev for ev in ledger.events() if ev.kind == "duplicate"]
    assert [ev.data["description"] for ev in dups] == [
        "worse weight 1 again",
        "worse weight 1 once more",
    ]
    assert all(ev.data["same_as"] == exps[1].id for ev in dups)
    done = ws_dir / ".rsilab" / "queue" / "done"
    assert len(list(done.iterdir())) == 3  # retired, not lost and not run


def test_the_tuner_with_two_slots_never_repeats_itself(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.0)
    ws = open_workspace(ws_dir)
    tuner = create("tuner", seed=3)
    ledger = supervise(
        ws_dir,
        workers=2,
        proposers=[create("queue", queue_dir=ws.queue_dir), tuner],
        max_experiments=6,
    )
    tried = [
        e for e in ledger.experiments() if e.proposer == "tuner" and "reapply_of" not in e.meta
    ]
    assert len(tried) == 6
    settings = [tuple(sorted(e.knobs.items())) for e in tried]
    assert len(set(settings)) == len(settings)
    assert len({ws.trees([e.commit])[e.commit] for e in tried}) == len(tried)


def test_proposer_shares_parse() -> None:
    choices, follow = parse_proposers("llm@model-a:2,llm@model-b,tuner:1")
    assert [(c.label, c.share) for c in choices] == [
        ("llm@model-a", 2),
        ("llm@model-b", 1),
        ("tuner", 1),
    ]
    assert not follow
    assert parse_proposers("llm+tuner")[1] is True
    with pytest.raises(Exception, match="named twice"):
        parse_proposers("llm,llm")


def test_stop_now_cancels_the_runs_in_flight(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.0)
    queue_patch(
        ws_dir,
        "a-slow",
        "train.py",
        "time.sleep(WORK_SECONDS)",
        "(harness.artifact_dir() / 'started').write_text('x')\ntime.sleep(120)",
    )
    ws = open_workspace(ws_dir)
    task = ws.load_task()
    ledger = Ledger(ws.ledger_path)
    executor = create_executor("local", task=task, workers=2)
    sup = Supervisor(
        ws, ledger, Bench(task, executor=executor), [create("queue", queue_dir=ws.queue_dir)]
    )
    started = ws.run_dir(2, 0) / "artifact" / "started"
    seen: list[list[int]] = []

    def stop_when_running() -> None:
        wait_for(started.is_file, timeout=120)
        seen.append(_processes_in(ws.state))  # the run's processes (their cwd is its worktree)
        sup.stop(now=True)

    watcher = threading.Thread(target=stop_when_running, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    reason = sup.run()
    executor.close()
    assert "cancelling the runs in flight" in reason
    assert time.monotonic() - t0 < 100  # far less than the 120 s the run would take
    assert ledger.experiment(2).status == "interrupted"
    assert ledger.runs(2) == []  # a cancelled run is not a result
    assert seen[0]  # the run was running when the stop came
    assert not _processes_in(ws.state)  # and is gone: cancelling waited for it to end
    # The idea goes back into the queue for the next run.
    assert (ws_dir / ".rsilab" / "queue" / "a-slow.patch").is_file()
    assert git(ws_dir, "worktree", "list").count("\n") == 1


def _processes_in(folder: Path) -> list[int]:
    """Pids whose working directory is inside `folder` (the runs of a workspace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder) in os.readlink(entry / "cwd"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_kill_9_with_two_workers_then_resume(tmp_path: Path) -> None:
    ws_dir = make_shifted_ws(tmp_path, work=0.5)
    for i, value in enumerate([0.4, 0.3, 0.2, 0.1]):
        queue_knobs(ws_dir, f"k{i}", f"SHIFT_A {value}", SHIFT_A=value)
    cmd = [
        sys.executable,
        "-m",
        "rsilab.cli",
        "run",
        str(ws_dir),
        "--proposer",
        "queue",
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger_path = ws_dir / ".rsilab" / "ledger.db"

    def two_in_flight() -> bool:
        if not ledger_path.exists():
            return False
        with Ledger(ledger_path) as ledger:
            return sum(not e.decided for e in ledger.experiments()) >= 2

    wait_for(two_in_flight, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Every run of the dead supervisor dies with it.
    wait_for(lambda: not _processes_in(ws_dir / ".rsilab"), timeout=15)
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    ledger = assert_consistent(ws_dir)
    exps = ledger.experiments()
    assert sum(e.status == "interrupted" for e in exps) >= 2
    # Every idea reached one final decision; one cut short by the kill was run again.
    final = [
        e.description
        for e in exps[1:]
        if e.status in ("keep", "discard") and not e.reason.startswith("re-applied")
    ]
    assert sorted(final) == sorted(f"SHIFT_A {v}" for v in [0.4, 0.3, 0.2, 0.1])


def test_status_reads_the_runs_in_flight_from_the_ledger(tmp_path: Path) -> None:
    from rsilab.loop.progress import running

    ledger = Ledger(tmp_path / "ledger.db")
    done = ledger.add_experiment(
        parent=None, commit="a" * 40, proposer="baseline", description="baseline", diff=""
    )
    ledger.add_decision(done, verdict="keep", reason="baseline")
    busy = ledger.add_experiment(
        parent="a" * 40, commit="b" * 40, proposer="llm@m", description="idea", diff=""
    )
    ledger.add_event(
        "run",
        "x",
        data={"experiment": busy, "run": 0, "node": "h/cpu0", "label": "experiment 2 run 1"},
    )
    ledger.add_event(
        "run",
        "x",
        data={"experiment": busy, "run": 1, "node": "ray: pending", "label": "experiment 2 run 2"},
    )
    ledger.add_event(
        "run",
        "x",
        data={"experiment": busy, "run": 1, "node": "10.0.0.7/gpu1", "label": "experiment 2 run 2"},
    )
    [r] = running(ledger)
    first_of_run_2 = [ev for ev in ledger.events() if ev.data.get("run") == 1][0].created_at
    assert (r.experiment_id, r.proposer, r.label, r.node) == (
        busy,
        "llm@m",
        "experiment 2 run 2",
        "10.0.0.7/gpu1",
    )
    assert r.since == first_of_run_2  # placed on a node later, but running since it was submitted


def test_a_knob_level_merge_refuses_a_knob_both_sides_changed() -> None:
    from rsilab.loop.merge import knob_merge

    base = {"train.py": "LR = 0.1    # rate\nWD = 0.5    # decay\n"}
    mine = {"train.py": "LR = 0.2    # rate\nWD = 0.5    # decay\n"}
    theirs_other = {"train.py": "LR = 0.1    # rate\nWD = 0.25   # decay\n"}
    theirs_same = {"train.py": "LR = 0.3    # rate\nWD = 0.5    # decay\n"}
    merged = knob_merge(base, mine, theirs_other, "cpu")
    assert (
        isinstance(merged, dict)
        and "LR = 0.2" in merged["train.py"]
        and "WD = 0.25" in merged["train.py"]
    )
    assert knob_merge(base, mine, theirs_same, "cpu") == "the incumbent changed LR too"
    code = {"train.py": base["train.py"] + "print('hi')\n"}
    assert knob_merge(base, code, theirs_other, "cpu") == "not a change of knobs alone"
