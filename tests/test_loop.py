"""The research loop end to end on the bundled `toy` task: real git, SQLite and processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loop_helpers import (
    TOY_TRAIN,
    assert_consistent,
    make_ws,
    queue_knobs,
    queue_patch,
    start_rsilab,
    supervise,
    wait_for,
)

from rsilab.loop.supervisor import Supervisor, interrupt_once
from rsilab.proposers.base import Context
from rsilab.record.ledger import Ledger
from rsilab.results import Proposal
from rsilab.run.bench import Bench
from rsilab.workspace import git, open_workspace


def test_loop_keeps_a_real_gain_and_discards_noise(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    # Six changes that do nothing to the model (a comment), then one real gain (less weight decay).
    for i in range(6):
        queue_patch(
            ws_dir, f"a{i}", TOY_TRAIN, "# heavy-ball momentum", f"# heavy-ball momentum (note {i})"
        )
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    before_head = git(ws_dir, "rev-parse", "HEAD")
    # A 5-run noise floor: the gain (about 2 sd of the toy's noise) must be significant
    # against the noise of others' runs; the candidate's own steadier runs cannot lower
    # its bar (judge.py), and a 3-run floor that happens to come out low cannot show it.
    reason, ledger = supervise(ws_dir, ("judge.noise_runs", 5))
    assert "nothing left to propose" in reason
    exps = ledger.experiments()
    assert [e.status for e in exps] == ["keep"] + ["discard"] * 6 + ["keep"]
    base = ledger.runs(exps[0].id)
    base_mean = sum(r.metric for r in base if r.metric is not None) / len(base)
    # autoresearch's rule (keep any lower first run) would have kept some of the no-op changes.
    single_run_keeps = sum(ledger.runs(e.id)[0].metric < base_mean for e in exps[1:7])  # type: ignore[operator]
    assert single_run_keeps >= 1
    gain = exps[-1]
    assert gain.description == "less weight decay" and gain.effect is not None and gain.effect > 0.1
    assert gain.ci_low is not None and gain.ci_low > 0
    ws = open_workspace(ws_dir)
    assert ws.incumbent_commit() == gain.commit
    assert "L2 = 0.01" in git(ws_dir, "show", f"{gain.commit}:{TOY_TRAIN}")
    # The user's own checkout is untouched.
    assert git(ws_dir, "rev-parse", "HEAD") == before_head
    assert "L2 = 0.1 " in (ws_dir / TOY_TRAIN).read_text()
    assert git(ws_dir, "status", "--porcelain") == ""
    # No worktree is left behind.
    assert git(ws_dir, "worktree", "list").count("\n") == 1


class ScriptedProposer:
    """Proposes given file contents once each: stands in for a misbehaving agent."""

    name = "scripted"

    def __init__(self, proposals: list[Proposal]) -> None:
        self.proposals = list(proposals)

    def propose(self, ctx: Context) -> Proposal | None:
        return self.proposals.pop(0) if self.proposals else None

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        pass


def test_editing_a_frozen_file_is_invalid_and_changes_nothing(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    ws = open_workspace(ws_dir)
    evaluator = (ws_dir / "evaluate.py").read_text().replace("mse = float(", "mse = 0.0 * float(")
    outside = ScriptedProposer(
        [
            Proposal("fake the evaluator", {"evaluate.py": evaluator}, "scripted"),
            Proposal("write a new file", {"helper.py": "x = 1\n"}, "scripted"),
            Proposal("escape the task", {"../../evil.py": "x = 1\n"}, "scripted"),
        ]
    )
    tip = ws.incumbent_commit()
    ledger = Ledger(ws.ledger_path)
    Supervisor(ws, ledger, Bench(ws.load_task()), [outside]).run()
    exps = ledger.experiments()[1:]
    assert [e.status for e in exps] == ["invalid"] * 3
    assert (
        "evaluate.py" in exps[0].reason
        and "helper.py" in exps[1].reason
        and "outside" in exps[2].reason
    )
    assert all(ledger.runs(e.id) == [] for e in exps)  # rejected before spending compute
    assert ws.incumbent_commit() == tip
    assert not (tmp_path / "evil.py").exists()


def test_queued_patch_to_a_frozen_file_is_rejected_with_a_reason(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    queue_patch(ws_dir, "cheat", "evaluate.py", "mse = float(", "mse = 0.0 * float(")
    _, ledger = supervise(ws_dir)
    assert [e.status for e in ledger.experiments()] == ["keep"]
    assert (ws_dir / ".rsilab" / "queue" / "rejected" / "cheat.patch.reason").read_text().strip()


def test_a_crash_is_a_result_not_a_stop(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    queue_patch(
        ws_dir, "a", TOY_TRAIN, "rng = np.random", "raise RuntimeError('boom')\nrng = np.random"
    )
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    reason, ledger = supervise(ws_dir)
    statuses = [e.status for e in ledger.experiments()]
    assert statuses == ["keep", "crash", "keep"]
    crash = ledger.experiments()[1]
    assert "boom" in crash.reason
    assert "RuntimeError" in ledger.runs(crash.id)[0].log_tail


def test_kill_9_during_a_run_then_resume(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    marker = tmp_path / "started"
    queue_patch(
        ws_dir,
        "a-slow",
        TOY_TRAIN,
        "rng = np.random",
        f"import pathlib, time\npathlib.Path({str(marker)!r}).write_text('x')\ntime.sleep(60)\nrng = np.random",
    )
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    # The sleeper times out quickly when re-run; unsandboxed so it can leave its marker.
    fast = ("--set", "budget=1", "--set", "overhead=2", "--set", 'sandbox="none"')
    proc = start_rsilab("run", str(ws_dir), "--proposer", "queue", *fast, cwd=tmp_path)
    wait_for(marker.exists, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The supervisor died mid-run: its training process must die with it.
    pids = subprocess.run(
        ["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True, text=True
    ).stdout.split()
    wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout=10)

    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "run", str(ws_dir), "--proposer", "queue", *fast],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ledger = assert_consistent(ws_dir)
    exps = ledger.experiments()
    # The interrupted idea is recorded, then run again (and times out: it sleeps).
    assert [e.status for e in exps] == ["keep", "interrupted", "timeout", "keep"]
    assert exps[1].description == exps[2].description == "a slow"


def test_interrupt_once_raises_for_the_first_sigint_and_absorbs_the_rest(
    sigint_handler: None,
) -> None:
    cleaned_up = False
    with pytest.raises(KeyboardInterrupt), interrupt_once():
        try:
            signal.raise_signal(signal.SIGINT)  # handled before raise_signal returns
            raise AssertionError("the first SIGINT did not interrupt")
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGINT)  # lands in the cleanup: ignored
            signal.raise_signal(signal.SIGINT)
            cleaned_up = True
            raise
    assert cleaned_up
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_once_keeps_an_ignored_sigint_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt_once():
            signal.raise_signal(signal.SIGINT)  # nohup, or a background job: nothing happens
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_during_a_run_stops_cleanly_even_when_pressed_twice(
    tmp_path: Path, signals: int
) -> None:
    # Two SIGINTs back to back is what `timeout -s INT` sends (the child, then its process
    # group) and what an impatient user does; the second must not cut the cleanup short.
    ws_dir = make_ws(tmp_path)
    marker = tmp_path / "started"
    queue_patch(
        ws_dir,
        "a-slow",
        TOY_TRAIN,
        "rng = np.random",
        f"import pathlib, time\npathlib.Path({str(marker)!r}).write_text('x')\ntime.sleep(60)\nrng = np.random",
    )
    fast = ("--set", "budget=1", "--set", "overhead=2", "--set", 'sandbox="none"')
    proc = start_rsilab("run", str(ws_dir), "--proposer", "queue", *fast, cwd=tmp_path)
    wait_for(marker.exists, proc=proc)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Traceback" not in output and output.rstrip().endswith("`rsilab run` resumes"), output
    ledger = assert_consistent(ws_dir)
    assert [e.status for e in ledger.experiments()] == ["keep", "interrupted"]


@pytest.mark.parametrize("decisions_before_kill", [1, 2, 3])
def test_kill_9_at_other_moments_leaves_ledger_and_git_consistent(
    tmp_path: Path, decisions_before_kill: int
) -> None:
    ws_dir = make_ws(tmp_path)
    for i, l2 in enumerate([0.05, 0.02, 0.01, 0.005]):
        queue_knobs(ws_dir, f"k{i}", f"L2 {l2}", L2=l2)
    proc = start_rsilab("run", str(ws_dir), "--proposer", "queue", cwd=tmp_path)
    ledger_path = ws_dir / ".rsilab" / "ledger.db"

    def decided() -> bool:
        if not ledger_path.exists():
            return False
        with Ledger(ledger_path) as ledger:
            return sum(e.decided for e in ledger.experiments()) >= decisions_before_kill

    wait_for(decided, proc=proc)
    proc.send_signal(signal.SIGKILL)  # lands wherever the supervisor happens to be
    proc.wait()
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "run", str(ws_dir), "--proposer", "queue"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ledger = assert_consistent(ws_dir)
    done = [e.description for e in ledger.experiments()[1:] if e.status in ("keep", "discard")]
    # Every queued idea reached a decision exactly once; one cut short by the kill is
    # recorded as interrupted and then run again.
    assert sorted(done) == sorted(f"L2 {v}" for v in [0.05, 0.02, 0.01, 0.005])


def test_resume_does_not_remeasure_the_baseline(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    queue_knobs(ws_dir, "a", "less weight decay", L2=0.01)
    supervise(ws_dir)
    queue_knobs(ws_dir, "b", "even less weight decay", L2=0.001)
    _, ledger = supervise(ws_dir)
    assert [e.kind for e in ledger.experiments()] == ["baseline", "candidate", "candidate"]


def test_a_decisive_knob_change_is_kept_after_one_run_a_code_change_is_confirmed(
    tmp_path: Path,
) -> None:
    knob_dir, code_dir = make_ws(tmp_path / "knob", "k"), make_ws(tmp_path / "code", "c")
    queue_knobs(knob_dir, "a", "less weight decay", L2=0.001)
    queue_patch(
        code_dir, "a", TOY_TRAIN, "+ 2 * L2 * w", "+ 2 * 0.001 * w"
    )  # the same model, as code
    for ws_dir in (knob_dir, code_dir):  # low noise: the gain is about 25 sd
        supervise(ws_dir, ("env.TOY_NOISE", "0.005"))[1].close()
    knob, code = (
        Ledger(open_workspace(knob_dir).ledger_path),
        Ledger(open_workspace(code_dir).ledger_path),
    )
    k, c = knob.experiments()[-1], code.experiments()[-1]
    assert k.status == c.status == "keep", (k.reason, c.reason)
    assert len(knob.runs(k.id)) == 1 and "n=1 vs 3" in k.reason, k.reason
    assert len(code.runs(c.id)) >= 2, c.reason
