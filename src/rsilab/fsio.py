"""Durable file writes, file hashes and JSON-safe values. Owns: writing a file so that a
crash or kill -9 leaves either the old content or the new one, never half of it; syncing a
folder so a rename survives; the sha256 of a file (or of bytes in hand); and turning
non-finite floats into None before a value is written as strict JSON.

Every module that writes results (ledger exports, reports, the evaluator's and sampler's
outputs, prepared data, strategy-search state) goes through here; nothing else calls fsync. Folders
installed whole (a prepared dataset, a derived training set) are renamed into place by
their owners, which sync their files with `write_synced` and the parent with `fsync_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20  # bytes read at a time when hashing a file


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
