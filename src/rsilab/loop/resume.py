"""Resuming a workspace. Owns: making ledger and git agree after any stop, and replaying
the history to fresh proposers.

The ledger is the source of truth. `recover` runs before a supervisor does anything else
(and after Ctrl-C): every experiment without a decision was in flight when the supervisor
stopped and is marked `interrupted`; every worktree is dropped; an experiment ref whose
write was cut off (it is written just after the ledger row) is restored; a keep that the
ledger recorded but the branch did not reach is finished, and a branch move the ledger
does not know is undone. Not covered: deciding anything new (orchestrator.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rsilab.proposers.base import HistoryItem, Proposer
from rsilab.record.ledger import Ledger
from rsilab.results import Proposal, Verdict
from rsilab.workspace import Workspace

Event = Callable[..., None]  # (kind, message, **data): records an event and shows it


def recover(ws: Workspace, ledger: Ledger, event: Event) -> None:
    """Make ledger and git agree (see the module docstring)."""
    for exp in ledger.undecided():
        ledger.add_decision(
            exp.id,
            verdict=Verdict.INTERRUPTED,
            source="supervisor",
            reason="interrupted: the supervisor stopped during this experiment",
        )
        event(
            "recover", f"experiment {exp.id} was running when the supervisor stopped: interrupted"
        )
    dropped = ws.remove_all_worktrees()
    if dropped:
        event("recover", f"removed stale worktrees: {', '.join(dropped)}")
    tagged = ws.tagged()
    for e in ledger.experiments():
        if e.id not in tagged:
            ws.tag_experiment(e.id, e.commit)
            event("recover", f"restored the ref of experiment {e.id}")
    inc = ledger.incumbent()
    if inc is None:
        return
    tip = ws.incumbent_commit()
    if tip == inc.commit:
        return
    if ws.is_ancestor(tip, inc.commit):
        ws.advance(inc.commit, tip)  # the keep was recorded; the ref move was not
        event("recover", f"finished keeping experiment {inc.id}: {ws.branch} -> {inc.commit[:7]}")
    else:
        ws.reset_branch(inc.commit)
        event(
            "recover", f"{ws.branch} was at {tip[:7]}, not in the ledger; reset to {inc.commit[:7]}"
        )


def history(ledger: Ledger) -> list[HistoryItem]:
    """Every decided experiment, for proposers; crashes carry their log tail."""
    items = []
    for e in ledger.experiments():
        if not e.decided:
            continue
        tail = ""
        if e.status in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID):
            failed = [r for r in ledger.runs(e.id) if not r.ok]
            tail = failed[0].log_tail if failed else ""
        items.append(
            HistoryItem(
                e.id,
                e.description,
                e.knobs,
                e.status,
                e.metric,
                e.proposer,
                reason=e.reason,
                log_tail=tail,
                meta=e.meta,
                diff=e.diff,
            )
        )
    return items


def warm_start(ledger: Ledger, proposers: Sequence[Proposer]) -> None:
    """Replay every decided experiment to its proposer in the order they were decided, so a
    resumed run learns on (and a queue retires the ideas judged just before a crash). A
    change that was re-applied onto a newer incumbent is told once, by the re-application."""
    superseded = {row.parent for row in ledger.lineage() if row.merged_onto is not None}
    done = [
        e
        for e in ledger.experiments()
        if e.decided and e.kind != "baseline" and e.id not in superseded
    ]
    for e in sorted(done, key=lambda e: (e.decided_at or 0.0, e.id)):
        proposal = Proposal(e.description, {}, e.proposer, dict(e.knobs), dict(e.meta))
        for p in proposers:
            if p.name == e.proposer:
                p.observe(proposal, e.status, e.metric)
