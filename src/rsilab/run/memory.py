"""What a run's memory is. Owns: the bytes the memory watchdog charges to a set of processes.

RSS alone misses memory a run holds without mapping it, and double-counts what its processes
share. So a run is charged, once each:

- every process's private and file-backed share, PSS minus its shared-memory (shmem) part,
  from `/proc/<pid>/smaps_rollup` (forked workers that share pages are not counted twice);
- every shared-memory object it holds, whole, by its allocated size: a `memfd`, a file in
  `/dev/shm`, a SysV segment or a shared anonymous mapping, whether it is only held by a file
  descriptor (never mapped: RSS and PSS see nothing) or mapped (even one page of it);
- what is stored in a private `/tmp` or `/dev/shm` of its own (a sandbox's size-capped
  tmpfs, told from the host's by its device): files there hold memory with no process
  holding them at all.

Cost: one read of `smaps_rollup` and one listing of `/proc/<pid>/fd` per process per look;
`/proc/<pid>/maps` is read only for a process whose PSS has a shmem part. A process whose
files cannot be read (it just ended, or no /proc) is charged its RSS from /proc/<pid>/stat.

Not covered: memory held by no process of the run (an fd in flight in a unix socket, a SysV
segment no process attaches; the sandbox's own IPC namespace frees those when the run ends),
files a run without a sandbox leaves in the host's /dev/shm (nothing tells them from other
users'), files in a disk-backed /tmp (page cache, not held memory), kernel memory, and GPU
memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

# Names the kernel gives shared-memory objects, in /proc/<pid>/fd links and /proc/<pid>/maps.
_SHMEM_PREFIXES = ("/memfd:", "/dev/shm/", "/SYSV", "/dev/zero")
_TMPFS_DIRS = ("/tmp", "/dev/shm")  # a sandbox gives a run private ones (sandbox.py)


class _Member(Protocol):
    """A process of a run, as process.scan() reads it."""

    @property
    def pid(self) -> int: ...

    @property
    def rss(self) -> int: ...  # bytes: the fallback when smaps_rollup cannot be read


def held_bytes(members: Iterable[_Member]) -> int:
    """Bytes of memory held by `members` (processes of one run), as the module docstring says."""
    total = 0
    shmem: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> allocated bytes
    mounts: dict[int, int] = {}  # st_dev of a private tmpfs -> bytes stored in it
    hosts = _devices("")
    for m in members:
        _private_tmpfs(m.pid, hosts, mounts)
        rollup = _rollup(m.pid)
        if rollup is None:
            total += m.rss
            continue
        pss, pss_shmem = rollup
        total += pss - pss_shmem
        _held_by_fd(m.pid, shmem)
        if pss_shmem and not _mapped(m.pid, shmem):
            total += pss_shmem  # its objects could not be looked at: at least what it maps
    # An object in a private tmpfs is already in that mount's usage.
    objects = sum(size for (dev, _), size in shmem.items() if dev not in mounts)
    return total + objects + sum(mounts.values())


def _devices(root: str) -> set[int]:
    """st_dev of /tmp and /dev/shm as seen from `root` ("" here, or /proc/<pid>/root)."""
    found = set()
    for d in _TMPFS_DIRS:
        try:
            found.add(os.stat(root + d).st_dev)
        except OSError:
            continue
    return found


def _private_tmpfs(pid: int, hosts: set[int], mounts: dict[int, int]) -> None:
    """The bytes stored in `pid`'s /tmp and /dev/shm where they are not this process's (the
    sandbox mounts private ones)."""
    for d in _TMPFS_DIRS:
        path = f"/proc/{pid}/root{d}"
        try:
            dev = os.stat(path).st_dev
            if dev in hosts or dev in mounts:
                continue
            fs = os.statvfs(path)
        except OSError:
            continue
        mounts[dev] = (fs.f_blocks - fs.f_bfree) * fs.f_frsize


def _rollup(pid: int) -> tuple[int, int] | None:
    """(Pss, Pss_Shmem) of `pid` in bytes, or None when it cannot be read. A kernel without
    Pss_Shmem (before 5.6) gives 0 for it: shmem is then in Pss, and its objects counted whole
    too (over-counted, never missed)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return None
    pss = shm = -1
    for line in text.splitlines():
        if line.startswith(b"Pss:"):
            pss = int(line.split()[1]) * 1024
        elif line.startswith(b"Pss_Shmem:"):
            shm = int(line.split()[1]) * 1024
    if pss < 0:
        return None  # a kernel thread or a process past its exit: no address space
    return pss, max(shm, 0)


def _add(path: str, shmem: dict[tuple[int, int], int]) -> bool:
    """Charge the shmem object at `path` (a /proc link to it) by its allocated blocks; False
    when it cannot be looked at (closed or unmapped meanwhile, or not permitted)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    shmem[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return True


def _held_by_fd(pid: int, shmem: dict[tuple[int, int], int]) -> None:
    """The shmem objects `pid` holds open (mapped or not)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith(_SHMEM_PREFIXES):
            _add(f"{fd_dir}/{fd}", shmem)


def _mapped(pid: int, shmem: dict[tuple[int, int], int]) -> bool:
    """The shmem objects `pid` maps (its fd may be closed): each whole, not only the pages
    it touched, since the rest stays allocated too. Read through /proc/<pid>/map_files (which
    needs root or the same uid); False when one of them could not be looked at."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    ok = True
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(_SHMEM_PREFIXES) and fields[4] != "0":
            ok = _add(f"/proc/{pid}/map_files/{fields[0]}", shmem) and ok
    return ok
