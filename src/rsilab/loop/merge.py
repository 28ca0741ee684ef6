"""Re-applying a change onto a newer incumbent. Owns: how a winner meets the moved branch.

When an experiment wins against its parent after another experiment was kept, its change
must be carried onto the new incumbent before it can be confirmed there. Two ways, in order:

1. git's three-way merge: `git cherry-pick --no-commit` of the winner's commit in a fresh
   worktree at the new incumbent (the base is the winner's parent).
2. A knob-level merge, when git reports a conflict and the winner only changed knobs
   (UPPER_CASE constants, see proposers/knobs.py): its knob values are set on the new
   incumbent's files. git conflicts on neighbouring lines, and knobs are usually declared
   on neighbouring lines, so without this two tuner wins on adjacent knobs could never
   meet. It refuses when the new incumbent changed one of the same knobs (a real conflict).

`reapply` leaves the merged change in the worktree, uncommitted, and says which way
worked, or why neither did. Not covered: committing, judging or recording (the supervisor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab.config import TaskSpec
from rsilab.workspace import Workspace


@dataclass(frozen=True)
class Merge:
    """How a change met the new incumbent: `how` is "git" or "knobs" when it applied,
    "" when it did not; `conflict` then says why."""

    how: str
    conflict: str = ""


def reapply(
    ws: Workspace,
    task: TaskSpec,
    worktree: Path,
    *,
    parent: str,
    commit: str,
    onto: str,
    preset: str,
) -> Merge:
    """Carry the change parent -> commit onto `onto`, checked out in `worktree`."""
    conflict = ws.cherry_pick(worktree, commit)
    if conflict is None:
        return Merge("git")
    files = knob_merge(
        ws.editable_files(task, parent),
        ws.editable_files(task, commit),
        ws.editable_files(task, onto),
        preset,
    )
    if isinstance(files, str):
        return Merge("", f"{conflict} ({files})")
    problem = ws.apply(worktree, files)
    return Merge("", problem) if problem else Merge("knobs")


def knob_merge(
    parent: Mapping[str, str], candidate: Mapping[str, str], onto: Mapping[str, str], preset: str
) -> dict[str, str] | str:
    """The files of `onto` with the candidate's knob changes (parent -> candidate) set, or
    why a knob-level merge does not apply."""
    from rsilab.proposers.knobs import collect_knobs, same_value, set_knobs_in_files

    before, after = collect_knobs(parent, preset), collect_knobs(candidate, preset)
    changed: dict[str, Any] = {
        name: knob.value
        for name, (_, knob) in after.items()
        if name in before and not same_value(before[name][1].value, knob.value)
    }
    if not changed or set(after) != set(before):
        return "not a change of knobs alone"
    try:
        if {**parent, **set_knobs_in_files(parent, changed, preset)} != dict(candidate):
            return "it changes more than knobs"
        now = collect_knobs(onto, preset)
        moved = sorted(
            n
            for n in changed
            if n not in now or not same_value(now[n][1].value, before[n][1].value)
        )
        if moved:
            return f"the incumbent changed {', '.join(moved)} too"
        return set_knobs_in_files(onto, changed, preset)
    except (KeyError, ValueError, SyntaxError) as e:
        return f"knobs: {e}"
