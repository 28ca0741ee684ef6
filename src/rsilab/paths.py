"""Where state lives. Owns: RSILAB_HOME (default ~/.cache/rsilab) and the layout below it.

Workspace state (ledger, worktrees, run folders) lives in the workspace's own `.rsilab/`;
only shared, re-creatable things (prepared data, downloaded sources) live in the home.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def home() -> Path:
    """The rsilab home folder, created on first use."""
    root = Path(os.environ.get("RSILAB_HOME") or Path.home() / ".cache" / "rsilab")
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir() -> Path:
    d = home() / "data"
    d.mkdir(parents=True, exist_ok=True)
    return d


def bundled_tasks_dir() -> Path:
    return Path(__file__).parent / "tasks"


def stamped_dir(parent: Path, prefix: str = "") -> Path:
    """A new, empty folder under `parent` (created if need be): `prefix`, the local time to
    the second, then a suffix that keeps two folders made in the same second apart."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-", dir=parent))
