"""The supervisor. Owns: the research loop, resume after a crash, stop rules.

One experiment: a proposer proposes -> the workspace applies it in a fresh worktree at the
incumbent and checks that only editable files changed -> the runner trains and evaluates
it under a fresh seed -> the judge asks for confirmation runs until it decides -> on keep,
the research branch is fast-forwarded -> the ledger records everything -> the proposer
observes the result. A crash of train.py is a result, never a reason to stop.

Crash consistency: the ledger is the source of truth. A decision is written before the
branch moves, so after `kill -9` at any point `recover()` can finish a keep the ledger
recorded, undo a branch move it did not, mark the experiment that was running as
`interrupted` and drop every worktree. The proposer, the judge and the runner never touch
git refs or the ledger; only this module does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab import runner
from rsilab.config import TaskSpec
from rsilab.errors import RsilabError
from rsilab.judge import Judgement, judge, seed_schedule
from rsilab.ledger import Experiment, Ledger
from rsilab.proposers.base import Context, HistoryItem, Proposer
from rsilab.types import Proposal, RunResult, Verdict
from rsilab.workspace import Workspace


@dataclass(frozen=True)
class Limits:
    """Stop rules of one `rsilab run` invocation (a stop file and Ctrl-C always work)."""

    max_experiments: int | None = None  # new experiments in this invocation
    hours: float | None = None
    max_cost: float | None = None  # USD spent on proposals, whole workspace
    max_tokens: int | None = None  # tokens in + out spent on proposals, whole workspace


@dataclass
class Progress:
    """What the live view shows; updated by the supervisor as it goes."""

    started: float = field(default_factory=time.time)
    experiments: int = 0  # finished in this invocation
    kept: int = 0
    discarded: int = 0
    failed: int = 0
    best: float | None = None
    baseline: float | None = None
    current: str = ""  # what is running now
    current_since: float = 0.0
    last: str = ""  # the last decision, one line


Notify = Callable[[str, Progress], None]


def _no_view(message: str, progress: Progress) -> None:
    """The null view: the supervisor never branches on whether anyone watches."""


def _size(files: dict[str, str]) -> int:
    """Size of the editable files for the simplicity rule: non-blank lines."""
    return sum(1 for text in files.values() for line in text.splitlines() if line.strip())


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Supervisor:
    """Runs experiments on one workspace until a stop rule fires."""

    def __init__(self, ws: Workspace, task: TaskSpec, ledger: Ledger, proposers: Sequence[Proposer], *,
                 train_data: Path | None, val_data: Path | None, preset: str | None = None,
                 limits: Limits | None = None, notify: Notify | None = None,
                 follower: Proposer | None = None) -> None:
        self.ws, self.task, self.ledger = ws, task, ledger
        # The follower (the tuner) re-tunes the knobs of new code: after a structural change
        # by another proposer is kept, it gets the next `tuner.follow` experiments.
        self.follower = follower
        self._follow_left = 0
        self.proposers = list(proposers) + ([follower] if follower is not None else [])
        self.train_data, self.val_data, self.preset = train_data, val_data, preset
        self.limits = limits or Limits()
        self.notify = notify or _no_view
        self.progress = Progress()
        self.metric = task.metric_obj

    # ---- bookkeeping ------------------------------------------------------------------
    def _say(self, message: str) -> None:
        self.notify(message, self.progress)

    def _event(self, kind: str, message: str, **data: Any) -> None:
        self.ledger.add_event(kind, message, data=data)
        self._say(message)

    def recover(self) -> None:
        """Make ledger and git agree after any kind of stop, before doing anything else."""
        for exp in self.ledger.undecided():
            self.ledger.add_decision(exp.id, verdict=Verdict.INTERRUPTED, source="supervisor",
                                     reason="interrupted: the supervisor stopped during this experiment")
            self._event("recover", f"experiment {exp.id} was running when the supervisor stopped: interrupted")
        dropped = self.ws.remove_all_worktrees()
        if dropped:
            self._event("recover", f"removed stale worktrees: {', '.join(dropped)}")
        inc = self.ledger.incumbent()
        if inc is None:
            return
        tip = self.ws.incumbent_commit()
        if tip == inc.commit:
            return
        if self.ws.is_ancestor(tip, inc.commit):
            self.ws.advance(inc.commit, tip)  # the keep was recorded; the ref move was not
            self._event("recover", f"finished keeping experiment {inc.id}: {self.ws.branch} -> {inc.commit[:7]}")
        else:
            self.ws.reset_branch(inc.commit)
            self._event("recover", f"{self.ws.branch} was at {tip[:7]}, not in the ledger; reset to {inc.commit[:7]}")

    def history(self) -> list[HistoryItem]:
        """Every decided experiment, for proposers; crashes carry their log tail."""
        items = []
        for e in self.ledger.experiments():
            if not e.decided:
                continue
            tail = ""
            if e.status in (Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID):
                failed = [r for r in self.ledger.runs(e.id) if not r.ok]
                tail = failed[0].log_tail if failed else ""
            items.append(HistoryItem(e.id, e.description, e.knobs, e.status, e.metric, e.proposer,
                                     reason=e.reason, log_tail=tail, meta=e.meta))
        return items

    def warm_start(self) -> None:
        """Replay every decided experiment to its proposer, so a resumed run learns on (and
        a queue retires the ideas that were judged just before a crash)."""
        for e in self.ledger.experiments():
            if not e.decided or e.kind == "baseline":
                continue
            proposal = Proposal(e.description, {}, e.proposer, dict(e.knobs), dict(e.meta))
            for p in self.proposers:
                if p.name == e.proposer:
                    p.observe(proposal, e.status, e.metric)

    # ---- runs -------------------------------------------------------------------------
    def _run(self, workdir: Path, run_dir: Path, seed: int, label: str) -> RunResult:
        self.progress.current, self.progress.current_since = label, time.time()
        self._say(f"{label}: training (seed {seed})")
        result = runner.run(self.task, workdir, run_dir, seed=seed, train_data=self.train_data,
                            val_data=self.val_data, preset=self.preset)
        self.progress.current = ""
        return result

    def _record_run(self, exp_id: int, result: RunResult, kind: str = "trial") -> None:
        with self.ledger.transaction():
            self.ledger.add_run(exp_id, result, kind=kind)
            self.ledger.add_cost(exp_id, "compute", result.train_seconds + result.eval_seconds, "s")
        shown = f"{result.status} {result.metric:.4f}" if result.metric is not None else result.reason
        self._say(f"  run seed={result.seed}: {shown}")

    def ensure_baseline(self) -> Experiment:
        """The incumbent; measures the baseline under several seeds first if there is none."""
        inc = self.ledger.incumbent()
        if inc is not None:
            return inc
        commit = self.ws.incumbent_commit()
        exp_id = self.ledger.add_experiment(parent=None, commit=commit, proposer="baseline",
                                            description="baseline", diff="", kind="baseline")
        self.ws.tag_experiment(exp_id, commit)
        worktree = self.ws.create_worktree(f"exp-{exp_id:04d}", commit)
        try:
            results = []
            for k in range(self.task.judge.noise_runs):
                seed = seed_schedule(self.task.seed, exp_id, k)
                r = self._run(worktree, self.ws.run_dir(exp_id, k), seed, f"baseline run {k + 1}/{self.task.judge.noise_runs}")
                self._record_run(exp_id, r)
                results.append(r)
        finally:
            self.ws.remove_worktree(worktree)
        ok = [r.metric for r in results if r.ok and r.metric is not None]
        if not ok:
            first = results[0]
            self.ledger.add_decision(exp_id, verdict=Verdict.CRASH, reason=f"baseline failed: {first.reason}")
            tail = first.log_tail.strip().splitlines()[-1:] or [""]
            raise RsilabError(f"the baseline failed ({first.reason}); log: {first.log_path} {tail[0]}".strip())
        mean = sum(ok) / len(ok)
        sd = math.sqrt(sum((v - mean) ** 2 for v in ok) / (len(ok) - 1)) if len(ok) > 1 else 0.0
        self.ledger.add_decision(exp_id, verdict=Verdict.KEEP, metric=mean, source="supervisor",
                                 reason=f"baseline: {len(ok)} runs, mean {mean:.4f}, sd {sd:.4f} (the noise floor)")
        self._event("baseline", f"baseline {self.metric.name} {mean:.4f} ± {sd:.4f} over {len(ok)} seeds")
        return self.ledger.experiment(exp_id)

    def recheck(self, inc: Experiment) -> None:
        """Re-measure the incumbent once with a fresh seed (noise floor over time, drift)."""
        n = len(self.ledger.runs(inc.id))
        worktree = self.ws.create_worktree(f"recheck-{inc.id:04d}", inc.commit)
        try:
            seed = seed_schedule(self.task.seed, inc.id, n)
            r = self._run(worktree, self.ws.run_dir(inc.id, n), seed, f"recheck of incumbent #{inc.id}")
            self._record_run(inc.id, r, kind="recheck")
        finally:
            self.ws.remove_worktree(worktree)

    # ---- one experiment ---------------------------------------------------------------
    def propose(self, inc: Experiment, workdir: Path) -> Proposal | None:
        """Ask the proposers in order (the queue first); `workdir` is the new worktree."""
        files = self.ws.editable_files(self.task, inc.commit)
        program_path = self.ws.root / self.task.program
        program = program_path.read_text() if program_path.is_file() else ""
        ctx = Context(files=files, metric=self.metric, incumbent_metric=_mean(self.ledger.incumbent_values()),
                      history=self.history(), in_flight=[], preset=self.preset or "cpu", program=program,
                      editable=tuple(self.task.editable), workdir=workdir, notify=self._say,
                      should_stop=self.ws.stop_file.exists)
        order = list(self.proposers)
        if self.follower is not None:
            order.remove(self.follower)
            # The queue (a person) always goes first; the follower next while it has turns.
            order.insert(1 if self._follow_left > 0 else len(order), self.follower)
            self._follow_left = max(0, self._follow_left - 1)
        for p in order:
            proposal = p.propose(ctx)
            if proposal is not None:
                return proposal
        return None

    def experiment(self, inc: Experiment, proposal: Proposal, worktree: Path) -> Experiment:
        """Apply, run, judge and record one proposal against the incumbent, in `worktree`
        (a fresh checkout of the incumbent, possibly already edited in place by the proposer)."""
        parent = inc.commit
        # A proposer may hand over a failure of its own (e.g. an LLM answer that stayed
        # malformed through every repair round): recorded as invalid, never run.
        problem = proposal.meta.get("invalid") or self.ws.apply(worktree, proposal.files)
        problem = problem or self.ws.check(worktree, self.task)
        commit = self.ws.commit(worktree, proposal.description) or parent
        if commit == parent and problem is None:
            problem = "the proposal changes nothing" + (f" ({proposal.meta['error']})" if "error" in proposal.meta else "")
        diff = self.ws.diff(parent, commit) if commit != parent else ""
        meta = {k: v for k, v in proposal.meta.items() if k not in ("log", "usage")}
        exp_id = self.ledger.add_experiment(parent=parent, commit=commit, proposer=proposal.proposer,
                                            description=proposal.description, diff=diff,
                                            knobs=proposal.knobs, meta=meta, worktree=str(worktree))
        self.ws.tag_experiment(exp_id, commit)
        self._record_proposal_costs(exp_id, proposal)
        self._say(f"experiment {exp_id} [{proposal.proposer}]: {proposal.description}")
        if problem is not None:
            self.ledger.add_decision(exp_id, verdict=Verdict.INVALID, reason=f"invalid: {problem}")
            return self.ledger.experiment(exp_id)
        verdict = self._judge_runs(exp_id, inc, worktree, files_size=_size(
            self.ws.editable_files(self.task, commit)), inc_size=_size(self.ws.editable_files(self.task, parent)))
        if verdict.verdict is Verdict.KEEP:
            self.ws.advance(commit, parent)
        return self.ledger.experiment(exp_id)

    def _record_proposal_costs(self, exp_id: int, proposal: Proposal) -> None:
        """Tokens and money a proposal cost, and its transcript (a file next to its runs)."""
        usage = proposal.meta.get("usage") or {}
        with self.ledger.transaction():
            for kind, unit in (("tokens_in", "tokens"), ("tokens_out", "tokens"), ("cost_usd", "usd")):
                if usage.get(kind):
                    self.ledger.add_cost(exp_id, kind, float(usage[kind]), unit)
        log = proposal.meta.get("log")
        if log:
            path = self.ws.run_dir(exp_id, 0).parent / "proposal.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(log))

    def _judge_runs(self, exp_id: int, inc: Experiment, worktree: Path, *, files_size: int, inc_size: int) -> Judgement:
        runs: list[RunResult] = []
        incumbent = self.ledger.incumbent_values()
        while True:
            k = len(runs)
            seed = seed_schedule(self.task.seed, exp_id, k)
            r = self._run(worktree, self.ws.run_dir(exp_id, k), seed, f"experiment {exp_id} run {k + 1}")
            self._record_run(exp_id, r)
            runs.append(r)
            j = judge(runs, incumbent, self.metric, self.task.judge, candidate_size=files_size,
                      incumbent_size=inc_size, memory_cap_gb=self.task.memory_gb, constraints=self.task.constraints)
            if j.verdict is not Verdict.MORE:
                break
        mean = _mean([r.metric for r in runs if r.ok and r.metric is not None])
        reason = j.reason if not j.flags else f"{j.reason} [{', '.join(j.flags)}]"
        # The decision is durable before the branch moves (see recover()).
        self.ledger.add_decision(exp_id, verdict=j.verdict, reason=reason, effect=j.effect, ci_low=j.ci_low,
                                 ci_high=j.ci_high, p_value=j.p_value, metric=mean)
        return j

    # ---- the loop ---------------------------------------------------------------------
    def _stop_reason(self) -> str | None:
        lim = self.limits
        if lim.max_experiments is not None and self.progress.experiments >= lim.max_experiments:
            return f"reached --max-experiments {lim.max_experiments}"
        if lim.hours is not None and time.time() - self.progress.started >= lim.hours * 3600:
            return f"reached --hours {lim.hours}"
        costs = self.ledger.costs()
        if lim.max_cost is not None and costs.get("cost_usd", 0.0) >= lim.max_cost:
            return f"reached --max-cost {lim.max_cost} (spent ${costs['cost_usd']:.4f})"
        tokens = costs.get("tokens_in", 0.0) + costs.get("tokens_out", 0.0)
        if lim.max_tokens is not None and tokens >= lim.max_tokens:
            return f"reached --max-tokens {lim.max_tokens} (spent {tokens:.0f})"
        if self.ws.stop_file.exists():
            self.ws.stop_file.unlink(missing_ok=True)
            return f"stop file {self.ws.stop_file} found"
        return None

    def _tally(self, exp: Experiment) -> None:
        p = self.progress
        p.experiments += 1
        if exp.status == Verdict.KEEP:
            p.kept += 1
        elif exp.status == Verdict.DISCARD:
            p.discarded += 1
        else:
            p.failed += 1
        inc_values = self.ledger.incumbent_values()
        p.best = _mean(inc_values)
        shown = f"{exp.metric:.4f}" if exp.metric is not None else "-"
        p.last = f"#{exp.id} {exp.status} {shown} {exp.description}: {exp.reason}"
        self._say(p.last)

    def run(self) -> str:
        """Loop until a stop rule; returns why it stopped. Ctrl-C propagates after cleanup."""
        self.recover()
        inc = self.ensure_baseline()
        self.progress.baseline = self.ledger.experiments()[0].metric
        self.progress.best = _mean(self.ledger.incumbent_values())
        self.warm_start()
        since_recheck = 0
        while (reason := self._stop_reason()) is None:
            every = self.task.judge.recheck_every
            if every and since_recheck >= every:
                self.recheck(inc)
                since_recheck = 0
            worktree = self.ws.create_worktree(f"next-{time.time_ns()}", inc.commit)
            try:
                proposal = self.propose(inc, worktree)
                if proposal is None:
                    reason = self._stop_reason() or "no proposer has anything left: nothing left to propose"
                    break
                exp = self.experiment(inc, proposal, worktree)
            except KeyboardInterrupt:
                self.recover()  # marks the experiment interrupted, drops its worktree
                raise
            finally:
                self.ws.remove_worktree(worktree)
            for p in self.proposers:
                if p.name == proposal.proposer:
                    p.observe(proposal, exp.status, exp.metric)
            self._tally(exp)
            if (self.follower is not None and exp.status == Verdict.KEEP
                    and proposal.proposer not in (self.follower.name, "queue")):
                self._follow_left = self.task.tuner.follow
            since_recheck += 1
            inc = self.ledger.incumbent() or inc
        self._event("stop", f"stopped: {reason}")
        return reason
