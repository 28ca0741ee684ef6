"""Tests for the "queue" proposer: TOML knob edits and patches a person lines up (real git)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rsilab.proposers.base import Context, create
from rsilab.proposers.knobs import parse_knobs
from rsilab.proposers.queue import PatchError, QueueProposer, apply_patch
from rsilab.results import Metric

TRAIN = """\
LR = 0.001               # peak learning rate
ACT = "gelu"             # one of: gelu, relu


def act(x):
    return x
"""
FILES = {"train.py": TRAIN, "model/extra.py": "X = 1\n"}


def ctx() -> Context:
    return Context(FILES, Metric(), 1.0, [], [])


def make_patch(tmp: Path, edits: dict[str, str], *args: str) -> str:
    """A real `git diff` of FILES against `edits`."""
    repo = tmp / "src-repo"
    repo.mkdir(exist_ok=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    for rel, content in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(content)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base", "--allow-empty"], check=True)
    for rel, content in edits.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(content)
    subprocess.run([*git, "add", "-A"], check=True)
    out = subprocess.run(
        [*git, "diff", "--cached", *args], check=True, capture_output=True, text=True
    )
    subprocess.run([*git, "reset", "-q", "--hard"], check=True)
    return out.stdout


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    d = tmp_path / "ws" / ".rsilab" / "queue"
    d.mkdir(parents=True)
    return d


def test_takes_files_in_name_order(tmp_path: Path, queue: Path) -> None:
    relu = TRAIN.replace("return x", "return max(x, 0)")
    (queue / "002-relu.patch").write_text(
        "# use a relu in act()\n" + make_patch(tmp_path, {"train.py": relu})
    )
    (queue / "001-lr.toml").write_text('description = "double the LR"\n[knobs]\nLR = 0.002\n')
    (queue / "003.diff").write_text(
        "From 1234 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] new helper file\n\n---\n"
        + make_patch(
            tmp_path, {"model/extra.py": "X = 2\n", "model/new.py": "Y = 1\n"}, "--no-prefix"
        )
    )
    (queue / "notes.txt").write_text("ignored")
    proposer = create("queue", queue_dir=queue)

    first = proposer.propose(ctx())
    assert first is not None and first.proposer == "queue"
    assert first.description == "double the LR" and first.knobs == {"LR": 0.002}
    assert list(first.files) == ["train.py"]
    assert parse_knobs(first.files["train.py"])["LR"].value == 0.002
    assert first.files["train.py"] == TRAIN.replace("LR = 0.001 ", "LR = 0.002 ")

    second = proposer.propose(ctx())
    assert second is not None
    assert second.description == "use a relu in act()"
    assert second.files == {"train.py": relu} and second.knobs == {}

    third = proposer.propose(ctx())  # a -p0 patch that also adds a file
    assert third is not None and third.description == "new helper file"
    assert third.files == {"model/extra.py": "X = 2\n", "model/new.py": "Y = 1\n"}

    assert proposer.propose(ctx()) is None
    assert sorted(p.name.split("~")[1] for p in (queue / "taken").iterdir()) == [
        "001-lr.toml",
        "002-relu.patch",
        "003.diff",
    ]
    for judged in (first, second, third):
        proposer.observe(judged, "discard", 1.0)
    assert not any((queue / "taken").iterdir())
    assert sorted(p.name for p in (queue / "done").iterdir()) == [
        "001-lr.toml",
        "002-relu.patch",
        "003.diff",
    ]
    assert (queue / "notes.txt").exists()


def test_rejects_bad_files_with_a_reason(tmp_path: Path, queue: Path) -> None:
    stale = make_patch(tmp_path, {"train.py": TRAIN.replace("return x", "return -x")})
    (queue / "1-stale.patch").write_text(stale.replace("return x", "return x + 0"))
    (queue / "2-unknown.toml").write_text("[knobs]\nWIDTH = 3\n")
    (queue / "3-closed.toml").write_text('[knobs]\nACT = "tanh"\n')
    (queue / "4-broken.toml").write_text("[knobs\n")
    (queue / "5-empty.patch").write_text("# nothing in here\n")
    (queue / "6-good.toml").write_text('[knobs]\nACT = "relu"\n')
    proposer = QueueProposer(queue)

    p = proposer.propose(ctx())
    assert p is not None and p.knobs == {"ACT": "relu"}
    assert p.description == "good"  # from the file name
    rejected = queue / "rejected"
    reasons = {f.name: f.read_text() for f in rejected.glob("*.reason")}
    assert set(reasons) == {
        "1-stale.patch.reason",
        "2-unknown.toml.reason",
        "3-closed.toml.reason",
        "4-broken.toml.reason",
        "5-empty.patch.reason",
    }
    assert "does not apply" in reasons["1-stale.patch.reason"]
    assert "WIDTH" in reasons["2-unknown.toml.reason"]
    assert "not one of" in reasons["3-closed.toml.reason"]
    assert "invalid TOML" in reasons["4-broken.toml.reason"]
    assert "does not apply" in reasons["5-empty.patch.reason"]
    assert (rejected / "1-stale.patch").exists()
    assert proposer.propose(ctx()) is None


def test_patch_that_deletes_a_file_is_rejected(tmp_path: Path, queue: Path) -> None:
    repo_patch = make_patch(tmp_path, {"train.py": TRAIN + "# end\n"})
    deletion = (
        "diff --git a/model/extra.py b/model/extra.py\ndeleted file mode 100644\n"
        "--- a/model/extra.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-X = 1\n"
    )
    (queue / "a.patch").write_text(repo_patch + deletion)
    assert QueueProposer(queue).propose(ctx()) is None
    reason = (queue / "rejected" / "a.patch.reason").read_text()
    assert "deletes model/extra.py" in reason


def test_empty_or_missing_queue(tmp_path: Path) -> None:
    assert QueueProposer(tmp_path / "nowhere").propose(ctx()) is None
    (tmp_path / "q").mkdir()
    assert QueueProposer(tmp_path / "q").propose(ctx()) is None


def test_name_collisions_in_done(queue: Path) -> None:
    proposer = QueueProposer(queue)
    for _ in range(2):
        (queue / "lr.toml").write_text("[knobs]\nLR = 0.003\n")
        p = proposer.propose(ctx())
        assert p is not None
        proposer.observe(p, "keep", 1.0)
    assert sorted(p.name for p in (queue / "done").iterdir()) == ["lr.1.toml", "lr.toml"]


def test_folded_subject_and_apply_patch(tmp_path: Path, queue: Path) -> None:
    patch = make_patch(tmp_path, {"train.py": TRAIN.replace("0.001", "0.01")})
    header = "From 1 Mon Sep 17 00:00:00 2001\nSubject: [PATCH 1/2] a long\n subject line\n\n"
    (queue / "x.patch").write_text(header + patch)
    p = QueueProposer(queue).propose(ctx())
    assert p is not None and p.description == "a long subject line"
    assert apply_patch(FILES, patch) == {"train.py": TRAIN.replace("0.001", "0.01")}
    with pytest.raises(PatchError, match="does not apply"):
        apply_patch({"train.py": "other\n", "model/extra.py": "X = 1\n"}, patch)


def test_an_idea_is_not_lost_when_the_supervisor_dies(queue: Path) -> None:
    (queue / "a.toml").write_text("[knobs]\nLR = 0.003\n")
    (queue / "b.toml").write_text("[knobs]\nLR = 0.004\n")
    first = QueueProposer(queue).propose(ctx())
    assert first is not None and first.knobs == {"LR": 0.003}
    second = QueueProposer(queue)
    second.observe(first, "discard", 2.0)  # judged just before the crash: replayed, retired
    assert (queue / "done" / "a.toml").is_file()
    (queue / "a.toml").write_text("[knobs]\nLR = 0.003\n")  # the person queues it again
    first = QueueProposer(queue).propose(ctx())
    assert first is not None and first.knobs == {"LR": 0.003}
    # The supervisor dies before judging it: a new proposer puts it back in line, first.
    again = QueueProposer(queue)
    p = again.propose(ctx())
    assert p is not None and p.knobs == {"LR": 0.003}
    again.observe(p, "interrupted", None)  # interrupted: queued again, not retired
    assert (queue / "a.toml").is_file()
    p = again.propose(ctx())
    assert p is not None and p.knobs == {"LR": 0.003}
    again.observe(p, "keep", 1.0)
    assert (queue / "done" / "a.1.toml").is_file() and not (queue / "a.toml").exists()
