"""Isolation of a run's processes. Owns: which sandbox a run gets, the command line that puts
a command in it, and keeping one run's writes out of the next run.

Levels, best first (`wrap` picks the best that works here; the ledger and the live view
show which one each run had):

- ``bwrap``: bubblewrap. No network (its own network namespace: not even the host's
  127.0.0.1), its own PID namespace (the run is the child of a reaper that is PID 1 there:
  when the command exits or is killed, the kernel kills everything left in it, daemons
  that double-forked and called setsid included), its own IPC namespace (no SysV shared
  memory that outlives the run), a new session (no TIOCSTI into a terminal). Filesystem:
  everything read-only; `hidden` paths (the validation data, the workspace's ``.rsilab``
  with the ledger, queue and other worktrees, the repository's git dir, RSILAB_HOME,
  ``$HOME``, ``/run``) are covered by empty read-only tmpfs; `readonly` paths (the task's
  frozen files, the training data, the Python install) are bound back read-only; only
  `writable` paths (the worktree, the run folder) can be written. ``/tmp`` and
  ``/dev/shm`` are private and size-capped (so they cannot hold much memory behind the
  RSS watchdog's back). When rsilab runs as root, the command also drops to a throwaway
  uid with ``RLIMIT_NPROC = max_procs`` (root ignores RLIMIT_NPROC, and the limit counts
  every task of a uid, so a fresh uid makes it count exactly this run's processes and
  threads) and ``no_new_privs``; `writable` paths are handed to that uid for the run and
  must be handed back with `reclaim`.
- ``netns``: ``unshare``: no network and a PID namespace, nothing else (for machines where
  bubblewrap is missing or cannot create its namespaces, e.g. some containers).
- ``none``: no isolation; the runner's wall clock, process-group kill and watchdogs only.

``RLIMIT_NPROC`` counts per user: running as root it is only enforced through the uid drop
above; as a normal user it is set to the user's current task count plus `max_procs` (an
approximation: other processes of the same user share the allowance).

Not covered: memory (no cgroups on the machines this was built on, and RLIMIT_AS breaks
CUDA; the runner's RSS watchdog sums the run's process tree instead), disk space, CPU
time beyond the runner's wall clock, and the proposers (an agent CLI runs outside any
sandbox, in its worktree). GPUs: ``/dev/nvidia*`` and ``/dev/dri`` are bound in when present.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsilab.errors import RsilabError
from rsilab.fsio import sha256_file

LEVELS = ("bwrap", "netns", "none")  # best first
CHOICES = ("auto", "require", *LEVELS)
TMP_BYTES = 1 << 30  # size cap of the private /tmp
SHM_BYTES = 256 << 20  # size cap of the private /dev/shm
PROBE_TIMEOUT = 30.0
# Throwaway uids for sandboxed runs when rsilab is root: far above real accounts, one per
# run (pid and a counter), so RLIMIT_NPROC counts only that run's tasks.
_UID_BASE = 1_700_000
_uid_counter = itertools.count()
_uid_lock = threading.Lock()

# Runs inside the sandbox as root, before the command: set the process limit, drop to the
# throwaway uid (uid < 0: keep), forbid setuid binaries, exec the command. Stdlib only and
# `-I -S`, so it starts in milliseconds and imports nothing from the task folder.
_LAUNCHER = (
    "import os, sys, resource, ctypes\n"
    "n, uid = int(sys.argv[1]), int(sys.argv[2])\n"
    "if n > 0:\n"
    "    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))\n"
    "if uid >= 0:\n"
    "    os.setgroups([]); os.setgid(uid); os.setuid(uid)\n"
    "ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


# ---- what works here ------------------------------------------------------------------


def _bwrap_base(network: bool = False) -> list[str]:
    exe = shutil.which("bwrap") or "bwrap"
    args = [
        exe,
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        "rsilab-sandbox",
        "--unshare-cgroup-try",
    ]
    if not network:
        args.append("--unshare-net")
    return [*args, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]


def _try(cmd: list[str]) -> str | None:
    """None when `cmd` runs and exits 0; else why not, in one line."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{Path(cmd[0]).name} failed to start: {e}"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


@functools.cache
def bwrap_problem() -> str | None:
    """None when bubblewrap can build the sandbox here (probed once per process by running
    it for real), else the reason in one line."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    true = shutil.which("true") or "/bin/true"
    problem = _try([*_bwrap_base(), "--tmpfs", "/tmp", true])
    return f"bwrap cannot create its namespaces here: {problem}" if problem else None


@functools.cache
def uid_drop_works() -> bool:
    """Whether, as root, a sandboxed command can drop to a throwaway uid (it cannot where
    root is itself confined to a user namespace without spare uids)."""
    if os.geteuid() != 0 or bwrap_problem() is not None:
        return False
    true = shutil.which("true") or "/bin/true"
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, "64", str(_UID_BASE - 1), true]
    return _try([*_bwrap_base(), *launcher]) is None


@functools.cache
def netns_prefix() -> tuple[str, ...] | None:
    """The `unshare` prefix that gives a run its own network (and, where possible, PID)
    namespace here; None when none works."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    true = shutil.which("true") or "/bin/true"
    pid = ("--pid", "--fork", "--kill-child", "--mount-proc")
    candidates = [
        (exe, "--net", *pid),
        (exe, "--user", "--map-root-user", "--net", *pid),
        (exe, "--net"),
        (exe, "--user", "--map-root-user", "--net"),
    ]
    for prefix in candidates:
        if _try([*prefix, true]) is None:
            return prefix
    return None


def resolve(isolation: str = "auto") -> str:
    """The level a run gets for the setting `isolation` (one of CHOICES). `require` and an
    explicit level raise RsilabError, before anything runs, when it is not usable here."""
    if isolation == "none":
        return "none"
    if isolation in ("require", "bwrap"):
        problem = bwrap_problem()
        if problem is not None:
            if isolation == "require":
                raise RsilabError(
                    f"--require-sandbox: bubblewrap is not usable here: {problem}; "
                    "install bubblewrap or drop --require-sandbox"
                )
            raise RsilabError(
                f'sandbox = "bwrap": bubblewrap is not usable here: {problem}; '
                'install bubblewrap or set sandbox = "auto"'
            )
        return "bwrap"
    if isolation == "netns":
        if netns_prefix() is None:
            raise RsilabError(
                'sandbox = "netns": `unshare --net` does not work here; set sandbox = "auto"'
            )
        return "netns"
    if isolation == "auto":
        if bwrap_problem() is None:
            return "bwrap"
        return "netns" if netns_prefix() is not None else "none"
    raise RsilabError(f"sandbox {isolation!r}: use one of {', '.join(CHOICES)}")


def describe(level: str) -> str:
    """One line for people: the level and what it means here."""
    if level == "bwrap":
        if os.geteuid() != 0:
            limit = "process limit: RLIMIT_NPROC (shared with your other processes)"
        elif uid_drop_works():
            limit = "process limit: RLIMIT_NPROC of a throwaway uid"
        else:
            limit = "process limit: the runner's watchdog only (root without a spare uid)"
        return f"bwrap (no network, private filesystem view, PID namespace, {limit})"
    if level == "netns":
        return "netns (no network; files are not isolated: bubblewrap is not usable here)"
    why = bwrap_problem() or "disabled"
    return f"none (runs are not isolated: {why})"


# ---- paths ----------------------------------------------------------------------------


def _real(p: Path | str) -> Path:
    return Path(os.path.realpath(p))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def rsilab_home() -> Path:
    """RSILAB_HOME as `rsilab.paths` defines it, without creating it."""
    return Path(os.environ.get("RSILAB_HOME") or Path.home() / ".cache" / "rsilab")


def workspace_private(workdir: Path) -> list[Path]:
    """What a run in `workdir` must not see of the workspace it belongs to: the git dir of
    the main repository (refs, objects, other worktrees' admin files) and the workspace's
    `.rsilab` (ledger, queue, other worktrees, other runs). Read from the worktree's `.git`
    file; empty for a plain folder."""
    dot_git = workdir / ".git"
    if not dot_git.is_file():
        return [dot_git] if dot_git.is_dir() else []
    text = dot_git.read_text(errors="replace").strip()
    if not text.startswith("gitdir:"):
        return []
    gitdir = (workdir / text.removeprefix("gitdir:").strip()).resolve()
    common = gitdir
    commondir = gitdir / "commondir"
    if commondir.is_file():
        common = (gitdir / commondir.read_text().strip()).resolve()
    out = [common]
    if common.name == ".git":
        out.append(common.parent / ".rsilab")
    return out


def python_paths() -> list[Path]:
    """The Python install that sandboxed commands need to read: prefixes, site-packages and
    the folders on sys.path (for an editable install of rsilab, its source)."""
    import site

    import rsilab

    found = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        *site.getsitepackages(),
        str(Path(rsilab.__file__).resolve().parents[1]),
    ]
    cwd = _real(os.getcwd())
    found += [p for p in sys.path if p and os.path.isabs(p) and _real(p) != cwd]
    dirs = {_real(p) for p in found}
    # Never /tmp or a folder above it: bound read-only, it would cover the sandbox's private
    # /tmp (torch needs a writable one) and show the host's. A script run from /tmp puts it
    # on sys.path; the sandboxed commands do not import from there.
    dirs = {d for d in dirs if d.is_dir() and not _inside(_real("/tmp"), d)}
    # Only the outermost folders: a folder inside another one is visible through it.
    return sorted(d for d in dirs if not any(o != d and _inside(d, o) for o in dirs))


def default_hidden() -> list[Path]:
    """Hidden from every sandboxed command: the user's home, RSILAB_HOME, and /run (sockets
    of system daemons)."""
    homes = {os.environ.get("HOME", ""), str(Path.home())}
    return [Path(h) for h in sorted(homes) if h] + [rsilab_home(), Path("/run")]


# ---- the command line -----------------------------------------------------------------


def _mounts(
    readonly: Iterable[Path], writable: Iterable[Path], hidden: Iterable[Path]
) -> list[str]:
    """bwrap mount options, parents before children so that a path bound back inside a
    hidden folder (the worktree inside `.rsilab`, the training data inside RSILAB_HOME, a
    frozen file inside the writable worktree) lands on top of it."""
    HIDE, RO, RW = 0, 1, 2
    entries: set[tuple[int, int, str]] = set()
    for kind, paths in ((HIDE, hidden), (RO, readonly), (RW, writable)):
        for p in paths:
            real = _real(p)
            if real == Path("/") or not os.path.lexists(real):
                continue
            entries.add((len(real.parts), kind, str(real)))

    def covered(path: str) -> bool:
        """Whether the nearest other entry above `path` hides it already (then binding
        /dev/null over a file there would only make it exist again, empty)."""
        above = [(d, k) for d, k, o in entries if o != path and _inside(Path(path), Path(o))]
        return bool(above) and max(above)[1] == HIDE

    args: list[str] = []
    hidden_dirs: list[str] = []
    made: set[str] = set()
    for _, kind, path in sorted(entries):
        if kind == HIDE and covered(path):
            continue
        # bwrap would create missing mount points inside a tmpfs with mode 0700, which the
        # sandbox's uid could not cross: create them first, world-readable (no-op if present).
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        if kind == HIDE and os.path.isdir(path):
            args += ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", path]
            hidden_dirs.append(path)
        elif kind == HIDE:
            args += ["--ro-bind", "/dev/null", path]
        else:
            args += ["--ro-bind" if kind == RO else "--bind", path, path]
    for path in hidden_dirs:  # after the binds inside them: their mount points exist now
        args += ["--remount-ro", path]
    return args


def _closed_parents(paths: Iterable[Path]) -> list[Path]:
    """Folders above `paths` that others may not enter (e.g. a 0700 home with the Python
    install or the workspace inside). Covered by a tmpfs like a hidden folder, with the
    paths bound back inside it, they become passable for the sandbox's uid while the rest
    of their content stays out of sight."""
    out: set[Path] = set()
    for p in paths:
        for parent in _real(p).parents:
            with contextlib.suppress(OSError):
                if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
                    out.add(parent)
    return sorted(out)


def _next_uid() -> int:
    with _uid_lock:
        return _UID_BASE + (os.getpid() % 10_000) * 100 + next(_uid_counter) % 100


def _user_tasks() -> int:
    """Tasks (processes and threads) of the current real uid: what RLIMIT_NPROC counts."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _launcher(max_procs: int | None, uid: int | None) -> list[str]:
    """The prefix that sets the process limit (and drops to `uid`); [] when there is
    nothing to set (root without a uid drop: the limit would not apply)."""
    if uid is None and (not max_procs or os.geteuid() == 0):
        return []
    n = 0
    if max_procs:
        n = max_procs if uid is not None else _user_tasks() + max_procs
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(n), str(-1 if uid is None else uid)]


def wrap(
    cmd: Sequence[str],
    *,
    workdir: Path,
    readonly: Sequence[Path],
    writable: Sequence[Path],
    hidden: Sequence[Path],
    network: bool = False,
    max_procs: int | None = None,
    isolation: str = "auto",
) -> tuple[list[str], str]:
    """The command that runs `cmd` (in `workdir`) isolated, and the level it gets.

    `hidden` comes on top of `default_hidden()`; the Python install is added to `readonly`.
    With bwrap as root, `writable` paths are handed to the run's throwaway uid here: call
    `reclaim(writable)` once the command has ended.
    """
    level = resolve(isolation)
    if level == "none":
        return [*_launcher(max_procs, None), *cmd], level
    if level == "netns":
        prefix = list(netns_prefix() or ())
        return [*prefix, *_launcher(max_procs, None), *cmd], level
    hide = [*default_hidden(), *hidden]
    uid = _next_uid() if uid_drop_works() else None
    args = _bwrap_base(network)
    for dev in sorted(glob.glob("/dev/nvidia*")) + ["/dev/dri"]:
        if os.path.exists(dev):
            args += ["--dev-bind", dev, dev]
    args += [
        "--perms",
        "1777",
        "--size",
        str(TMP_BYTES),
        "--tmpfs",
        "/tmp",
        "--perms",
        "1777",
        "--size",
        str(SHM_BYTES),
        "--tmpfs",
        "/dev/shm",
    ]
    # The Python install, except a folder that would expose a hidden path again (sys.path
    # may hold the folder a supervisor was started from, e.g. one above the workspace).
    ro = [*readonly, *(p for p in python_paths() if not any(_inside(_real(h), p) for h in hide))]
    if uid is not None:  # the throwaway uid must reach what is bound in: see _closed_parents
        hide += _closed_parents([*ro, *writable])
    args += _mounts(ro, writable, hide)
    args += [
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--chdir",
        str(_real(workdir)),
    ]
    if uid is not None:
        for p in writable:
            _chown_tree(_real(p), uid, uid)
    return [*args, "--", *_launcher(max_procs, uid), *cmd], level


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """lchown `root` and everything below it (never following a link the run planted)."""
    if not os.path.lexists(root):
        return
    with contextlib.suppress(OSError):
        os.chown(root, uid, gid, follow_symlinks=False)
    if root.is_symlink() or not root.is_dir():
        return
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


def reclaim(paths: Iterable[Path]) -> None:
    """Hand `paths` back to the current user after a sandboxed command (see `wrap`)."""
    for p in paths:
        real = _real(p)
        if not os.path.lexists(real):
            continue
        me = (os.getuid(), os.getgid())
        st = os.lstat(real)
        if (st.st_uid, st.st_gid) != me or real.is_dir():
            _chown_tree(real, *me)


# ---- between runs ---------------------------------------------------------------------


@dataclass
class Pristine:
    """A private copy of a task folder as it was before a run (a `.git` folder left out; a
    worktree's `.git` file, which names its git dir, kept: a run must not redirect it).

    The evaluator runs from it, so nothing a training run writes into its folder (a changed
    frozen file, a `numpy.py` or `rsilab/` that would shadow an import) reaches the
    evaluator; afterwards `restore` puts the folder back as it was, so nothing a run leaves
    there (a checkpoint, a rewritten train.py) reaches the next run of the same commit.
    """

    source: Path
    copy: Path
    hashes: dict[str, str]  # relative path -> sha256 of each regular file
    links: dict[str, str] = field(default_factory=dict)  # relative path -> target of each symlink

    @classmethod
    def take(cls, source: Path) -> Pristine:
        _sweep_pristine()
        copy = Path(tempfile.mkdtemp(prefix=f"rsilab-pristine-{os.getpid()}-"))
        os.chmod(copy, 0o755)  # the sandbox's uid reads it (the evaluator's cwd)
        out = cls(source, copy, {})
        for top, dirs, files in os.walk(source):
            here = Path(top)
            dirs[:] = [d for d in dirs if not (here == source and d == ".git")]
            for name in [*dirs, *files]:
                path = here / name
                rel = path.relative_to(source).as_posix()
                target = copy / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.is_symlink():
                    out.links[rel] = os.readlink(path)
                    os.symlink(out.links[rel], target)
                elif name in files:
                    shutil.copy2(path, target)
                    os.chmod(target, os.stat(target).st_mode | 0o444)
                    out.hashes[rel] = sha256_file(target)
            dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for top, dirs, _ in os.walk(copy):
            for d in dirs:
                os.chmod(Path(top) / d, 0o755)
        return out

    def _same(self, rel: str) -> bool:
        path = self.source / rel
        try:
            if rel in self.links:
                return path.is_symlink() and os.readlink(path) == self.links[rel]
            return (
                not path.is_symlink()
                and path.is_file()
                and sha256_file(path) == self.hashes.get(rel)
            )
        except OSError:
            return False

    def changed(self, rels: Iterable[str]) -> list[str]:
        """Which of `rels` differ now in the source folder (or went missing)."""
        return [rel for rel in rels if not self._same(rel)]

    def restore(self) -> None:
        """Put the source folder back as it was: drop what is new, rewrite what changed."""
        for top, dirs, files in os.walk(self.source, topdown=True):
            here = Path(top)
            keep_dirs = []
            for name in [*dirs, *files]:
                path = here / name
                rel = path.relative_to(self.source).as_posix()
                if here == self.source and name == ".git" and name in dirs:
                    continue
                known = (
                    rel in self.links
                    or rel in self.hashes
                    or (
                        name in dirs
                        and (self.copy / rel).is_dir()
                        and not (self.copy / rel).is_symlink()
                    )
                )
                if not known or (not self._same(rel) and (rel in self.links or path.is_symlink())):
                    remove(path)
                elif name in dirs and not path.is_symlink():
                    keep_dirs.append(name)
            dirs[:] = keep_dirs
        for rel in self.changed([*self.hashes, *self.links]):
            target = self.source / rel
            remove(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel in self.links:
                os.symlink(self.links[rel], target)
            else:
                shutil.copy2(self.copy / rel, target)

    def drop(self) -> None:
        shutil.rmtree(self.copy, ignore_errors=True)


def _sweep_pristine() -> None:
    """Drop copies left by runners that died (kill -9) before they could drop their own."""
    for leftover in Path(tempfile.gettempdir()).glob("rsilab-pristine-*-*"):
        pid = leftover.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def remove(path: Path) -> None:
    """Remove a file, link or folder at `path` (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
