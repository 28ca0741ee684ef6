"""The "queue" proposer: human steering. Owns: taking files a person lines up.

A person drops files into `<workspace>/.rsilab/queue/`; they are taken in name order:

- `*.toml`: knob edits, `description = "..."` and a `[knobs]` table (`LR = 0.002`),
  applied with knobs.py to the incumbent's `.py` files;
- `*.patch` / `*.diff`: a unified diff against the editable files, applied with
  `git apply` to a temporary copy of them (`-p1` as `git diff` writes it, else `-p0`).
  The description is the `Subject:` line of a `git format-patch` file, else a first line
  starting with `#`, else the file name.

A taken file waits in `queue/taken/` until its experiment is judged, then moves to
`queue/done/`; if the supervisor dies first (or the experiment is interrupted) it goes
back into the queue (at the first `propose`, after the supervisor replayed the judged
results), so a person's idea is never lost nor run twice. One that cannot be used (bad TOML, unknown knob, a
patch that does not apply or deletes a file) moves to `queue/rejected/` next to a
`NAME.reason` file, and the next one is tried (the supervisor records each one as a
"rejected" event, see `rejections`, so the reason reaches the run log, the ledger, `rsilab
status` and the dashboard).
`propose` returns None when nothing is left.

Not covered: whether the change is allowed (the workspace checks that only editable files
changed) or good (the judge decides).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from rsilab.fsio import read_regular
from rsilab.proposers.base import Context, register
from rsilab.proposers.knobs import set_knobs_in_files
from rsilab.results import Proposal
from rsilab.workspace import git_process

SUFFIXES = (".toml", ".patch", ".diff")
_SEP = "~"  # taken/<unique>~<original name>
TAKEN = "taken"  # files proposed but not yet judged; moved to done/ once judged


class _Rejected(Exception):
    """A queued file that cannot become a proposal (internal: becomes a .reason file)."""


class PatchError(ValueError):
    """A unified diff that cannot be applied to the files (the message says why)."""


@register("queue")
class QueueProposer:
    """Proposals from files a person lines up in `queue_dir` (see the module docstring)."""

    name = "queue"

    def __init__(self, queue_dir: Path | str) -> None:
        self.queue_dir = Path(queue_dir)
        self._requeued = False

    def pending(self) -> list[Path]:
        """The files waiting, in the order they will be taken."""
        if not self.queue_dir.is_dir():
            return []
        return sorted(
            p
            for p in self.queue_dir.iterdir()
            if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")
        )

    def propose(self, ctx: Context) -> Proposal | None:
        if not self._requeued:  # after the supervisor's warm start retired the judged ones
            self._requeue_taken()
            self._requeued = True
        for path in self.pending():
            try:
                if path.suffix == ".toml":
                    proposal = self._from_toml(path, ctx)
                else:
                    proposal = self._from_patch(path, ctx)
            except _Rejected as e:
                self._reject(path, str(e))
                continue
            # A unique name in taken/, so a replayed old result can never retire a new file.
            taken = _move(path, self.queue_dir / TAKEN, f"{time.time_ns():x}{_SEP}{path.name}")
            return replace(proposal, meta={**proposal.meta, "source": taken.name})
        return None

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        """Retire the file of a judged proposal to `done/`; an interrupted one is queued again.

        Nothing to learn otherwise: the person decides what comes next.
        """
        source = proposal.meta.get("source")
        taken = self.queue_dir / TAKEN / str(source) if source else None
        if taken is None or not taken.is_file():
            return  # a warm-start replay, or a proposal of another queue
        original = taken.name.split(_SEP, 1)[-1]
        _move(
            taken, self.queue_dir if verdict == "interrupted" else self.queue_dir / "done", original
        )

    def _requeue_taken(self) -> None:
        """Files taken by a supervisor that died before the result: they go back in line."""
        folder = self.queue_dir / TAKEN
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    _move(path, self.queue_dir, path.name.split(_SEP, 1)[-1])

    # ---- the two kinds of file ------------------------------------------------------
    def _from_toml(self, path: Path, ctx: Context) -> Proposal:
        try:
            data = tomllib.loads(_read_queued(path).decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise _Rejected(f"invalid TOML: {e}") from None
        knobs = data.get("knobs")
        if not isinstance(knobs, dict) or not knobs:
            raise _Rejected("no [knobs] table (expected e.g. [knobs] LR = 0.002)")
        try:
            files = set_knobs_in_files(ctx.files, knobs, ctx.preset)
        except KeyError as e:
            raise _Rejected(str(e.args[0]) if e.args else str(e)) from None
        except (ValueError, SyntaxError) as e:
            raise _Rejected(str(e)) from None
        if not files:
            raise _Rejected("every knob already has that value: nothing changes")
        description = str(data.get("description") or _name_description(path))
        return Proposal(
            description, files, self.name, knobs=dict(knobs), meta={"source": path.name}
        )

    def _from_patch(self, path: Path, ctx: Context) -> Proposal:
        try:
            text = _read_queued(path).decode()
            files = apply_patch(ctx.files, text)
        except UnicodeDecodeError:
            raise _Rejected("not a UTF-8 text file") from None
        except PatchError as e:
            raise _Rejected(str(e)) from None
        description = _patch_description(text) or _name_description(path)
        return Proposal(description, files, self.name, meta={"source": path.name})

    def _reject(self, path: Path, reason: str) -> None:
        dest = _move(path, self.queue_dir / "rejected")
        dest.with_name(dest.name + ".reason").write_text(reason.rstrip() + "\n")


def rejections(queue_dir: Path, told: set[str]) -> list[tuple[str, str]]:
    """(file name, reason) of each file in `queue_dir/rejected/` whose name is not in
    `told`, oldest first: what the supervisor has not recorded yet."""
    folder = queue_dir / "rejected"
    if not folder.is_dir():
        return []
    out = []
    for reason_file in sorted(folder.glob("*.reason"), key=lambda p: p.stat().st_mtime_ns):
        name = reason_file.name.removesuffix(".reason")
        if name not in told:
            raw = read_regular(reason_file)
            out.append((name, (raw or b"").decode(errors="replace").strip() or "no reason given"))
    return out


def apply_patch(files: Mapping[str, str], patch: str) -> dict[str, str]:
    """The files a unified diff changes or adds: path -> new content.

    `files` is left alone; the diff is applied with `git apply` to a temporary copy.
    Raises PatchError when it does not apply, deletes a file or changes nothing, and when
    it would make anything but a regular text file (see `_check_modes`): a patch that turns
    `train.py` into a symlink to the validation split must be refused before anything
    reads the link, since whatever is read here is committed and recorded in the ledger.
    """
    _check_modes(patch)
    with tempfile.TemporaryDirectory(prefix="rsilab-patch-") as tmp:
        root = Path(tmp) / "files"
        root.mkdir()
        patch_file = Path(tmp) / "change.patch"
        patch_file.write_bytes(patch.encode())
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content.encode())
        errors = []
        for strip in ("-p1", "-p0"):
            res = _git(["apply", strip, "--whitespace=nowarn", str(patch_file)], root)
            if res.returncode == 0:
                break
            errors.append(res.stderr.strip() or f"git apply {strip} failed")
        else:
            raise PatchError("patch does not apply: " + errors[0])
        out: dict[str, str] = {}
        present: set[str] = set()
        # os.walk lists links without following them; only regular files are read, through
        # O_NOFOLLOW (a second line behind _check_modes, whatever git apply accepted).
        for folder, dirs, names in os.walk(root):
            for name in sorted(dirs + names):
                p = Path(folder) / name
                rel = p.relative_to(root).as_posix()
                if name in dirs and not p.is_symlink():
                    continue
                raw = read_regular(p, base=root)
                if raw is None:
                    raise PatchError(f"patch makes {rel} a symlink or special file")
                try:
                    content = raw.decode()
                except UnicodeDecodeError:
                    raise PatchError(f"patch makes {rel} a binary file") from None
                present.add(rel)
                if files.get(rel) != content:
                    out[rel] = content
        gone = sorted(rel for rel in files if rel not in present)
        if gone:
            raise PatchError(f"patch deletes {', '.join(gone)} (a proposal cannot delete files)")
        if not out:
            raise PatchError("patch changes nothing")
        return out


_MODE_LINE = re.compile(r"^(?:new file mode|deleted file mode|old mode|new mode) (\d+)\s*$")
_INDEX_LINE = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+ (\d+)\s*$")
_REGULAR_MODES = ("100644", "100755")


def _check_modes(patch: str) -> None:
    """Refuse a diff that makes anything but a regular text file: a mode other than
    100644/100755 in its headers (120000 a symlink, 160000 a gitlink) or a binary hunk.
    Read from the text before `git apply` runs, so nothing such a patch names is touched."""
    for line in patch.splitlines():
        mode = _MODE_LINE.match(line) or _INDEX_LINE.match(line)
        if mode and mode.group(1) not in _REGULAR_MODES:
            kind = {"120000": "a symlink", "160000": "a gitlink (submodule)"}.get(
                mode.group(1), f"mode {mode.group(1)}"
            )
            raise PatchError(f"patch makes {kind}: a proposal may only write regular files")
        if line.startswith(("GIT binary patch", "Binary files ")):
            raise PatchError("patch carries a binary file: a proposal may only write text files")


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A ceiling keeps git from finding a repository above the temporary folder.
    try:
        return git_process(cwd, *args, env={"GIT_CEILING_DIRECTORIES": str(cwd.parent)}, timeout=60)
    except FileNotFoundError:
        raise PatchError("git is not installed; it is needed to apply patches") from None
    except subprocess.TimeoutExpired:
        raise PatchError("git apply took longer than 60 s") from None


def _patch_description(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("diff ", "--- ", "Index: ")):
            break
        if line.startswith("Subject:"):
            subject = line.removeprefix("Subject:")
            for more in lines[i + 1 :]:  # a long subject is folded onto indented lines
                if not more[:1].isspace():
                    break
                subject += " " + more.strip()
            return re.sub(r"^\[[^]]*\]\s*", "", subject.strip()).strip()
    if lines and lines[0].startswith("#"):
        return lines[0].lstrip("#").strip()
    return ""


def _read_queued(path: Path) -> bytes:
    """A queued file's bytes, never through a symlink or from a special file (`_Rejected`)."""
    raw = read_regular(path)
    if raw is None:
        raise _Rejected("not a regular file (a symlink, a special file, or over 16 MiB)")
    return raw


def _name_description(path: Path) -> str:
    """`007-try_rope.patch` -> 'try rope'."""
    text = re.sub(r"^\d+[-_. ]*", "", path.stem).replace("_", " ").replace("-", " ").strip()
    return text or path.stem


def _move(path: Path, folder: Path, name: str | None = None) -> Path:
    """Move `path` into `folder` as `name`, never over an existing file; the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(name or path.name)
    dest = folder / base.name
    n = 1
    while dest.exists() or dest.with_name(dest.name + ".reason").exists():
        dest = folder / f"{base.stem}.{n}{base.suffix}"
        n += 1
    path.replace(dest)
    return dest
