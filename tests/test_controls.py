"""Tests for rsilab.loop.controls: human actions recorded in the ledger and read by the supervisor,
across processes (two ledger connections), and vetoes on a real toy workspace."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from report_helpers import TOY_OVERRIDES, real_workspace, synthetic_ledger

from rsilab.loop import controls
from rsilab.loop.controls import ControlError, Controls
from rsilab.loop.supervisor import Supervisor
from rsilab.proposers.base import Context
from rsilab.proposers.queue import QueueProposer, _patch_description
from rsilab.record.ledger import Ledger
from rsilab.results import Metric
from rsilab.run.bench import Bench
from rsilab.workspace import Workspace, git, open_workspace

TRAIN = 'LR = 0.001               # peak learning rate\nACT = "gelu"             # activation\n'


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / ".rsilab").mkdir()
    return Workspace(tmp_path, "t")


def test_post_records_who_and_when_and_poll_delivers_each_once(ws: Workspace) -> None:
    led = Ledger(ws.ledger_path)
    sup = Controls(ws, led)
    assert sup.poll() == []
    other = Ledger(ws.ledger_path)  # the dashboard: another connection, as in another process
    before = time.time()
    a = controls.post(other, "pause", {"reason": "look at #3"}, source="dashboard@127.0.0.1")
    controls.post(other, "note", {"text": "LR sweep done"}, source="dashboard@127.0.0.1")
    got = sup.poll()
    assert [x.action for x in got] == ["pause", "note"]
    assert got[0] == a and got[0].source == "dashboard@127.0.0.1" and got[0].created_at >= before
    assert got[0].payload == {"reason": "look at #3"} and got[1].payload == {
        "text": "LR sweep done"
    }
    assert sup.poll() == []
    # The read position lives in the ledger: a restarted supervisor does not see them again...
    assert Controls(ws, Ledger(ws.ledger_path)).poll() == []
    # ...but gets what was posted while it was down.
    controls.post(other, "resume", source="cli")
    assert [x.action for x in Controls(ws, Ledger(ws.ledger_path)).poll()] == ["resume"]
    events = [ev for ev in led.events() if ev.kind == "control"]
    assert [ev.source for ev in events] == ["dashboard@127.0.0.1"] * 2 + ["cli"]


def test_pause_is_a_level_and_stop_an_edge(ws: Workspace) -> None:
    led = Ledger(ws.ledger_path)
    sup = Controls(ws, led)
    assert not sup.paused() and not sup.stop_requested()
    controls.post(led, "pause")
    assert sup.paused()  # read fresh from the ledger, no poll needed
    controls.post(led, "pause")
    controls.post(led, "resume")
    assert not sup.paused()
    controls.post(led, "pause", {"reason": "night"})
    assert sup.paused() and sup.pause_action() is not None
    assert Controls(ws, Ledger(ws.ledger_path)).paused()  # outlives a restart
    controls.post(led, "stop", source="dashboard@10.0.0.2")
    assert sup.stop_requested()  # seen before the poll...
    sup.poll()
    assert sup.stop_requested()  # ...and after it
    # Once delivered, a stop does not stop the next supervisor.
    assert not Controls(ws, Ledger(ws.ledger_path)).stop_requested()


def test_a_resume_posted_between_the_poll_and_the_pause_check_is_taken_and_told(
    ws: Workspace,
) -> None:
    # The race CI hit under load: another process posts "resume" just after `handle` polled.
    # Read fresh, the pause was already over, so `handle` returned without taking the resume
    # (it never said "resumed"); now the pause check is as of what the poll delivered.
    led = Ledger(ws.ledger_path)
    controls.post(led, "pause", {"reason": "look"}, source="dashboard@127.0.0.1")

    class ResumedRightAfterThePoll(Controls):
        def poll(self) -> list[controls.Action]:
            new = super().poll()
            if [a.action for a in new] == ["pause"]:
                controls.post(Ledger(ws.ledger_path), "resume", source="other")
            return new

    said: list[str] = []
    taken = ResumedRightAfterThePoll(ws, led).handle(said.append, interval=0.01)
    assert [a.action for a in taken] == ["pause", "resume"]
    assert (
        len(said) == 2
        and said[0].startswith("paused: ")
        and "look" in said[0]
        and said[1] == "resumed"
    ), said


def test_handle_waits_while_paused_until_another_process_resumes(ws: Workspace) -> None:
    led = Ledger(ws.ledger_path)
    sup = Controls(ws, led)
    assert sup.handle() == []  # nothing posted: returns at once
    controls.post(led, "pause", {"reason": "check the diff"}, source="dashboard@127.0.0.1")
    said: list[str] = []
    # The note and the resume come from a real second process, through the ledger file only.
    code = (
        "import sys; from pathlib import Path; from rsilab.record.ledger import Ledger; from rsilab.loop import controls; "
        "led = Ledger(Path(sys.argv[1])); controls.post(led, 'note', {'text': 'hi'}, source='other'); "
        "controls.post(led, 'resume', source='other')"
    )
    timer = threading.Timer(
        0.3, lambda: subprocess.run([sys.executable, "-c", code, str(ws.ledger_path)], check=True)
    )
    timer.start()
    t = time.monotonic()
    # A deadline, so a second process that fails ends the test instead of pausing it forever.
    taken = sup.handle(said.append, interval=0.05, should_stop=lambda: time.monotonic() - t > 30)
    timer.join()
    assert time.monotonic() - t < 15
    assert [a.action for a in taken] == ["pause", "note", "resume"] and not sup.paused()
    assert "paused" in said[0] and "check the diff" in said[0]
    assert any("note: hi" in m for m in said) and said[-1] == "resumed"
    # A stop ends a pause too.
    controls.post(led, "pause")
    threading.Timer(0.2, lambda: controls.post(Ledger(ws.ledger_path), "stop")).start()
    sup.handle(said.append, interval=0.05)
    assert sup.stop_requested() and said[-1] == "stop requested during the pause"


def test_invalid_actions_are_refused(ws: Workspace) -> None:
    led = synthetic_ledger(ws.ledger_path)
    with pytest.raises(ControlError, match="unknown control action"):
        controls.post(led, "reboot")
    with pytest.raises(ControlError, match="empty"):
        controls.post(led, "note", {"text": "  "})
    with pytest.raises(ControlError, match="baseline"):
        controls.post(led, "veto", {"experiment": 1, "reason": "x"})
    with pytest.raises(ControlError, match="discard, not kept"):
        controls.post(led, "veto", {"experiment": "#2"})
    with pytest.raises(ControlError, match="no experiment #99"):
        controls.post(led, "veto", {"experiment": 99})
    with pytest.raises(ControlError, match="an id"):
        controls.post(led, "veto", {"experiment": "three"})
    with pytest.raises(ControlError, match="not a unified diff"):
        controls.post(led, "queue_idea", {"patch": "just text"})
    with pytest.raises(ControlError, match="NAME=VALUE"):
        controls.parse_knobs("LR 0.1")
    ok = controls.post(led, "veto", {"experiment": 3, "reason": "looks like a leak"})
    assert ok.payload == {"experiment": 3, "reason": "looks like a leak"}


def test_queued_ideas_are_files_the_queue_proposer_takes(ws: Workspace) -> None:
    led = Ledger(ws.ledger_path)
    knobs = controls.parse_knobs("LR=0.002, ACT='relu'")
    assert knobs == {"LR": 0.002, "ACT": "relu"}
    a = controls.post(led, "queue_idea", {"knobs": knobs, "description": 'faster "LR"'}, source="t")
    toml_file = ws.queue_dir / a.payload["file"]
    assert toml_file.suffix == ".toml"
    assert tomllib.loads(toml_file.read_text()) == {"description": 'faster "LR"', "knobs": knobs}
    patch = '--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n-LR = 0.001               # peak learning rate\n+LR = 0.003               # peak learning rate\n ACT = "gelu"             # activation\n'
    b = controls.post(led, "queue_idea", {"patch": patch, "description": "try LR 0.003"})
    patch_file = ws.queue_dir / b.payload["file"]
    assert (
        patch_file.suffix == ".patch"
        and _patch_description(patch_file.read_text()) == "try LR 0.003"
    )
    c = controls.post(
        led, "queue_idea", {"text": "Try a cosine schedule.\nWarm up for 5% of steps."}
    )
    idea = ws.queue_dir / c.payload["file"]
    assert idea.name.endswith(".idea.md") and idea.read_text().startswith("Try a cosine schedule.")
    assert c.payload["text"].startswith("Try a cosine")  # the idea itself is in the record
    q = QueueProposer(ws.queue_dir)
    assert q.pending() == [toml_file, patch_file]  # free text is for LLM proposers
    context = Context({"train.py": TRAIN}, Metric(), 1.0, [], [])
    first, second = q.propose(context), q.propose(context)
    assert first is not None and first.description == 'faster "LR"'
    assert "LR = 0.002" in first.files["train.py"] and 'ACT = "relu"' in first.files["train.py"]
    assert second is not None and "LR = 0.003" in second.files["train.py"]
    assert q.propose(context) is None and idea.exists()


def test_queue_names_sort_in_posting_order_across_a_second_boundary(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two ideas posted 4 ms apart, either side of a whole second: the queue runs files in
    # name order, so the later one must sort after the earlier one.
    led = Ledger(ws.ledger_path)
    clock = iter([1_700_000_000_998_000_000, 1_700_000_001_002_000_000])
    monkeypatch.setattr(controls.time, "time_ns", lambda: next(clock))
    first = controls.post(led, "queue_idea", {"knobs": {"LR": 0.002}, "description": "b first"})
    second = controls.post(led, "queue_idea", {"knobs": {"LR": 0.003}, "description": "a second"})
    names = [first.payload["file"], second.payload["file"]]
    assert sorted(names) == names, names
    assert names[0].startswith("20231114-221320-998000000-")


@pytest.fixture(scope="module")
def toy_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real toy workspace after a supervisor run (built once, copied per test)."""
    return real_workspace(tmp_path_factory.mktemp("lab"))


def _copy(lab: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(lab, tmp_path / "ws", symlinks=True)
    return open_workspace(tmp_path / "ws")


def test_veto_of_the_incumbent_reverts_the_branch(toy_lab: Path, tmp_path: Path) -> None:
    ws = _copy(toy_lab, tmp_path)
    led = Ledger(ws.ledger_path)
    first, second = led.experiments()[1:3]
    assert ws.incumbent_commit() == second.commit
    # Posted while the supervisor is paused: applied at once, before the resume.
    controls.post(led, "pause", source="dashboard@127.0.0.1")
    controls.post(
        led, "veto", {"experiment": second.id, "reason": "suspicious"}, source="dashboard@127.0.0.1"
    )
    sup = Controls(ws, Ledger(ws.ledger_path))
    said: list[str] = []

    def resume_when_reverted() -> None:
        while ws.incumbent_commit() != first.commit:
            time.sleep(0.02)
        controls.post(Ledger(ws.ledger_path), "resume")

    waiter = threading.Thread(target=resume_when_reverted)
    waiter.start()
    sup.handle(said.append, interval=0.05)
    waiter.join()
    assert any("reset to #2" in m for m in said) and said[-1] == "resumed"
    assert ws.incumbent_commit() == first.commit
    assert git(ws.root, "show", f"{ws.branch}:train.py").count("L2 = 0.06") == 1
    vetoed = led.experiment(second.id)
    assert vetoed.status == "discard" and "suspicious" in vetoed.reason
    assert led.decisions(second.id)[-1].source == "human"
    assert led.incumbent() is not None and led.incumbent().id == first.id  # type: ignore[union-attr]
    # A new supervisor finds ledger and git in agreement (nothing for recover() to fix).
    task = ws.load_task(list(TOY_OVERRIDES))
    Supervisor(ws, led, Bench(task), []).recover()
    assert ws.incumbent_commit() == first.commit
    assert not [ev for ev in led.events() if ev.kind == "recover"]
    with pytest.raises(ControlError, match="not kept"):
        sup.apply_veto(second.id, "again")
    # A veto that can no longer apply is recorded, not raised through the loop.
    controls.post(led, "note", {"text": "x"})
    led.add_event(
        "control", "veto #3", data={"action": "veto", "experiment": second.id, "reason": "twice"}
    )
    sup.handle(said.append)
    assert said[-1].startswith(f"veto #{second.id} not applied")


def test_veto_of_an_older_keep_is_recorded_and_its_revert_queued(
    toy_lab: Path, tmp_path: Path
) -> None:
    ws = _copy(toy_lab, tmp_path)
    led = Ledger(ws.ledger_path)
    first, second = led.experiments()[1:3]
    done = Controls(ws, led).apply_veto(first.id, "only the second change matters")
    assert "not the incumbent" in done
    assert ws.incumbent_commit() == second.commit  # later good changes are not thrown away
    assert led.experiment(first.id).status == "discard" and led.incumbent().id == second.id  # type: ignore[union-attr]
    [revert] = QueueProposer(ws.queue_dir).pending()
    text = revert.read_text()
    assert _patch_description(text) == f"revert #{first.id}: less weight decay"
    assert "-L2 = 0.06" in text and "+L2 = 0.1 " in text
    assert [ev.message for ev in led.events() if ev.kind == "veto"] == [done]
