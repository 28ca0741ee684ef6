"""fsio: a replaced file is whole (old or new), and a failed write leaves no trace."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, cast

import pytest

from rsilab.fsio import (
    atomic_path,
    atomic_write,
    is_regular,
    json_safe,
    read_regular,
    sha256_bytes,
    sha256_file,
    tail_regular,
)


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


def test_atomic_path_replaces_on_success_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "model.pt2"
    with atomic_path(target, suffix=".pt2") as tmp:
        assert tmp.name.endswith(".pt2") and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]


def test_sha256_file_equals_hashlib_over_several_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)  # three full chunks and a partial one
    path = tmp_path / "train.bin"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_json_safe_replaces_non_finite_floats_at_any_depth() -> None:
    obj = {
        "a": math.nan,
        "b": [1.5, math.inf, {"c": -math.inf, "d": (2.0, math.nan)}],
        "e": "nan",
        "f": 3,
        "g": None,
        "h": True,
        "i": 0.0,
    }
    assert json_safe(obj) == {
        "a": None,
        "b": [1.5, None, {"c": None, "d": [2.0, None]}],
        "e": "nan",
        "f": 3,
        "g": None,
        "h": True,
        "i": 0.0,
    }
    assert obj["a"] != obj["a"]  # the input is left as it was
    json.dumps(json_safe(obj), allow_nan=False)  # strict JSON now
    assert json_safe(2.5) == 2.5 and json_safe(math.nan) is None


def test_read_regular_reads_only_regular_files_reached_without_a_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "log").write_bytes(b"line 1\nline 2\n")
    assert read_regular(run / "sub" / "log", base=run) == b"line 1\nline 2\n"
    assert tail_regular(run / "sub" / "log", 7, base=run) == b"line 2\n"
    assert is_regular(run / "sub" / "log")
    os.symlink(secret, run / "link")  # a link to a file
    os.symlink("/proc/self/environ", run / "environ")
    os.mkfifo(run / "fifo")  # opening it must not block
    os.link(secret, run / "hard")  # a second name of a file the run cannot see
    os.symlink(tmp_path, run / "dirlink")  # a folder on the way that is a link
    for name in ("link", "environ", "fifo", "hard", "dirlink/secret", "sub", "missing"):
        assert read_regular(run / name, base=run) is None, name
        assert tail_regular(run / name, 100, base=run) is None, name
        assert not is_regular(run / name), name
    assert read_regular(secret, base=run) is None  # not under the trusted folder
    assert read_regular(run / "sub" / ".." / "link", base=run) is None
    assert read_regular(run / "sub" / "log", base=run, limit=5) is None  # over the cap
    # Without `base`, the file's own folder is trusted as given: only the file is checked.
    (tmp_path / "other").write_bytes(b"ok")
    assert read_regular(run / "dirlink" / "other") == b"ok"
    assert read_regular(run / "link") is None
