"""One supervisor per workspace. Owns: the lock a supervisor holds on its workspace, and who
holds it.

A second supervisor on a busy workspace would take the first one's experiments for
interrupted ones (recovery drops their live worktrees), run a second baseline and
duplicate experiments. So every supervisor holds `.rsilab/supervisor.lock` with
`fcntl.flock` for as long as it runs; a second one is refused with a `WorkspaceError` that
says who holds it (pid, host, since when). The kernel releases the lock when its process
dies, `kill -9` included, so a lock left behind is never stale: the next supervisor just
takes it. The file's contents (the holder) are only for the message.

The lock is re-entrant in the thread that holds it: `rsilab run` takes it before it
records anything and `Supervisor.run` takes it again (so every caller of the loop holds
it); another thread of the same process is refused like another process. Other
commands (`status`, `report`, `serve`, `audit`, `stop`) never take it: they only read, or
post to the ledger and the control files the supervisor reads.

Two first `rsilab run`s on one new folder would both create the workspace in it: creation
takes `creating`, an flock on the folder itself, and checks again under it whether the
workspace exists.

Not covered: a workspace on a network filesystem whose flock is not shared between hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rsilab.errors import WorkspaceError

LOCK_FILE = "supervisor.lock"

_held: dict[Path, tuple[int, int, int]] = {}  # lock file -> (fd, depth, holding thread)
_guard = threading.Lock()


def holder(state: Path) -> str:
    """Who holds the lock of the workspace state folder `state`, in words ("" if unknown)."""
    try:
        info = json.loads((state / LOCK_FILE).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # written a moment ago and not yet filled in, or by something else


def held(state: Path) -> bool:
    """Whether a supervisor holds the lock of the workspace state folder `state` now.

    Read without taking the lock (taking it, even for a moment, could refuse a supervisor
    starting at that very moment): from the kernel's table of flocks (/proc/locks, by the
    lock file's inode) where there is one, else from whether the pid recorded in the file
    is alive on this host.
    """
    path = state / LOCK_FILE
    try:
        inode = path.stat().st_ino
    except OSError:
        return False  # no supervisor ever ran here
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        table = None
    if table is not None:
        for line in table.splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 30266 fe:00:2507613 0 EOF"
            if (
                len(fields) >= 6
                and fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"]
                and fields[5].rsplit(":", 1)[-1] == str(inode)
            ):
                return True
        return False
    try:
        info = json.loads(path.read_text())
        if info.get("host") != socket.gethostname():
            return True  # another host's: cannot tell, so take it as running
        os.kill(int(info["pid"]), 0)
    except PermissionError:
        return True  # alive, another user's
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def hold(state: Path, root: Path) -> Iterator[None]:
    """Hold the supervisor lock of the workspace at `root` (its state folder `state`) for the
    body. Raises WorkspaceError (one line: who holds it) when another process does."""
    path = (state / LOCK_FILE).resolve()
    me = threading.get_ident()
    with _guard:
        if path in _held:  # this process holds it already
            fd, depth, thread = _held[path]
            if thread != me:
                raise WorkspaceError(
                    f"{root}: another supervisor is running on this workspace"
                    f" (in this process, thread {thread})"
                )
            _held[path] = (fd, depth + 1, me)
        else:
            _held[path] = (_take(path, root), 1, me)
    try:
        yield
    finally:
        with _guard:
            fd, depth, _ = _held.pop(path)
            if depth > 1:
                _held[path] = (fd, depth - 1, me)
            else:
                os.close(fd)  # releases the flock


def _take(path: Path, root: Path) -> int:
    """Open and flock `path`, then write this process into it; its fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = holder(path.parent)
        raise WorkspaceError(
            f"{root}: another supervisor is running on this workspace"
            f" ({who or 'holder unknown'}); wait for it or stop it with `rsilab stop {root}`"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


@contextlib.contextmanager
def creating(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on `directory` (created if missing) for the body, waiting for
    another process that holds it: the one who creates a workspace there. The caller checks
    again, under it, whether the workspace exists. Folders made here are removed again if
    they are still empty at the end (a creation that failed leaves nothing behind)."""
    made = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a creation takes seconds: wait, then look again
        yield
    finally:
        for folder in made:
            try:
                folder.rmdir()  # only if empty: never what another process put there
            except OSError:
                break
        os.close(fd)
