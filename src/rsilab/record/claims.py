"""Claimed and confirmed gains. Owns: what each kept change was said to gain when it was
kept, and what the runs made afterwards say it gains.

The **claimed** gain is the judge's effect at the keep: measured on the runs that got the
change kept, so it carries their luck (the winner's curse). The **confirmed** gain uses only
runs that played no part in choosing it: the change's later re-measurements (re-checks and
the partner runs other candidates asked of it, kind "recheck" in the ledger) against every
ok run of the incumbent it was judged against. It is None until there is such a run.
Read-only over a ledger; `rsilab status` and the report show it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from rsilab.record.ledger import Ledger
from rsilab.results import Metric, Verdict

__all__ = ["Claim", "claims"]


@dataclass(frozen=True)
class Claim:
    experiment_id: int
    description: str
    status: str  # "keep", or "discard" once a re-check undid it
    claimed: float | None  # the judge's effect at the keep (positive: better)
    confirmed: float | None  # from later runs only; None: none yet
    confirm_runs: int  # how many later runs the confirmed gain rests on

    @property
    def undone(self) -> bool:
        return self.status != Verdict.KEEP.value


def claims(ledger: Ledger, metric: Metric) -> list[Claim]:
    """Every change that was kept at some point (the baseline aside), in experiment order."""
    decisions: dict[int, list[tuple[str, float | None]]] = {}
    for d in ledger.decisions():
        decisions.setdefault(d.experiment_id, []).append((d.verdict, d.effect))
    runs: dict[int, list[tuple[str, float]]] = {}
    for r in ledger.runs():
        if r.ok and r.metric is not None:
            runs.setdefault(r.experiment_id, []).append((r.kind, r.metric))
    by_commit: dict[str, int] = {}  # the commit of every change kept so far -> its experiment
    out: list[Claim] = []
    for e in ledger.experiments():
        kept = [effect for verdict, effect in decisions.get(e.id, []) if verdict == Verdict.KEEP]
        if e.kind == "baseline":
            by_commit[e.commit] = e.id
            continue
        if not kept:
            continue
        by_commit.setdefault(e.commit, e.id)
        later = [v for kind, v in runs.get(e.id, []) if kind == "recheck"]
        parent = by_commit.get(e.parent or "")
        theirs = [v for _, v in runs.get(parent, [])] if parent is not None else []
        confirmed = (
            metric.gain(statistics.fmean(later), statistics.fmean(theirs))
            if later and theirs
            else None
        )
        out.append(Claim(e.id, e.description, e.status, kept[-1], confirmed, len(later)))
    return out


def claim_lines(found: list[Claim], limit: int = 10) -> list[str]:
    """One line per claim (the last `limit`), for `rsilab status` and the text report."""
    lines = []
    for c in found[-limit:]:
        claimed = f"{c.claimed:+.4g}" if c.claimed is not None else "-"
        if c.confirmed is None:
            later = "not re-measured yet"
        else:
            runs = f"{c.confirm_runs} later run{'s' if c.confirm_runs != 1 else ''}"
            later = f"confirmed {c.confirmed:+.4g} ({runs})"
        undone = ", undone by a re-check" if c.undone else ""
        lines.append(f"#{c.experiment_id} {c.description}: claimed {claimed}, {later}{undone}")
    return lines
