"""Slots and in-flight bookkeeping for the supervisor. Owns: who proposes next, and where.

Which proposers a run uses and their shares (`--proposer llm:2,tuner:1`) is parsed by
rsilab.proposers.choice; this module only schedules them.

- `Flight`: one experiment (or a re-check of the incumbent) with a run in flight (what the
  live view shows of it is in progress.py).
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
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsilab.proposers.base import Context, Proposer
from rsilab.record.ledger import Experiment
from rsilab.results import Proposal, RunResult
from rsilab.run.executors.base import RunFuture

MAX_DUPLICATES = 5  # duplicates in a row before a proposer waits for the next decision
QUEUE = "queue"  # the human queue's name: it always goes first


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
    # While the incumbent's partner run for this trial is in flight (rsilab.loop.evidence:
    # a run of the incumbent under the seed the candidate's next run will use): its worktree.
    partner: Path | None = None


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

    def __init__(
        self,
        proposers: Sequence[Proposer],
        follower: Proposer | None,
        shares: Mapping[str, int] | None = None,
    ) -> None:
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
        rest.sort(
            key=lambda p: (
                in_flight.get(p.name, 0) / self.shares[p.name],
                self.started[p.name] / self.shares[p.name],
                index[id(p)],
            )
        )
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
