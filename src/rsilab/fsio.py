"""Durable file writes. Owns: writing a file so that a crash or kill -9 leaves either the
old content or the new one, never half of it, and syncing a folder so a rename survives.

Every module that writes results (ledger exports, reports, the evaluator's and sampler's
outputs, prepared data, meta state) goes through here; nothing else calls fsync.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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


def atomic_write(path: Path | str, data: str | bytes) -> None:
    """Replace `path` with `data` (str: UTF-8) so readers see the old file or the new one.

    The parent folder is created if needed; the file ends up mode 0644. A temporary file
    beside `path` is synced, renamed over it, and the folder synced; on any error the
    temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_synced(Path(tmp), raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
