"""The workspace: real git repositories, branches, worktrees and diff checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsilab.config import resolve_task_dir
from rsilab.errors import WorkspaceError
from rsilab.workspace import git, init_workspace, open_workspace


def test_init_copies_the_task_and_opens_the_branch(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "lab", resolve_task_dir("toy"), "exp1")
    assert ws.branch == "rsilab/exp1"
    assert (tmp_path / "lab" / "train.py").is_file()
    assert ws.incumbent_commit() == git(ws.root, "rev-parse", "HEAD").strip()
    assert set(ws.frozen_hashes()) == {"rsilab.toml", "program.md", "toydata.py", "evaluate.py"}
    assert ".rsilab" not in git(ws.root, "status", "--porcelain")  # state is excluded from git
    assert open_workspace(tmp_path / "lab") == ws


def test_existing_branch_fails_clearly_unless_resuming(tmp_path: Path) -> None:
    init_workspace(tmp_path / "lab", resolve_task_dir("toy"), "a")
    with pytest.raises(WorkspaceError, match="already exists"):
        init_workspace(tmp_path / "lab", None, "a")
    assert init_workspace(tmp_path / "lab", None, "a", resume=True).branch == "rsilab/a"
    assert init_workspace(tmp_path / "lab", None, "b").branch == "rsilab/b"


def test_adopting_an_existing_repo_leaves_the_users_checkout_alone(tmp_path: Path) -> None:
    repo = tmp_path / "mine"
    import shutil

    shutil.copytree(resolve_task_dir("toy"), repo)
    git(repo, "init", "-q", "-b", "dev")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "my task")
    (repo / "notes.txt").write_text("uncommitted work of the user\n")
    ws = init_workspace(repo, None, "t")
    wt = ws.create_worktree("x", ws.incumbent_commit())
    assert (
        ws.apply(wt, {"train.py": (wt / "train.py").read_text().replace("L2 = 0.1 ", "L2 = 0.01")})
        is None
    )
    task = ws.load_task()
    assert ws.check(wt, task) is None
    new = ws.commit(wt, "less decay")
    assert new is not None
    ws.advance(new, ws.incumbent_commit())
    ws.remove_worktree(wt)
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "dev"
    assert (repo / "notes.txt").read_text() == "uncommitted work of the user\n"
    assert "L2 = 0.1 " in (repo / "train.py").read_text()
    assert ws.incumbent_commit() == new


def test_check_names_the_offending_path(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "lab", resolve_task_dir("toy"), "t")
    task = ws.load_task()
    wt = ws.create_worktree("x", ws.incumbent_commit())
    (wt / "toydata.py").write_text("# gone\n")
    assert "toydata.py" in (ws.check(wt, task) or "")
    git(wt, "checkout", "--", "toydata.py")
    (wt / "sneaky.py").write_text("x = 1\n")
    assert "sneaky.py" in (ws.check(wt, task) or "")
    assert ws.apply(wt, {"/etc/passwd": "x"}) is not None
    assert ws.apply(wt, {".git/config": "x"}) is not None


def test_advance_is_compare_and_swap(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "lab", resolve_task_dir("toy"), "t")
    base = ws.incumbent_commit()
    wt = ws.create_worktree("x", base)
    ws.apply(wt, {"train.py": "print(1)\n"})
    c1 = ws.commit(wt, "one")
    assert c1 is not None
    ws.advance(c1, base)
    with pytest.raises(WorkspaceError):
        ws.advance(base, base)  # the branch moved: a stale keep must not clobber it
    assert ws.incumbent_commit() == c1


def test_not_a_workspace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="rsilab init"):
        open_workspace(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="not empty"):
        init_workspace(tmp_path / "junk", resolve_task_dir("toy"), "t")


def test_human_reference_solutions_are_not_copied_into_a_workspace(tmp_path: Path) -> None:
    assert (resolve_task_dir("gpt") / "reference").is_dir()
    ws = init_workspace(tmp_path / "lab", resolve_task_dir("gpt"), "t")
    assert not (ws.root / "reference").exists()
    assert "reference/" not in git(ws.root, "ls-tree", "-r", "--name-only", "HEAD")
