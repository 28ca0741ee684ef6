"""The workspace's config is the incumbent's (issue 23, point 5): runs use the `rsilab.toml`
committed on the research branch, and a frozen file edited in the user's checkout is refused
in one line instead of silently taking effect (or silently not)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsilab.config import resolve_task_dir
from rsilab.errors import ConfigError, WorkspaceError
from rsilab.record.ledger import Ledger
from rsilab.workspace import git, init_workspace


def _adopted(tmp_path: Path) -> Path:
    repo = tmp_path / "mine"
    shutil.copytree(resolve_task_dir("toy"), repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "my task")
    return repo


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_runs_use_the_committed_config_and_an_edited_one_is_refused(tmp_path: Path) -> None:
    repo = _adopted(tmp_path)
    ws = init_workspace(repo, None, "t")
    _edit(repo / "rsilab.toml", "budget = 10", "budget = 3")
    _edit(repo / "rsilab.toml", "alpha = 0.05", "alpha = 0.4")
    task = ws.load_task()
    assert task.budget == 10 and task.judge.alpha == 0.05  # the commit's, not the folder's
    with Ledger(ws.ledger_path) as ledger, pytest.raises(ConfigError) as err:
        ws.research_task(ledger, [], "cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert "rsilab.toml: differs from the workspace's frozen copy" in msg
    assert "rsilab/t at" in msg and "new workspace" in msg
    git(repo, "checkout", "--", "rsilab.toml")  # undone: accepted again
    with Ledger(ws.ledger_path) as ledger:
        task, _ = ws.research_task(ledger, [], "cpu")
    assert task.budget == 10


def test_a_frozen_file_edited_in_the_checkout_is_refused(tmp_path: Path) -> None:
    repo = _adopted(tmp_path)
    ws = init_workspace(repo, None, "t")
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "\n# mine\n")
    with Ledger(ws.ledger_path) as ledger, pytest.raises(ConfigError, match="evaluate.py: differs"):
        ws.research_task(ledger, [], "cpu")


def test_the_config_follows_the_branch_not_a_later_commit_of_the_user(tmp_path: Path) -> None:
    repo = _adopted(tmp_path)
    ws = init_workspace(repo, None, "t")
    _edit(repo / "rsilab.toml", "budget = 10", "budget = 5")
    git(repo, "commit", "-q", "-am", "shorter budget")  # on main, not on the research branch
    assert ws.load_task().budget == 10
    with Ledger(ws.ledger_path) as ledger, pytest.raises(ConfigError, match="differs"):
        ws.research_task(ledger, [], "cpu")


@pytest.mark.parametrize("uncommitted", ["rsilab.toml", "evaluate.py"])
def test_init_refuses_an_uncommitted_config_or_frozen_file(
    tmp_path: Path, uncommitted: str
) -> None:
    repo = _adopted(tmp_path)
    (repo / uncommitted).write_text((repo / uncommitted).read_text() + "\n# changed\n")
    with pytest.raises(WorkspaceError, match=f"{uncommitted}: has uncommitted changes; commit"):
        init_workspace(repo, None, "t")
    assert not (repo / ".rsilab").exists() or not (repo / ".rsilab" / "workspace.json").exists()


def test_init_refuses_an_untracked_config(tmp_path: Path) -> None:
    repo = _adopted(tmp_path)
    git(repo, "rm", "-q", "--cached", "rsilab.toml")
    git(repo, "commit", "-q", "-m", "untrack")
    with pytest.raises(WorkspaceError, match="rsilab.toml: is not committed"):
        init_workspace(repo, None, "t")


def test_rsilab_run_says_it_in_one_line(tmp_path: Path) -> None:
    repo = _adopted(tmp_path)
    init_workspace(repo, None, "t")
    _edit(repo / "rsilab.toml", "budget = 10", "budget = 3")
    out = subprocess.run(
        [sys.executable, "-m", "rsilab.cli", "run", str(repo), "--max-experiments", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs from the workspace's frozen copy" in lines[0]
    assert "Traceback" not in out.stderr
