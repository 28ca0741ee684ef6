"""The audit: a clean workspace passes; each kind of tampering or bookkeeping slip is named.

One real workspace is made once (toy task, the real loop); every test works on its own
copy, changes one thing behind the supervisor's back, and checks the finding's words.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from loop_helpers import make_ws, queue_knobs, queue_patch, supervise

from rsilab.cli import main
from rsilab.config import load_task, resolve_task_dir
from rsilab.loop.judge import Judgement
from rsilab.record.audit import AcceptanceGate, audit, check_acceptance
from rsilab.record.ledger import Ledger
from rsilab.results import Verdict
from rsilab.run import runner
from rsilab.workspace import Workspace, git, open_workspace


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished workspace: a baseline, a kept change, a crash and an invalid proposal."""
    tmp = tmp_path_factory.mktemp("audit")
    ws_dir = make_ws(tmp)
    queue_knobs(ws_dir, "a", "less weight decay", L2=0.01)
    queue_patch(
        ws_dir, "b", "train.py", "rng = np.random", "raise RuntimeError('boom')\nrng = np.random"
    )
    queue_patch(
        ws_dir, "c", "evaluate.py", "mse = float(", "mse = 0.0 * float("
    )  # rejected by the queue
    # A 5-run noise floor: the change's gain (about 2 sd of the toy's noise) is kept against
    # others' noise (the judge never lets its own steadier runs lower its bar).
    supervise(ws_dir, ("judge.noise_runs", 5))[1].close()
    return ws_dir


@pytest.fixture
def ws(clean: Path, tmp_path: Path) -> Workspace:
    """A private copy of the clean workspace (the ledger's run paths still name the original)."""
    shutil.copytree(clean, tmp_path / "ws", symlinks=True)
    return open_workspace(tmp_path / "ws")


def _problems(ws: Workspace) -> list[str]:
    with Ledger(ws.ledger_path) as ledger:
        return audit(ws, ledger).problems


def test_a_clean_workspace_passes_and_the_cli_says_so(ws: Workspace) -> None:
    with Ledger(ws.ledger_path) as ledger:
        found = audit(ws, ledger)
        statuses = [e.status for e in ledger.experiments()]
    assert found.problems == []
    assert found.kept >= 1 and found.runs >= 3 and "crash" in statuses
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "audit", str(ws.root)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("audit: ok"), out.stdout + out.stderr


def _first_ok_run(ws: Workspace, experiment_id: int | None = None) -> Path:
    """The folder of the first ok run (of one experiment), in this copy of the workspace."""
    with Ledger(ws.ledger_path) as ledger:
        run = next(r for r in ledger.runs(experiment_id) if r.ok)
    return ws.state / Path(run.log_path).parent.relative_to(Path(run.log_path).parents[3])


def _edit_metrics(ws: Workspace, experiment_id: int | None = None) -> None:
    metrics = _first_ok_run(ws, experiment_id) / "metrics.json"
    figures = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(figures | {"val_loss": 0.001}))


def _drop_metrics(ws: Workspace) -> None:
    (_first_ok_run(ws) / "metrics.json").unlink()


def _drop_ref(ws: Workspace) -> None:
    git(ws.root, "update-ref", "-d", f"refs/rsilab/{ws.tag}/exp-0002")


def _move_ref(ws: Workspace) -> None:
    git(ws.root, "update-ref", f"refs/rsilab/{ws.tag}/exp-0002", f"refs/rsilab/{ws.tag}/exp-0001")


def _orphan_ref(ws: Workspace) -> None:
    git(ws.root, "update-ref", f"refs/rsilab/{ws.tag}/exp-0099", f"refs/rsilab/{ws.tag}/exp-0001")


def _commit_on_branch(ws: Workspace, rel: str, old: str, new: str) -> str:
    """A commit on the research branch made by hand, behind the ledger's back."""
    wt = ws.root.parent / "scratch"
    git(ws.root, "worktree", "add", "-q", "--detach", str(wt), ws.incumbent_commit())
    (wt / rel).write_text((wt / rel).read_text().replace(old, new, 1))
    git(wt, "commit", "-q", "-am", "by hand")
    commit = git(wt, "rev-parse", "HEAD").strip()
    git(ws.root, "worktree", "remove", "--force", str(wt))
    return commit


def _move_branch(ws: Workspace) -> None:
    ws.advance(_commit_on_branch(ws, "train.py", "L2 = ", "L2 = 0.5 * "), ws.incumbent_commit())


def _keep_a_frozen_change(ws: Workspace) -> None:
    """What a faulty supervisor might record: a keep of a change to the evaluator, with a
    decision metric that is not its runs' mean."""
    parent = ws.incumbent_commit()
    commit = _commit_on_branch(ws, "evaluate.py", "mse = float(", "mse = 0.0 * float(")
    with Ledger(ws.ledger_path) as ledger:
        inc = ledger.incumbent()
        assert inc is not None
        exp_id = ledger.add_experiment(
            parent=parent,
            commit=commit,
            proposer="queue",
            description="cheat",
            diff=git(ws.root, "diff", parent, commit),
        )
        ws.tag_experiment(exp_id, commit)
        for r in ledger.runs(inc.id)[:2]:  # runs copied from the incumbent
            ledger.add_run(exp_id, r.result)
        ledger.add_decision(exp_id, verdict=Verdict.KEEP, reason="kept", metric=0.0)
    ws.advance(commit, parent)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_edit_metrics, "changed after the evaluator wrote it"),
        (_drop_metrics, "nothing shows the evaluator wrote this metric"),
        (_drop_ref, "exp-0002 is missing"),
        (_move_ref, "the ledger records"),
        (_orphan_ref, "exp-0099 ("),
        (_move_branch, "the ledger's incumbent"),
        (_keep_a_frozen_change, "changes evaluate.py, which is not editable"),
        (_keep_a_frozen_change, "frozen file evaluate.py"),
        (_keep_a_frozen_change, "is not the mean"),
        (_keep_a_frozen_change, "share the folder"),
    ],
)
def test_each_inconsistency_is_named_in_one_line(
    ws: Workspace, tamper: Callable[[Workspace], None], expected: str
) -> None:
    tamper(ws)
    problems = _problems(ws)
    assert any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    out = CliRunner().invoke(main, ["audit", str(ws.root)])
    assert out.exit_code == 1 and expected in out.stdout and "inconsistencies" in out.stderr


def test_check_acceptance_refuses_a_frozen_change_and_a_rewritten_metric(ws: Workspace) -> None:
    task = ws.load_task()
    with Ledger(ws.ledger_path) as ledger:
        inc = ledger.incumbent()
        assert inc is not None and inc.parent is not None
        runs = [r.result for r in ledger.runs(inc.id) if r.kind == "trial"]
    assert check_acceptance(ws, task, parent=inc.parent, commit=inc.commit, runs=runs) == []
    cheat = _commit_on_branch(ws, "evaluate.py", "mse = float(", "mse = 0.0 * float(")
    problems = check_acceptance(ws, task, parent=inc.commit, commit=cheat, runs=runs)
    assert any("evaluate.py, which is not editable" in p for p in problems)
    assert any("frozen file evaluate.py" in p for p in problems)
    assert any(
        "not the recorded" in p
        for p in check_acceptance(ws, task, parent=inc.parent, commit=cheat, runs=[])
    )
    _edit_metrics(ws, inc.id)
    problems = check_acceptance(ws, task, parent=inc.parent, commit=inc.commit, runs=runs)
    assert any("changed after the evaluator wrote it" in p for p in problems)


def test_the_acceptance_gate_turns_a_bad_keep_into_invalid_and_passes_a_good_one(
    ws: Workspace,
) -> None:
    task = ws.load_task()
    keep = Judgement(Verdict.KEEP, "better", 0.1, 0.05, 0.15, 0.01, 2, 2)
    with Ledger(ws.ledger_path) as ledger:
        inc = ledger.incumbent()
        assert inc is not None and inc.parent is not None
        passed = AcceptanceGate().gate(
            keep, ws=ws, task=task, ledger=ledger, experiment_id=inc.id, incumbent_commit=inc.parent
        )
        assert passed is keep
    _edit_metrics(ws, inc.id)
    with Ledger(ws.ledger_path) as ledger:
        refused = AcceptanceGate().gate(
            keep, ws=ws, task=task, ledger=ledger, experiment_id=inc.id, incumbent_commit=inc.parent
        )
    assert refused.verdict is Verdict.INVALID and "invalid at acceptance" in refused.reason


def test_a_metrics_file_planted_by_training_is_never_taken(tmp_path: Path) -> None:
    """train.py can reach its run folder; an evaluator that writes nothing must not make a
    metrics file left there by training count."""
    task_dir = tmp_path / "task"
    shutil.copytree(resolve_task_dir("toy"), task_dir, ignore=shutil.ignore_patterns("__pycache__"))
    (task_dir / "evaluate.py").write_text("raise SystemExit(0)  # writes no metrics\n")
    train = (task_dir / "train.py").read_text()
    plant = "(harness.artifact_dir().parent / 'metrics.json').write_text('{\"val_loss\": 0.0}')\n"
    (task_dir / "train.py").write_text(train + plant)
    task = load_task(task_dir)
    work = tmp_path / "work"
    shutil.copytree(task_dir, work)
    result = runner.run(task, work, tmp_path / "run", seed=1, train_data=None, val_data=None)
    assert result.status == "crash" and result.metric is None, result
    assert "evaluator failed" in result.reason
