"""What a person sees of the loop. Owns: `Progress` and `Worker` (the live view's state, kept
by the supervisor as it goes) and `running(ledger)` (what `rsilab status`, another process,
can tell of the experiments in flight from the ledger's "run" events).

Not covered: drawing any of it (rsilab.report.live, rsilab.report.dashboard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rsilab.record.ledger import Ledger


@dataclass(frozen=True)
class Worker:
    """One run in flight: what it runs, since when, where."""

    label: str
    since: float
    node: str


@dataclass
class Progress:
    """What the live view shows; updated by the supervisor as it goes."""

    started: float = field(default_factory=time.time)
    experiments: int = 0  # decided in this invocation
    kept: int = 0
    discarded: int = 0
    failed: int = 0
    best: float | None = None
    baseline: float | None = None
    current: str = ""  # the first run in flight (see `workers` for all of them)
    current_since: float = 0.0
    last: str = ""  # the last decision, one line
    workers: list[Worker] = field(default_factory=list)  # every run in flight
    proposing: list[str] = field(default_factory=list)  # proposers thinking now, with since


@dataclass(frozen=True)
class Running:
    """An experiment in flight as the ledger tells it (for `rsilab status`, another process)."""

    experiment_id: int
    proposer: str
    description: str
    label: str  # "experiment 7 run 2"
    since: float  # when that run started
    node: str


def running(ledger: Ledger) -> list[Running]:
    """Experiments without a decision, each with where and since when its latest run runs
    (from the supervisor's "run" events). After a `kill -9` they stay here until the next
    `rsilab run` recovers them."""
    undecided = {e.id: e for e in ledger.experiments() if not e.decided}
    latest: dict[int, tuple[int, float, str, str]] = {}  # experiment -> run, since, node, label
    for ev in ledger.events() if undecided else []:
        exp, run = ev.data.get("experiment"), ev.data.get("run")
        if ev.kind != "run" or exp not in undecided or not isinstance(run, int):
            continue
        prev = latest.get(exp)
        if prev is None or run > prev[0]:
            latest[exp] = (
                run,
                ev.created_at,
                str(ev.data.get("node", "")),
                str(ev.data.get("label", "")),
            )
        elif run == prev[0]:  # the run was placed on a node later (a Ray task starting)
            latest[exp] = (run, prev[1], str(ev.data.get("node", prev[2])), prev[3])
    out = []
    for exp_id, e in undecided.items():
        run, since, node, label = latest.get(exp_id, (0, e.started_at, "", "proposed"))
        out.append(Running(exp_id, e.proposer, e.description, label, since, node))
    return out
