"""Slots and in-flight bookkeeping for the supervisor. Owns: who proposes next, and where.

- `parse_proposers("llm@model-a:2,tuner:1")`: the proposers a run uses and their shares of
  the slots (`NAME[@MODEL][:SHARE]`, comma-separated; `X+tuner` lets the tuner re-tune after
  X's kept changes, as before).
- `Flight`: one experiment (or a re-check of the incumbent) with a run in flight;
  `Progress` and `Worker`: what the live view shows of them; `running(ledger)`: what
  `rsilab status` (another process) can tell of them from the ledger's "run" events.
- `ProposerPool`: the proposers of one supervisor. A free slot goes to the queue first (a
  person's ideas), then to the follower while it has turns, then to the proposer with the
  fewest experiments in flight per share (ties: the fewest started per share), and to the
  follower last, as a fallback. Each proposer proposes in its own thread, one proposal at
  a time, so a slow LLM never holds up the judging of other experiments; `observe` is
  always called from the supervisor's thread and never while that proposer is proposing
  (results that arrive meanwhile wait for it). A proposer that had nothing to propose, or
  only proposed duplicates, is asked again after the next decision.

Not covered: deciding or recording anything (the supervisor), running (the executors).
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsilab.errors import ConfigError
from rsilab.proposers.base import Context, Proposer
from rsilab.record.ledger import Experiment, Ledger
from rsilab.results import Proposal, RunResult
from rsilab.run.executors.base import RunFuture

MAX_DUPLICATES = 5  # duplicates in a row before a proposer waits for the next decision
QUEUE = "queue"  # the human queue's name: it always goes first
_ITEM = re.compile(r"^(?P<name>[A-Za-z_][\w.-]*)(?:@(?P<model>[^:+,]+))?(?::(?P<share>\d+))?(?P<follow>\+tuner)?$")


@dataclass(frozen=True)
class ProposerChoice:
    """One proposer of a run: its registered name, an optional model, its share of the slots."""

    name: str
    model: str = ""
    share: int = 1

    @property
    def label(self) -> str:
        """The name its experiments carry in the ledger (`llm@model` when a model is given)."""
        return f"{self.name}@{self.model}" if self.model else self.name


def parse_proposers(text: str) -> tuple[list[ProposerChoice], bool]:
    """The proposers in `text` and whether the tuner follows (`X+tuner`); ConfigError if bad."""
    choices: list[ProposerChoice] = []
    follow = False
    for raw in text.split(","):
        item = raw.strip()
        m = _ITEM.match(item)
        if m is None:
            raise ConfigError(f"--proposer {text!r}: {item!r} is not NAME[@MODEL][:SHARE][+tuner] "
                              "(e.g. llm:2,tuner:1 or llm+tuner)")
        share = int(m["share"] or 1)
        if share < 1:
            raise ConfigError(f"--proposer {text!r}: a share must be >= 1")
        follow = follow or (bool(m["follow"]) and m["name"] != "tuner")
        choices.append(ProposerChoice(m["name"], m["model"] or "", share))
    labels = [c.label for c in choices]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--proposer {text!r}: a proposer is named twice; give each its own @MODEL")
    if follow and "tuner" in labels:
        raise ConfigError(f"--proposer {text!r}: the tuner is already a proposer; it cannot also follow")
    return choices, follow


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


@dataclass
class Flight:
    """One experiment (kind "trial") or re-check of an incumbent ("recheck") in flight."""

    exp_id: int
    proposal: Proposal
    parent: Experiment  # the incumbent the experiment is judged against
    commit: str
    worktree: Path
    kind: str = "trial"
    depth: int = 0  # how many times this change was re-applied onto a newer incumbent
    sizes: tuple[int, int] = (0, 0)  # non-blank lines of its editable files and its parent's
    knob_only: bool = False  # only knob values differ from the parent (judge.knob_min_runs applies)
    runs: list[RunResult] = field(default_factory=list)
    future: RunFuture | None = None
    run_index: int = 0
    label: str = ""
    since: float = 0.0
    node: str = ""


@dataclass
class ProposalJob:
    """A proposer thinking in its thread; `future` resolves to its Proposal or None."""

    proposer: Proposer
    inc: Experiment  # the incumbent it proposes against
    worktree: Path
    future: concurrent.futures.Future[Proposal | None]
    since: float = field(default_factory=time.time)


class ProposerPool:
    """The proposers of one supervisor (see the module docstring)."""

    def __init__(self, proposers: Sequence[Proposer], follower: Proposer | None,
                 shares: Mapping[str, int] | None = None) -> None:
        self.follower = follower
        self.proposers = list(proposers) + ([follower] if follower is not None else [])
        self.shares = {p.name: max(1, int((shares or {}).get(p.name, 1))) for p in self.proposers}
        self.follow_left = 0
        self.jobs: list[ProposalJob] = []
        self.started: Counter[str] = Counter()
        self._empty: set[int] = set()  # ids of proposers waiting for the next decision
        self._duplicates: Counter[int] = Counter()
        self._waiting: dict[int, list[tuple[Proposal, str, float | None]]] = {}

    # ---- who proposes -----------------------------------------------------------------
    def _busy(self, p: Proposer) -> bool:
        return any(job.proposer is p for job in self.jobs)

    def order(self, in_flight: Mapping[str, int]) -> list[Proposer]:
        """Every proposer in the order a free slot is offered to them."""
        queue = [p for p in self.proposers if p.name == QUEUE and p is not self.follower]
        rest = [p for p in self.proposers if p.name != QUEUE and p is not self.follower]
        index = {id(p): i for i, p in enumerate(rest)}
        rest.sort(key=lambda p: (in_flight.get(p.name, 0) / self.shares[p.name],
                                 self.started[p.name] / self.shares[p.name], index[id(p)]))
        if self.follower is None:
            return queue + rest
        if self.follow_left > 0:
            return [*queue, self.follower, *rest]
        return [*queue, *rest, self.follower]

    def next(self, in_flight: Mapping[str, int]) -> Proposer | None:
        """The proposer that gets the next free slot, or None when none can propose now."""
        for p in self.order(in_flight):
            if not self._busy(p) and id(p) not in self._empty:
                return p
        return None

    def start(self, p: Proposer, ctx: Context, inc: Experiment, worktree: Path) -> ProposalJob:
        """Let `p` propose in its own thread."""
        if p is self.follower and self.follow_left > 0:
            self.follow_left -= 1
        future: concurrent.futures.Future[Proposal | None] = concurrent.futures.Future()
        job = ProposalJob(p, inc, worktree, future)
        self.jobs.append(job)
        self.started[p.name] += 1

        def think() -> None:
            try:
                future.set_result(p.propose(ctx))
            except BaseException as e:  # handed to the supervisor, which re-raises it
                future.set_exception(e)

        # A daemon thread: a proposer stuck in a network call never keeps the process alive.
        threading.Thread(target=think, daemon=True, name=f"rsilab-propose {p.name}").start()
        return job

    def done(self, job: ProposalJob) -> None:
        """The job's result was taken: deliver the results that waited for its proposer."""
        self.jobs.remove(job)
        for proposal, verdict, metric in self._waiting.pop(id(job.proposer), []):
            job.proposer.observe(proposal, verdict, metric)

    # ---- what they learn --------------------------------------------------------------
    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        """Tell the proposer(s) named by the proposal, now or when they finish proposing."""
        for p in self.proposers:
            if p.name != proposal.proposer:
                continue
            if self._busy(p):
                self._waiting.setdefault(id(p), []).append((proposal, verdict, metric))
            else:
                p.observe(proposal, verdict, metric)

    def empty(self, p: Proposer) -> None:
        """`p` had nothing to propose: ask it again after the next decision."""
        self._empty.add(id(p))

    def duplicate(self, p: Proposer) -> None:
        """`p` proposed something already tried or in flight."""
        self._duplicates[id(p)] += 1
        if self._duplicates[id(p)] >= MAX_DUPLICATES:
            self._empty.add(id(p))

    def proposed(self, p: Proposer) -> None:
        """`p` proposed something new."""
        self._duplicates.pop(id(p), None)

    def decided(self) -> None:
        """A decision changed the history or the incumbent: every proposer may try again."""
        self._empty.clear()
        self._duplicates.clear()


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
            latest[exp] = (run, ev.created_at, str(ev.data.get("node", "")), str(ev.data.get("label", "")))
        elif run == prev[0]:  # the run was placed on a node later (a Ray task starting)
            latest[exp] = (run, prev[1], str(ev.data.get("node", prev[2])), prev[3])
    out = []
    for exp_id, e in undecided.items():
        run, since, node, label = latest.get(exp_id, (0, e.started_at, "", "proposed"))
        out.append(Running(exp_id, e.proposer, e.description, label, since, node))
    return out
