"""Durable file writes, file hashes and JSON-safe values. Owns: writing a file so that a
crash or kill -9 leaves either the old content or the new one, never half of it; syncing a
folder so a rename survives; the sha256 of a file (or of bytes in hand); and turning
non-finite floats into None before a value is written as strict JSON; and reading a file
that untrusted code could have planted (`read_regular`, `tail_regular`, `is_regular`).

Every module that writes results (ledger exports, reports, the evaluator's and sampler's
outputs, prepared data, strategy-search state) goes through here; nothing else calls fsync. Folders
installed whole (a prepared dataset, a derived training set) are renamed into place by
their owners, which sync their files with `write_synced` and the parent with `fsync_dir`.

Every read outside the sandbox of a file a run or a proposer could have written (a run's
logs and metrics, a patched file, an agent's description) goes through `read_regular` or
`tail_regular`: no symlink is followed (from a trusted `base` folder down), only a regular
file with one link is read, and never more than a cap. A run could otherwise swap its log
for a link to `/proc/self/environ` or to the validation split, and the supervisor (root,
outside the sandbox) would copy the target into the ledger, git or the dashboard.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20  # bytes read at a time when hashing a file
READ_CAP = 16 << 20  # the most `read_regular` reads by default: logs, metrics, source files


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` (created or truncated) and fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Fsync a folder, so the renames and creations in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the block to fill; on a clean exit it replaces
    `path` the way `atomic_write` does (synced, mode 0644, renamed, folder synced).

    For writers that want a file name rather than bytes (`torch.export.save`); `suffix`
    ends the temporary name (a writer may insist on an extension). On any error the
    temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # what the block wrote, synced before it becomes `path`
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, data: str | bytes) -> None:
    """Replace `path` with `data` (str: UTF-8) so readers see the old file or the new one.

    The parent folder is created if needed; the file ends up mode 0644. A temporary file
    beside `path` is synced, renamed over it, and the folder synced; on any error the
    temporary file is removed and `path` is untouched.
    """
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)  # atomic_path syncs it


def sha256_bytes(data: bytes) -> str:
    """The sha256 of `data`, as hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    """The sha256 of the file at `path`, as hex, read in chunks (a dataset need not fit in
    memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by
    None, so `json.dumps(..., allow_nan=False)` writes strict JSON; tuples become lists,
    keys and every other value are left as they are."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def is_regular(path: Path | str) -> bool:
    """True when `path` itself (not what a symlink points to) is a regular file with a
    single link; False for a link, a folder, a FIFO, a device, a hard link or nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def open_regular(path: Path | str, base: Path | str | None = None) -> int:
    """A read-only descriptor of `path`, opened without following any symlink below `base`
    (default: `path`'s folder, trusted as given); the caller closes it.

    Each folder between `base` and the file is opened relative to the one above with
    O_NOFOLLOW, so a run cannot redirect the read by swapping a folder for a link between a
    check and the open. Raises OSError: ELOOP for a link, ENOTDIR for a link in place of a
    folder, EINVAL for anything but a regular file with one link (a FIFO is opened
    non-blocking, so it cannot hang the reader) or for a `path` not under `base` or with a
    '..' in it, and ENOENT when it is missing.
    """
    path = Path(path)
    top = Path(base) if base is not None else path.parent
    try:
        parts = path.relative_to(top).parts
    except ValueError:
        parts = ()
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, f"{path} is not a file under {top}")
    cloexec = getattr(os, "O_CLOEXEC", 0)
    folder = os.open(top, os.O_RDONLY | os.O_DIRECTORY | cloexec)
    try:
        for part in parts[:-1]:
            inner = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | cloexec, dir_fd=folder
            )
            os.close(folder)
            folder = inner
        fd = os.open(
            parts[-1],
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | cloexec,
            dir_fd=folder,
        )
    finally:
        os.close(folder)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


def read_regular(
    path: Path | str, *, base: Path | str | None = None, limit: int = READ_CAP
) -> bytes | None:
    """The bytes of `path` when it is a regular file reached without a symlink below `base`
    (see `open_regular`) and holds at most `limit` bytes; None otherwise (missing, a link,
    not a regular file, too large): the caller treats all of these as "no such file"."""
    try:
        fd = open_regular(path, base)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def tail_regular(path: Path | str, size: int, *, base: Path | str | None = None) -> bytes | None:
    """The last `size` bytes of `path` (all of it when shorter), read as `read_regular`
    reads; None when it is not a regular file reached without a link. For logs, which a
    run may grow to any size."""
    try:
        fd = open_regular(path, base)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - size))
        return f.read(size)
