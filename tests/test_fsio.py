"""fsio: a replaced file is whole (old or new), and a failed write leaves no trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from rsilab.fsio import atomic_write


def test_atomic_write_creates_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "results.tsv"
    atomic_write(target, "old\n")
    atomic_write(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["results.tsv"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    atomic_write(target, "old")
    with pytest.raises(TypeError):
        atomic_write(target, cast(Any, 12345))  # not str or bytes: the write itself fails
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
