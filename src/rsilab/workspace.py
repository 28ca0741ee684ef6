"""The research workspace. Owns: git (the repo, the research branch, worktrees, commits).

A workspace is a git repository holding a task. Research happens on the branch
`rsilab/<tag>`, whose tip is the incumbent. Each experiment gets its own detached
worktree under `.rsilab/worktrees/`, so the user's own checkout (HEAD, index, files) is
never touched. Keeping a change is a compare-and-swap fast-forward of the branch ref;
discarding drops the worktree. Every experiment's commit also gets a ref
`refs/rsilab/<tag>/exp-<id>`, so discarded attempts stay reproducible.

State that is not git (ledger, run folders, the queue) lives in `.rsilab/`, which is
excluded through `.git/info/exclude` rather than the user's `.gitignore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rsilab.config import CONFIG_NAME, TaskSpec, load_task, parse_override
from rsilab.errors import ConfigError, WorkspaceError
from rsilab.fsio import atomic_write, open_regular, sha256_bytes, sha256_file

if TYPE_CHECKING:
    from rsilab.record.ledger import Ledger

log = logging.getLogger(__name__)

STATE_DIR = ".rsilab"
META_FILE = "workspace.json"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "rsilab",
    "GIT_AUTHOR_EMAIL": "rsilab@localhost",
    "GIT_COMMITTER_NAME": "rsilab",
    "GIT_COMMITTER_EMAIL": "rsilab@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(cwd: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    """Run git in `cwd`; its stdout. A failure raises WorkspaceError with git's message."""
    log.debug("git %s (in %s)", " ".join(args), cwd)
    try:
        proc = git_process(cwd, *args, stdin=stdin)
    except (FileNotFoundError, NotADirectoryError):  # `cwd` is gone (a deleted worktree), or no git
        if not check:
            return ""
        raise _not_run(cwd, args) from None
    if check and proc.returncode != 0:
        raise _failed(cwd, args, proc.returncode, proc.stderr or proc.stdout)
    return proc.stdout


def git_process(
    cwd: Path | None,
    *args: str,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run git in `cwd` (None: here) and return it finished, whatever its exit code, for a
    caller that reads the code itself; `env` adds variables. Not caught: OSError (no git,
    no `cwd`) and subprocess.TimeoutExpired."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **_GIT_ENV, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def git_bytes(cwd: Path, *args: str) -> bytes:
    """Like `git`, for output that is bytes (a blob's content)."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env={**os.environ, **_GIT_ENV}, capture_output=True
        )
    except (FileNotFoundError, NotADirectoryError):
        raise _not_run(cwd, args) from None
    if proc.returncode != 0:
        raise _failed(
            cwd, args, proc.returncode, (proc.stderr or proc.stdout).decode(errors="replace")
        )
    return proc.stdout


def export_tree(repo: Path, commit: str, dest: Path) -> None:
    """Write the files of `commit` into the folder `dest` (via `git archive`: no worktree,
    ref or index of `repo` is touched, so a supervisor working there is not disturbed).
    The archive goes through a temporary file, not memory."""
    args = ("archive", "--format=tar", commit)
    with tempfile.TemporaryFile() as tar:
        try:
            proc = subprocess.run(
                ["git", *args],
                cwd=repo,
                env={**os.environ, **_GIT_ENV},
                stdout=tar,
                stderr=subprocess.PIPE,
            )
        except (FileNotFoundError, NotADirectoryError):
            raise _not_run(repo, args) from None
        if proc.returncode != 0:
            raise _failed(repo, args, proc.returncode, proc.stderr.decode(errors="replace"))
        tar.seek(0)
        with tarfile.open(fileobj=tar) as archive:
            archive.extractall(dest, filter="data")


def _not_run(cwd: Path | None, args: Sequence[str]) -> WorkspaceError:
    what = "git is not installed" if shutil.which("git") is None else f"{cwd} does not exist"
    return WorkspaceError(f"git {' '.join(args[:3])}: {what}")


def _failed(cwd: Path | None, args: Sequence[str], returncode: int, output: str) -> WorkspaceError:
    msg = output.strip().splitlines()
    return WorkspaceError(f"git {' '.join(args[:3])} in {cwd}: {msg[-1] if msg else returncode}")


@dataclass(frozen=True)
class Workspace:
    """An initialised workspace: the repo root and the research tag."""

    root: Path
    tag: str

    @property
    def branch(self) -> str:
        return f"rsilab/{self.tag}"

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.db"

    @property
    def queue_dir(self) -> Path:
        return self.state / "queue"

    @property
    def stop_file(self) -> Path:
        return self.state / "STOP"

    def run_dir(self, experiment_id: int, run_index: int) -> Path:
        return self.state / "runs" / f"exp-{experiment_id:04d}" / f"run-{run_index}"

    def info(self) -> dict[str, object]:
        """workspace.json: the tag, the base commit, the frozen files' hashes."""
        loaded: dict[str, object] = json.loads((self.state / META_FILE).read_text())
        return loaded

    def frozen_hashes(self) -> dict[str, str]:
        hashes = self.info().get("frozen", {})
        assert isinstance(hashes, dict)
        return {str(k): str(v) for k, v in hashes.items()}

    def load_task(self, overrides: list[tuple[str, object]] | None = None) -> TaskSpec:
        """The workspace's task: its `rsilab.toml` as committed at the incumbent (frozen since
        the workspace was made), never the copy in the user's checkout, which may have been
        edited since (see `check_checkout`). Globs are matched against that commit's files."""
        commit = self.incumbent_commit()
        listed = git(self.root, "ls-tree", "-r", "--name-only", commit).splitlines()
        if CONFIG_NAME not in listed:
            raise ConfigError(
                f"{self.root}: the research branch {self.branch} has no {CONFIG_NAME}; "
                f"commit it and start a new workspace"
            )
        return load_task(
            self.root,
            overrides,
            text=self.read_file(commit, CONFIG_NAME),
            files=listed,
            where=f"{CONFIG_NAME} of {self.branch} ({commit[:7]})",
        )

    def check_checkout(self) -> None:
        """Refuse (ConfigError, one line) when the user's checkout holds a frozen file, or the
        `rsilab.toml`, that differs from the workspace's: runs use the workspace's copies (the
        research branch), so such an edit would silently have no effect, or, for the config,
        would change what the recorded results mean. A new setting needs a new workspace."""
        commit = self.incumbent_commit()
        expected = dict(self.frozen_hashes())
        if CONFIG_NAME not in expected:
            try:
                expected[CONFIG_NAME] = sha256_bytes(
                    git_bytes(self.root, "show", f"{commit}:{CONFIG_NAME}")
                )
            except WorkspaceError:
                return  # load_task says what is wrong
        for rel, digest in sorted(expected.items()):
            path = self.root / rel
            try:
                same = path.is_file() and sha256_file(path) == digest
            except OSError:
                same = False
            if not same:
                raise ConfigError(
                    f"{path}: differs from the workspace's frozen copy ({self.branch} at "
                    f"{commit[:7]}), which runs use; undo the edit, or commit it and start a new "
                    f"workspace for it (`rsilab run NEWDIR --task {self.root}`)"
                )

    def research_task(
        self, ledger: Ledger, sets: Sequence[str], preset: str
    ) -> tuple[TaskSpec, list[str]]:
        """The task research runs under, and the `--set` overrides in force.

        Overrides stick to the workspace: the ones recorded by earlier runs apply, with the
        `sets` given now added (a key given again takes its new value), so a plain `rsilab
        run DIR` resumes alike. The task's comparable settings
        (TaskSpec.comparable) are recorded on first use and must match afterwards: a
        ConfigError names the first that differs. A change of overrides is an event.
        """
        recorded = ledger.get_setting("overrides", [])
        # A later --set adds to the recorded ones; a key given again takes its new value.
        given = {parse_override(o)[0] for o in sets}
        in_force = [o for o in recorded if parse_override(o)[0] not in given] + list(sets)
        self.check_checkout()
        task = self.load_task([parse_override(o) for o in in_force])
        current = task.comparable(preset)
        settled = ledger.get_setting("comparable")
        if settled is None:
            ledger.set_setting("comparable", current)
            ledger.set_setting("metric", task.metric.name)
        else:
            for key, value in current.items():
                if key in settled and settled[key] != value:
                    raise ConfigError(
                        f"{key} = {value!r} differs from this workspace's {settled[key]!r}: results "
                        "would not be comparable; start a new workspace (or --tag) for other settings"
                    )
        if in_force != recorded:
            ledger.set_setting("overrides", in_force)
            ledger.add_event("config", f"overrides: {' '.join(in_force) or '(none)'}", source="cli")
        return task, in_force

    # ---- refs -------------------------------------------------------------------------
    def incumbent_commit(self) -> str:
        return git(self.root, "rev-parse", f"refs/heads/{self.branch}").strip()

    def advance(self, new: str, expected_old: str) -> None:
        """Fast-forward the research branch from `expected_old` to `new` (compare-and-swap)."""
        git(
            self.root,
            "update-ref",
            "-m",
            "rsilab: keep",
            f"refs/heads/{self.branch}",
            new,
            expected_old,
        )

    def reset_branch(self, commit: str) -> None:
        git(
            self.root,
            "update-ref",
            "-m",
            "rsilab: reconcile with ledger",
            f"refs/heads/{self.branch}",
            commit,
        )

    def is_ancestor(self, a: str, b: str) -> bool:
        return git_process(self.root, "merge-base", "--is-ancestor", a, b).returncode == 0

    def tag_experiment(self, experiment_id: int, commit: str) -> None:
        git(self.root, "update-ref", f"refs/rsilab/{self.tag}/exp-{experiment_id:04d}", commit)

    def tagged(self) -> set[int]:
        """Ids of the experiments whose ref `refs/rsilab/<tag>/exp-<id>` exists."""
        raw = git(self.root, "for-each-ref", "--format=%(refname)", f"refs/rsilab/{self.tag}/")
        return {
            int(ref.rsplit("exp-", 1)[1])
            for ref in raw.split()
            if ref.rsplit("exp-", 1)[-1].isdigit()
        }

    def read_file(self, commit: str, rel: str) -> str:
        return git(self.root, "show", f"{commit}:{rel}")

    def editable_files(self, task: TaskSpec, commit: str) -> dict[str, str]:
        """The editable files as they are at `commit`: relative path -> content."""
        listed = git(self.root, "ls-tree", "-r", "--name-only", commit).splitlines()
        return {rel: self.read_file(commit, rel) for rel in listed if task.is_editable(rel)}

    def diff(self, base: str, commit: str) -> str:
        return git(self.root, "diff", base, commit)

    # ---- worktrees --------------------------------------------------------------------
    def worktrees_dir(self) -> Path:
        return self.state / "worktrees"

    def create_worktree(self, name: str, commit: str) -> Path:
        path = self.worktrees_dir() / name
        if path.exists():
            self.remove_worktree(path)
        git(self.root, "worktree", "add", "--detach", "--force", str(path), commit)
        return path

    def remove_worktree(self, path: Path) -> None:
        git(self.root, "worktree", "remove", "--force", str(path), check=False)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        git(self.root, "worktree", "prune")

    def remove_all_worktrees(self) -> list[str]:
        """Drop every experiment worktree (after a crash of the supervisor); their names."""
        names = []
        if self.worktrees_dir().is_dir():
            for path in sorted(self.worktrees_dir().iterdir()):
                self.remove_worktree(path)
                names.append(path.name)
        git(self.root, "worktree", "prune")
        return names

    def apply(self, worktree: Path, files: dict[str, str]) -> str | None:
        """Write a proposal's files into the worktree as regular files; a reason string when
        a path is unsafe. Nothing is written through a symlink: a folder on the way or the
        file itself that is one (an agent may have left it) is refused, and the file is
        opened with O_NOFOLLOW."""
        for rel, content in files.items():
            p = Path(rel)
            if (
                not p.parts
                or p.is_absolute()
                or ".." in p.parts
                or p.parts[0] in (".git", STATE_DIR)
            ):
                return f"path {rel!r} is outside the task"
            for depth in range(1, len(p.parts) + 1):
                if worktree.joinpath(*p.parts[:depth]).is_symlink():
                    link = Path(*p.parts[:depth]).as_posix()
                    return f"{link} is a symlink (a proposal writes regular files only)"
            target = worktree / p
            target.parent.mkdir(parents=True, exist_ok=True)
            # Non-blocking (a FIFO without a reader fails at once instead of hanging), not
            # truncated before fstat says it is a regular file (never a device).
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
            try:
                fd = os.open(target, flags, 0o644)
            except OSError as e:  # a folder or a special file in its place
                return f"{rel}: cannot be written as a regular file ({e.strerror})"
            with os.fdopen(fd, "w") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    return f"{rel} is a special file (a proposal writes regular files only)"
                if st.st_nlink != 1:  # a second name of another file: writing would change it
                    return f"{rel} is a hard link (a proposal writes regular files only)"
                os.set_blocking(fd, True)
                os.ftruncate(fd, 0)
                f.write(content)
        return None

    def check(self, worktree: Path, task: TaskSpec) -> str | None:
        """None when only editable files changed, each into a regular file, and frozen files
        match; else the reason.

        A changed path must be a regular file or gone (lstat): a symlink, a folder with its
        own git repository (a gitlink), a FIFO or a device is refused, whoever made it (a
        patch, an LLM edit, an agent editing the worktree), since the supervisor outside the
        sandbox would follow it when it commits, diffs or reads the files.
        """
        for rel in _changed_paths(worktree):
            if not task.is_editable(rel.rstrip("/")):
                return (
                    f"changes {rel}, which is not editable (editable: {', '.join(task.editable)})"
                )
            kind = _file_kind(worktree / rel)
            if kind not in ("file", "missing"):
                return f"makes {rel.rstrip('/')} a {kind} (a proposal may only write regular files)"
        for rel, digest in self.frozen_hashes().items():
            try:  # hashed through a descriptor that followed no link (a frozen file is read-only
                # in the sandbox, but an agent edits the worktree outside it)
                with os.fdopen(open_regular(worktree / rel, worktree), "rb") as f:
                    same = hashlib.file_digest(f, "sha256").hexdigest() == digest
            except OSError:
                same = False
            if not same:
                return f"frozen file {rel} does not match its recorded sha256"
        return None

    def commit(self, worktree: Path, message: str) -> str | None:
        """Commit everything in the worktree; the new sha, or None when nothing changed.

        Only regular files are ever committed: a changed path that is anything else (a
        symlink, a nested repository, a FIFO) is left out, and an entry of another mode
        (120000 a symlink, 160000 a gitlink) is taken out of the index again, so even a
        proposal that `check` refused, committed to record its diff, carries no link into
        git, and a special file cannot make `git add` fail.
        """
        # Left out of `add` (git would store a link, or fail on a FIFO), then checked again
        # in the index, whatever `add` did.
        odd = [
            rel.rstrip("/")
            for rel in _changed_paths(worktree)
            if _file_kind(worktree / rel) not in ("file", "missing")
        ]
        git(worktree, "add", "-A", "--", ".", *(f":(exclude,literal){rel}" for rel in odd))
        raw = git(worktree, "diff", "--cached", "--raw", "--no-renames", "-z", "HEAD")
        fields = raw.split("\0")
        staged_odd = [
            path
            for head, path in zip(fields[::2], fields[1::2], strict=False)
            if head.startswith(":") and head.split()[1] not in _REGULAR_MODES
        ]
        if staged_odd:
            git(worktree, "reset", "-q", "HEAD", "--", *staged_odd)
        if git_process(worktree, "diff", "--cached", "--quiet", "HEAD").returncode == 0:
            return None
        git(worktree, "commit", "-q", "--no-verify", "-m", message)
        return git(worktree, "rev-parse", "HEAD").strip()

    def cherry_pick(self, worktree: Path, commit: str) -> str | None:
        """Re-apply `commit`'s change (against its parent) onto the worktree's checkout, as a
        three-way merge, without committing. None when it applied; else git's conflict
        lines, and the worktree is left as it was."""
        proc = git_process(worktree, "cherry-pick", "--no-commit", commit)
        if proc.returncode == 0:
            return None
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        conflicts = [line.strip() for line in lines if line.startswith("CONFLICT")]
        git(worktree, "cherry-pick", "--abort", check=False)
        git(worktree, "reset", "-q", "--hard", check=False)
        return "; ".join(conflicts) or (
            lines[-1] if lines else f"git cherry-pick failed ({proc.returncode})"
        )

    def trees(self, commits: list[str]) -> dict[str, str]:
        """commit -> the sha of its tree (identical trees: identical files)."""
        if not commits:
            return {}
        # One git process for any number of commits (stdin, not argv: a long ledger fits).
        out = git(
            self.root,
            "cat-file",
            "--batch-check=%(objectname)",
            stdin="".join(f"{c}^{{tree}}\n" for c in commits),
        ).splitlines()
        # A commit that is not in the repository gets a line "<name> missing": left out.
        return {c: line for c, line in zip(commits, out, strict=False) if " " not in line}


_REGULAR_MODES = ("100644", "100755", "000000")  # a file, an executable, a deletion


def _changed_paths(worktree: Path) -> list[str]:
    """Paths that differ from the checkout in `worktree` (git status, untracked files
    listed one by one; an untracked folder git will not enter, e.g. a nested repository,
    ends with '/')."""
    status = git(worktree, "status", "--porcelain", "--untracked-files=all", "-z")
    out, entries = [], iter(status.split("\0"))
    for entry in entries:
        if entry:
            out.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy: the next field is its source
                next(entries, None)
    return out


def _file_kind(path: Path) -> str:
    """What `path` itself is (lstat, no link followed): file, missing, symlink, hard link (a
    regular file with a second name: its content is another file's, e.g. the validation
    split's), folder or special file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file" if st.st_nlink == 1 else "hard link"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "folder" if stat.S_ISDIR(mode) else "special file"


MAX_TAG = 100  # characters of a research tag


def check_tag(tag: str) -> None:
    """A research tag must make valid git refs: `rsilab/<tag>` and `refs/rsilab/<tag>/exp-N`."""
    if tag.startswith("-"):  # it would read as an option to git, and to a person
        raise WorkspaceError(f"tag {tag!r}: must not start with '-'")
    if len(tag) > MAX_TAG:  # ref names are file names: the OS caps them near 255 bytes
        raise WorkspaceError(f"tag {tag[:20]!r}... ({len(tag)} characters): use at most {MAX_TAG}")
    if (
        not tag
        or any(c in tag for c in " ~^:?*[\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in tag)
        or git_process(None, "check-ref-format", f"refs/heads/rsilab/{tag}").returncode != 0
    ):
        raise WorkspaceError(
            f"tag {tag!r}: not usable in a git branch name; use letters, digits, '-', '_' or '.'"
        )


def init_workspace(
    directory: Path, task_dir: Path | None, tag: str, *, resume: bool = False
) -> Workspace:
    """Create (or adopt) a workspace in `directory` with research branch `rsilab/<tag>`.

    - `directory` is a git repo with an rsilab.toml: adopted as is (task_dir ignored).
    - otherwise the task folder is copied into `directory` (which must be empty or absent)
      and committed as the first commit.
    The branch must not exist unless `resume` is set. A mistake changes nothing on disk:
    the tag and the task are checked first, and when creating fails half-way, what this
    call created is removed again.
    """
    check_tag(tag)
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise WorkspaceError(f"{directory}: is a file; choose a new folder for the workspace")
    if (
        (directory / ".git").exists()
        or task_dir is None
        or (directory.exists() and any(directory.iterdir()))
    ):
        return _init_workspace(directory, task_dir, tag, resume=resume)  # adopts, or refuses
    load_task(task_dir)  # a broken task is refused before anything is copied
    created = directory  # the highest folder this call creates: removed again on failure
    while not created.parent.exists():
        created = created.parent
    existed = directory.exists()
    try:
        return _init_workspace(directory, task_dir, tag, resume=resume)
    except BaseException as e:
        if existed:  # it was empty: empty it again
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(e, OSError):
            raise WorkspaceError(
                f"{directory}: cannot create the workspace: {e.strerror or e}"
            ) from None
        raise


def _init_workspace(directory: Path, task_dir: Path | None, tag: str, *, resume: bool) -> Workspace:
    if (directory / ".git").exists():
        if not (directory / CONFIG_NAME).is_file():
            raise WorkspaceError(
                f"{directory}: a git repo without {CONFIG_NAME}; pass an empty folder to copy a task into"
            )
        if not git(directory, "rev-parse", "--verify", "-q", "HEAD", check=False).strip():
            raise WorkspaceError(f"{directory}: the repo has no commit yet; commit the task first")
        _check_committed(directory, load_task(directory))
    else:
        if task_dir is None:
            raise WorkspaceError(f"{directory}: not a workspace; give --task to create one")
        if directory.exists() and any(directory.iterdir()):
            raise WorkspaceError(f"{directory}: not empty and not a git repo; choose a new folder")
        shutil.copytree(
            task_dir,
            directory,
            dirs_exist_ok=True,
            # reference/: human solutions (`rsilab score`) must not be readable by agents
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", STATE_DIR, ".git", "reference"),
        )
        git(directory, "init", "-q", "-b", "main")
        git(directory, "add", "-A")
        git(directory, "commit", "-q", "-m", f"rsilab: task {task_dir.name}")
    task = load_task(directory)  # validates before anything else is written
    exclude = directory / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if f"/{STATE_DIR}/" not in (exclude.read_text() if exclude.exists() else ""):
        with open(exclude, "a") as f:
            f.write(f"\n/{STATE_DIR}/\n")
    ws = Workspace(directory, tag)
    exists = bool(
        git(
            directory, "rev-parse", "--verify", "-q", f"refs/heads/{ws.branch}", check=False
        ).strip()
    )
    if exists and not resume:
        raise WorkspaceError(
            f"branch {ws.branch} already exists in {directory}: use another --tag, or `rsilab run` to resume it"
        )
    if not exists:
        git(directory, "branch", ws.branch, "HEAD")
    ws.state.mkdir(exist_ok=True)
    meta_path = ws.state / META_FILE
    if not meta_path.exists() or not resume:
        head = ws.incumbent_commit()
        # From the commit, not the folder: what runs get is the commit (_check_committed
        # made sure the folder agrees when the workspace was made).
        frozen = {
            rel: sha256_bytes(git_bytes(directory, "show", f"{head}:{rel}"))
            for rel in task.frozen_files(directory)
        }
        meta = {
            "tag": tag,
            "branch": ws.branch,
            "task": task.name,
            "base_commit": head,
            "frozen": frozen,
        }
        atomic_write(meta_path, json.dumps(meta, indent=1))
    return ws


def _check_committed(directory: Path, task: TaskSpec) -> None:
    """An adopted repo's research branch starts at its HEAD, and runs use what is committed
    there: an `rsilab.toml` or a frozen file that is not committed, or differs from HEAD in
    the folder, is refused in one line (the research would silently use another version)."""
    for rel in sorted({CONFIG_NAME, *task.frozen_files(directory)}):
        proc = git_process(directory, "diff", "--quiet", "HEAD", "--", rel)
        tracked = git_process(directory, "cat-file", "-e", f"HEAD:{rel}").returncode == 0
        if not tracked or proc.returncode != 0:
            what = "is not committed" if not tracked else "has uncommitted changes"
            raise WorkspaceError(
                f"{directory / rel}: {what}; commit it first (the research branch starts at "
                "HEAD, and runs use the committed files)"
            )


def open_workspace(directory: Path) -> Workspace:
    """The workspace in `directory` (made by `rsilab init`); a clear error otherwise."""
    directory = directory.resolve()
    meta_path = directory / STATE_DIR / META_FILE
    if not meta_path.is_file():
        raise WorkspaceError(
            f"{directory}: not an rsilab workspace (no {STATE_DIR}/{META_FILE}); run `rsilab init` first"
        )
    try:
        meta = json.loads(meta_path.read_text())
        return Workspace(directory, str(meta["tag"]))
    except (ValueError, KeyError):
        raise WorkspaceError(f"{meta_path}: unreadable; re-run `rsilab init --resume`") from None
