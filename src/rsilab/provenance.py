"""Data provenance and the guard. Owns: what a data file is made of, and who may use it.

Every data file a run trains or evaluates on sits in a dataset folder next to its
`manifest.json`. The manifest's "files" entry locks each file's sha256 and size; its
"provenance" entry says where each file's bytes came from:

    {"kind": "real"}                                   # human-written (manifest["source"])
    {"kind": "generated" | "mixed" | "real",           # a derived file (rsilab collapse)
     "segments": [{"offset", "size", "sha256", "kind": "real", "origin": {...}} |
                  {"offset", "size", "sha256", "kind": "generated", "generation",
                   "model": {"artifact_sha256", "code_sha256", "commit", ...},
                   "temperature", "seed", "sampler"}, ...]}

A format-1 manifest without a "provenance" entry (written before it existed) describes
real data: `rsilab prepare` only reads human-written sources (its "source" says which).

The guard, applied by the runner before every run (`check_run_data`):
- validation data must be real and hash-locked: a manifest next to it, its sha256 equal to
  the manifest's, and provenance "real". Anything else is refused with a one-line reason.
- training data must be hash-locked too, and real unless the task sets
  `allow_generated_data = true`; the run's record carries both files' provenance and a
  `generated_train_data` flag, so reports can mark such experiments.

Not covered: code that makes its own synthetic data inside train.py (for example by
sampling from the model it trains). The guard covers the files the runner hands a run;
the sandbox decides what else a run can read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rsilab.fsio import fsync_dir, sha256_bytes, sha256_file, write_synced

MANIFEST = "manifest.json"
FORMAT = 1  # the manifest format of rsilab.data (a provenance entry is an optional addition)
KINDS = ("real", "generated", "mixed")


def kind_of(segments: list[dict[str, Any]]) -> str:
    """ "real", "generated" or "mixed": what a file made of these segments is."""
    kinds = {s.get("kind") for s in segments}
    if kinds == {"real"}:
        return "real"
    if kinds == {"generated"}:
        return "generated"
    return "mixed"


def record(path: Path) -> dict[str, Any]:
    """The provenance record of one data file: where it is, its hash, what it is made of.

    Keys: path, sha256, size, manifest (None when there is none), dataset_id, kind ("real",
    "generated", "mixed" or "unknown"), locked (the file matches the manifest's sha256 and
    size), real_bytes, generated_bytes, source (real data) or segments (derived data).
    """
    path = Path(path)
    rec: dict[str, Any] = {
        "path": str(path.resolve()),
        "sha256": None,
        "size": None,
        "manifest": None,
        "dataset_id": None,
        "kind": "unknown",
        "locked": False,
    }
    try:
        rec["size"] = path.stat().st_size
        rec["sha256"] = sha256_file(path)
    except OSError as e:
        rec["problem"] = f"cannot read {path}: {e.strerror or e}"
        return rec
    mpath = path.parent / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        rec["problem"] = (
            f"{path} has no {MANIFEST} next to it (provenance unknown, not hash-locked)"
        )
        return rec
    except (OSError, ValueError) as e:
        rec["problem"] = f"{mpath} is unreadable ({e})"
        return rec
    rec["manifest"] = str(mpath.resolve())
    if not isinstance(manifest, dict):
        rec["problem"] = f"{mpath} is not an rsilab manifest"
        return rec
    rec["dataset_id"] = manifest.get("dataset_id")
    files = manifest.get("files")
    entry = files.get(path.name) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        rec["problem"] = f"{mpath} does not describe {path.name}"
        return rec
    rec["locked"] = entry.get("sha256") == rec["sha256"] and entry.get("size") == rec["size"]
    if not rec["locked"]:
        rec["problem"] = (
            f"{path} does not match the sha256 in {mpath} (modified after it was prepared)"
        )
    prov = manifest.get("provenance")
    entry_prov = prov.get(path.name) if isinstance(prov, dict) else None
    if entry_prov is None and isinstance(manifest.get("source"), dict) and prov is None:
        entry_prov = {"kind": "real"}  # a manifest from before provenance entries: prepare's data
    if not isinstance(entry_prov, dict) or entry_prov.get("kind") not in KINDS:
        rec.setdefault("problem", f"{mpath} gives no provenance for {path.name}")
        return rec
    segments = entry_prov.get("segments")
    if isinstance(segments, list) and segments:
        problem = _check_segments(segments, rec["size"])
        if problem:
            rec.setdefault("problem", f"{mpath}: {problem}")
            return rec
        kind = kind_of(segments)
        if kind != entry_prov["kind"]:
            rec.setdefault(
                "problem",
                f"{mpath} calls {path.name} {entry_prov['kind']}, its segments say {kind}",
            )
            return rec
        rec["segments"] = segments
        rec["real_bytes"] = sum(s["size"] for s in segments if s["kind"] == "real")
        rec["generated_bytes"] = sum(s["size"] for s in segments if s["kind"] == "generated")
    else:
        if entry_prov["kind"] != "real":
            rec.setdefault(
                "problem", f"{mpath}: a {entry_prov['kind']} file must list its segments"
            )
            return rec
        rec["real_bytes"], rec["generated_bytes"] = rec["size"], 0
    rec["kind"] = entry_prov["kind"]
    if isinstance(manifest.get("source"), dict):
        rec["source"] = manifest["source"]
    return rec


def _check_segments(segments: list[Any], size: int) -> str | None:
    offset = 0
    for i, s in enumerate(segments):
        if not isinstance(s, dict) or s.get("kind") not in ("real", "generated"):
            return f"segment {i} is not a real or generated segment"
        if s.get("offset") != offset or not isinstance(s.get("size"), int) or s["size"] < 0:
            return f"segment {i} does not start where the previous one ends"
        offset += s["size"]
    return None if offset == size else f"segments cover {offset} bytes of {size}"


def check_val(path: Path) -> tuple[dict[str, Any], str | None]:
    """(record, reason to refuse or None): validation data must be real and hash-locked."""
    rec = record(path)
    if rec.get("problem"):
        return rec, f"validation data refused: {rec['problem']}"
    if rec["kind"] != "real":
        return rec, (
            f"validation data refused: {path} is {rec['kind']} data "
            f"({rec.get('generated_bytes', 0)} generated bytes); it must be real"
        )
    return rec, None


def check_train(path: Path, *, allow_generated: bool) -> tuple[dict[str, Any], str | None]:
    """(record, reason to refuse or None): training data must be hash-locked, and real
    unless the task allows generated data."""
    rec = record(path)
    if rec.get("problem"):
        return rec, f"training data refused: {rec['problem']}"
    if rec["kind"] != "real" and not allow_generated:
        return rec, (
            f"training data refused: {path} is {rec['kind']} data "
            f"({rec.get('generated_bytes', 0)} generated bytes) and the task does not set "
            "allow_generated_data = true"
        )
    return rec, None


def check_run_data(
    train: Path | None, val: Path | None, *, allow_generated: bool
) -> tuple[dict[str, Any], str | None]:
    """The data record of one run ({} without data files) and the first refusal, if any."""
    out: dict[str, Any] = {}
    reason = None
    if val is not None:
        out["val"], reason = check_val(val)
    if train is not None:
        out["train"], train_reason = check_train(train, allow_generated=allow_generated)
        reason = reason or train_reason
        out["generated_train_data"] = out["train"]["kind"] in ("generated", "mixed")
        out["allow_generated_data"] = allow_generated
    return out, reason


def experiment_flags(allow_generated: bool) -> dict[str, Any]:
    """What the supervisor adds to the meta of every experiment of a task that lets training
    consume generated data, so reports can mark those experiments."""
    return {"allow_generated_data": True} if allow_generated else {}


def uses_generated_data(evaluation: Mapping[str, Any]) -> bool:
    """Whether a run's record (`RunResult.evaluation`) says it trained on generated data."""
    data = evaluation.get("data")
    return isinstance(data, Mapping) and data.get("generated_train_data") is True


def write_dataset(
    root: Path,
    train: bytes,
    segments: list[dict[str, Any]],
    *,
    dataset_id: str,
    source: dict[str, Any],
) -> Path:
    """Install a derived training set at `root` (train.bin + manifest.json), atomically.

    `segments` say where each byte range of `train` came from (offsets and sizes are
    checked, sha256 filled in here). Written to a temp folder, fsynced, renamed into place:
    a reader sees the whole dataset or none of it. Returns the train.bin path.
    """
    offset = 0
    done = []
    for s in segments:
        chunk = train[offset : offset + s["size"]]
        done.append({"offset": offset, **s, "sha256": sha256_bytes(chunk)})
        offset += s["size"]
    if offset != len(train):
        raise ValueError(f"segments cover {offset} bytes of {len(train)}")
    manifest = {
        "format": FORMAT,
        "dataset_id": dataset_id,
        "source": source,
        "files": {"train.bin": {"sha256": sha256_bytes(train), "size": len(train)}},
        "provenance": {"train.bin": {"kind": kind_of(done) if done else "real", "segments": done}},
        "tokens": {"kind": "bytes", "vocab_size": 256, "dtype": "uint8"},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        write_synced(tmp / "train.bin", train)
        write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
        # A folder renamed into place: more than one file, so not fsio.atomic_write's job.
        if root.exists():  # a leftover of an interrupted attempt: never trusted, replaced
            old = root.parent / f".old-{root.name}-{uuid.uuid4().hex[:8]}"
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, root)
        fsync_dir(root.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "train.bin"
