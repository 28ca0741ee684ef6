"""The supervisor. Owns: the research loop, every decision, resume after a crash, stop rules.

One experiment: a proposer proposes -> the workspace applies it in a fresh worktree at the
incumbent and checks that only editable files changed -> an executor trains and evaluates
it under a fresh seed -> the judge asks for confirmation runs until it decides -> on keep,
the research branch is fast-forwarded -> the ledger records everything -> the proposer
observes the result. A crash of train.py is a result, never a reason to stop.

Concurrency: up to `executor.slots` experiments are in flight at once, each with one run
at a time. One thread (the one in `run()`) owns every decision and every ledger and git
write; executors only run, and proposers only propose, each in its own thread (see
scheduler.py: who gets a free slot, shares between proposers). Proposers see the
incumbent and the proposals in flight; a proposal whose files are identical to an
experiment already tried or in flight is skipped without a run (event "duplicate").

One lineage: an experiment is judged against its parent, the incumbent it was proposed
on. A winner whose parent is still the incumbent is kept. A winner whose parent is no
longer the incumbent (another experiment was kept meanwhile) is re-applied: its commit
is cherry-picked (a git three-way merge) in a fresh worktree at the new incumbent. A
conflict discards it ("conflict: ..."); otherwise the merged commit becomes a new
experiment (lineage: parent = the winner, merged_onto = the new incumbent) with new runs
judged against the new incumbent, kept only if it wins there too, while the winner itself
is recorded as "discard" with the reason "re-applied: ..., confirming it as #N". So every
kept experiment's parent is the incumbent before it, and the branch only fast-forwards.

Crash consistency: the ledger is the source of truth. A decision is written before the
branch moves, and an experiment row (with its lineage row, and for a re-application the
winner's decision) is written in one transaction after its commit exists, so after
`kill -9` at any point `recover()` (resume.py) can finish a keep the ledger recorded, undo
a branch move it did not, restore an experiment ref whose write was cut off, mark every
experiment in flight `interrupted` and drop every worktree. The runs die with the
supervisor (see executors/local.py). The proposers, the judge and the executors never
touch git refs or the ledger; only this module (and resume.py, before the loop) does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from rsilab import paths, provenance
from rsilab.config import TaskSpec
from rsilab.errors import RsilabError
from rsilab.fsio import read_regular
from rsilab.loop import evidence, lock, resume
from rsilab.loop.controls import Controls
from rsilab.loop.judge import (
    Judgement,
    Noise,
    cap_breach,
    judge,
    keep_threshold,
    mean_or_none,
    noise_sigma,
    seed_schedule,
)
from rsilab.loop.limits import Limits, reached
from rsilab.loop.merge import Merge, reapply
from rsilab.loop.progress import Progress, Worker
from rsilab.loop.scheduler import Flight, ProposalJob, ProposerPool
from rsilab.loop.seedcheck import baseline_seed_note
from rsilab.notify import Notify
from rsilab.proposers.base import Context, HistoryItem, Proposer
from rsilab.proposers.queue import rejections
from rsilab.record.audit import AcceptanceGate
from rsilab.record.ledger import Experiment, Ledger
from rsilab.results import CPU_KEY, Proposal, RunResult, Status, Verdict
from rsilab.run.bench import Bench
from rsilab.run.executors.base import RunFuture, RunRequest
from rsilab.space import SearchSpace
from rsilab.workspace import Workspace

__all__ = ["Progress", "Supervisor", "View", "Worker"]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the loop looks at the stop file while runs are in flight
MAX_REAPPLY = 3  # re-applications of one change before it is given up
CANCEL_WAIT_SECONDS = 30.0  # how long a hard stop waits for cancelled runs to end


# The live view (rsilab.report.live): each progress line together with the loop's state.
View = Callable[[str, Progress], None]


class KeepGate(Protocol):
    """A last check of a keep before it is recorded (the fidelity ladder, rsilab/loop/ladder.py)."""

    def gate(
        self,
        j: Judgement,
        *,
        ws: Workspace,
        task: TaskSpec,
        ledger: Ledger,
        experiment_id: int,
        candidate: Path,
        incumbent_commit: str,
        bench: Bench,
        notify: Notify,
    ) -> Judgement: ...


def _no_view(message: str, progress: Progress) -> None:
    """The null view: the supervisor never branches on whether anyone watches."""


def _shown(result: RunResult) -> str:
    """A run's outcome in a few words: its status and metric, or why it failed."""
    return f"{result.status} {result.metric:.4f}" if result.metric is not None else result.reason


def _size(files: dict[str, str]) -> int:
    """Size of the editable files for the simplicity rule: non-blank lines."""
    return sum(1 for text in files.values() for line in text.splitlines() if line.strip())


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """Inside the block the first SIGINT raises KeyboardInterrupt and any later one is ignored.

    The cleanup after a stop (cancel the runs, record them interrupted, drop their worktrees)
    must run to its end. A second Ctrl-C, or coreutils `timeout -s INT` (it signals the child,
    then the child's whole process group), would otherwise land inside it, or in the
    standard library's lock code on the way there (seen: "RuntimeError: release unlocked
    lock"), and leave an experiment "running" with its worktree behind. kill -9 still stops
    everything, and is safe. Only the main thread may set handlers, so elsewhere this does
    nothing; nor where SIGINT is ignored (a background job of a script, nohup).
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:
        yield
        return
    fired = False

    def first_only(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first_only)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Supervisor:
    """Runs experiments on one workspace until a stop rule fires."""

    def __init__(
        self,
        ws: Workspace,
        ledger: Ledger,
        bench: Bench,
        proposers: Sequence[Proposer],
        *,
        limits: Limits | None = None,
        view: View | None = None,
        follower: Proposer | None = None,
        shares: Mapping[str, int] | None = None,
    ) -> None:
        """`bench` runs every training run (its task is the research task); the caller owns it
        and closes it."""
        self.ws, self.ledger, self.bench = ws, ledger, bench
        self.task = bench.task
        # The follower (the tuner) re-tunes the knobs of new code: after a structural change
        # by another proposer is kept, it gets the next `tuner.follow` proposals.
        self.follower = follower
        self.pool = ProposerPool(proposers, follower, shares)
        self.proposers = self.pool.proposers
        self.preset = bench.preset
        self.limits = limits or Limits()
        self.view = view or _no_view
        self.progress = Progress()
        self.metric = self.task.metric_obj
        self._flights: list[Flight] = []
        self._batch: list[Flight] = []  # the baseline's runs in flight (judged together)
        self._trees: dict[str, int] | None = None  # files tried or in flight -> experiment
        self._started = 0  # experiments made from proposals in this invocation
        # Counted from the ledger: a resumed session re-checks on the same schedule.
        self._since_recheck = evidence.since_recheck(ledger)
        self._prior: Noise | None = None  # set with the baseline (see `_noise_prior`)
        self._stopping = False  # no new experiments; those in flight finish
        self._hard = False  # cancel the runs in flight too
        self._requested: str | None = None  # stop() was called
        self._say_lock = threading.Lock()
        self.ladder: KeepGate | None = None  # set by `rsilab run --ladder`
        self.controls = Controls(ws, ledger)  # human actions posted to the ledger (dashboard, CLI)
        self._paused = False

    # ---- bookkeeping ------------------------------------------------------------------
    def _say(self, message: str) -> None:
        with self._say_lock:  # proposers report from their own threads
            self.view(message, self.progress)

    def _event(self, kind: str, message: str, **data: Any) -> None:
        self.ledger.add_event(kind, message, data=data)
        self._say(message)

    def stop(self, now: bool = False) -> None:
        """Ask the loop to stop from any thread: after the experiments in flight, or with
        `now` at once, cancelling their runs (they are recorded as interrupted)."""
        self._requested = "stop requested" + (": cancelling the runs in flight" if now else "")
        self._hard = self._hard or now

    def recover(self) -> None:
        """Make ledger and git agree after any kind of stop, before doing anything else."""
        resume.recover(self.ws, self.ledger, self._event)

    def history(self) -> list[HistoryItem]:
        """Every decided experiment, for proposers; crashes carry their log tail."""
        return resume.history(self.ledger)

    def warm_start(self) -> None:
        """Replay every decided experiment to its proposer (see resume.warm_start)."""
        resume.warm_start(self.ledger, self.proposers)

    def _values(self, exp_id: int) -> list[float]:
        """Metric values of an experiment's ok runs (trials and rechecks), in run order."""
        return [r.metric for r in self.ledger.runs(exp_id) if r.ok and r.metric is not None]

    def _cpu_seconds(self, exp_id: int) -> list[float]:
        """CPU seconds of an experiment's ok runs, as the runner counted them (runs recorded
        before the runner counted them have none)."""
        return [
            float(r.result.summary[CPU_KEY])
            for r in self.ledger.runs(exp_id)
            if r.result.ok and CPU_KEY in r.result.summary
        ]

    def _evidence(self, candidate: int, incumbent: int) -> evidence.Evidence:
        """What the ledger holds for judging experiment `candidate` against `incumbent`
        (evidence.Evidence.gather): the incumbent's values and seeds, and the noise groups of
        the recent judged experiments, less the candidate's own runs: its experiment and
        every earlier try of the same change that was re-applied as it (its runs are the
        candidate's too; pooled, a candidate that pins its seed would lower its own bar)."""
        return evidence.Evidence.gather(
            self.ledger,
            incumbent,
            self._tries(candidate),
            self.metric,
            self.task.judge.noise_window,
        )

    def _session_prior(self) -> Noise | None:
        """The prior this session judges with: the one recorded in the ledger when the
        session began (a resumed session must not count its own baseline twice), else the
        one found now, recorded."""
        saved = self.ledger.get_setting("noise_prior")
        if isinstance(saved, dict):
            return Noise(float(saved["var"]), int(saved["df"])) if saved else None
        found = self._noise_prior()
        self.ledger.set_setting("noise_prior", {"var": found.var, "df": found.df} if found else {})
        return found

    def _noise_prior(self, baseline: list[float] | None = None) -> Noise | None:
        """The session's noise prior (evidence.prior): declared by the task, else carried from
        earlier sessions of comparable settings of this configuration on this machine. With
        `baseline` (a fresh baseline's values), they are carried on for later sessions."""
        base = self.ws.info().get("base_commit")
        if not base:
            return evidence.prior(self.task.judge)
        tree = self.ws.trees([str(base)]).get(str(base), str(base))
        key = evidence.prior_key(self.task.comparable(self.preset or "none"), tree)
        store = paths.home() / "noise.json"
        carried = evidence.carried_prior(store, key)
        if baseline is not None:
            evidence.carry_prior(store, key, [baseline], carried)
        return evidence.prior(self.task.judge, carried)

    def _tries(self, exp_id: int) -> set[int]:
        """`exp_id` and the experiments it re-applies (a re-application's lineage parent is
        the earlier try of the same change, see `_reapply`), back to the first try."""
        earlier = {e.experiment_id: e.parent for e in self.ledger.lineage() if e.merged_onto}
        tries = {exp_id}
        while (parent := earlier.get(exp_id)) is not None and parent not in tries:
            tries.add(parent)
            exp_id = parent
        return tries

    def _open_experiment(
        self,
        proposal: Proposal,
        *,
        parent: str | None,
        commit: str,
        diff: str,
        lineage_parent: int | None,
        kind: str = "candidate",
        merged_onto: int | None = None,
        worktree: Path | None = None,
        then: Callable[[int], None] | None = None,
    ) -> int:
        """Record a new experiment of `proposal` at `commit` (with its data-provenance flags and
        its place in the lineage) and tag the commit; returns its id. `then` runs inside the
        same transaction with the new id, so both are recorded or neither."""
        meta = {k: v for k, v in proposal.meta.items() if k not in ("log", "usage")}
        meta |= provenance.experiment_flags(self.task.allow_generated_data)  # marked in reports
        with self.ledger.transaction():
            exp_id = self.ledger.add_experiment(
                parent=parent,
                commit=commit,
                proposer=proposal.proposer,
                description=proposal.description,
                diff=diff,
                kind=kind,
                knobs=proposal.knobs,
                meta=meta,
                worktree=str(worktree) if worktree is not None else "",
            )
            self.ledger.add_lineage(exp_id, parent=lineage_parent, merged_onto=merged_onto)
            if then is not None:
                then(exp_id)
        self.ws.tag_experiment(exp_id, commit)
        return exp_id

    def _record_run(
        self, exp_id: int, result: RunResult, kind: str = "trial", say: bool = True
    ) -> None:
        with self.ledger.transaction():
            self.ledger.add_run(exp_id, result, kind=kind)
            self.ledger.add_cost(exp_id, "compute", result.train_seconds + result.eval_seconds, "s")
        if say:
            self._say(f"  #{exp_id} run seed={result.seed}: {_shown(result)}")

    def _request(
        self, exp_id: int, k: int, worktree: Path, commit: str, label: str, seed: int | None = None
    ) -> RunRequest:
        """Run `k` of an experiment; its seed is `seed`, else a fresh one of the schedule."""
        return self.bench.request(
            worktree,
            self.ws.run_dir(exp_id, k),
            seed_schedule(self.task.seed, exp_id, k) if seed is None else seed,
            label=label,
            key=f"exp-{exp_id:04d}/run-{k}",
            commit=commit,
        )

    def _submitted(self, exp_id: int, req: RunRequest, future: RunFuture) -> str:
        node = self.bench.where(future)
        where = "waits for a free slot" if node == "queued" else f"on {node}"
        self._event(
            "run",
            f"{req.label} {where} (seed {req.seed})",
            experiment=exp_id,
            run=int(req.key.rsplit("-", 1)[1]),
            node=node,
            seed=req.seed,
            label=req.label,
        )
        return node

    def _show(self) -> None:
        """Refresh the workers in the live view (and write where a run landed, once known)."""
        flying = [
            f for f in self._batch + self._flights if f.future is not None and not f.future.done()
        ]
        for f in flying:
            assert f.future is not None
            if (node := self.bench.where(f.future)) != f.node:
                f.node = node
                self._event(
                    "run",
                    f"{f.label} on {node}",
                    experiment=f.exp_id,
                    run=f.run_index,
                    node=node,
                    label=f.label,
                )
        workers = [Worker(f.label, f.since, f.node) for f in flying]
        p = self.progress
        p.workers = workers
        p.current, p.current_since = (workers[0].label, workers[0].since) if workers else ("", 0.0)
        p.proposing = [
            f"{job.proposer.name} since {time.strftime('%H:%M:%S', time.localtime(job.since))}"
            for job in self.pool.jobs
        ]
        self._say("")  # a re-render, no new line

    def ensure_baseline(self) -> Experiment:
        """The incumbent; measures the baseline under several seeds first if there is none
        (judge.noise_runs of them, judge.prior_runs when the session has a noise prior)."""
        self._prior = self._session_prior()
        inc = self.ledger.incumbent()
        if inc is not None:
            return inc
        commit = self.ws.incumbent_commit()
        exp_id = self._open_experiment(
            Proposal("baseline", {}, "baseline"),
            parent=None,
            commit=commit,
            diff="",
            lineage_parent=None,
            kind="baseline",
        )
        worktree = self.ws.create_worktree(f"exp-{exp_id:04d}", commit)
        n = self.task.judge.prior_runs if self._prior else self.task.judge.noise_runs
        try:
            row = self.ledger.experiment(exp_id)
            for k in range(n):  # side by side when there are slots for them
                req = self._request(exp_id, k, worktree, commit, f"baseline run {k + 1}/{n}")
                future = self.bench.submit(req)
                self._batch.append(
                    Flight(
                        exp_id,
                        Proposal("baseline", {}, "baseline"),
                        row,
                        commit,
                        worktree,
                        kind="baseline",
                        future=future,
                        run_index=k,
                        label=req.label,
                        since=time.time(),
                        node=self._submitted(exp_id, req, future),
                    )
                )
            futures = [f.future for f in self._batch if f.future is not None]
            told: set[int] = set()
            while len(told) < len(futures):
                concurrent.futures.wait(futures, timeout=POLL_SECONDS)
                for k, fut in enumerate(futures):  # each told as it ends, not all at the end
                    if fut.done() and k not in told:
                        told.add(k)
                        self._say(f"  baseline run {k + 1}/{n} ended: {_shown(fut.result())}")
                self._show()
            results = [fut.result() for fut in futures]
            for r in results:  # in seed order, whatever order they finished in
                self._record_run(exp_id, r, say=False)
        finally:
            self._batch.clear()
            self.ws.remove_worktree(worktree)
        ok = [r.metric for r in results if r.ok and r.metric is not None]
        if not ok:
            first = results[0]
            self.ledger.add_decision(
                exp_id, verdict=Verdict.CRASH, reason=f"baseline failed: {first.reason}"
            )
            tail = first.log_tail.strip().splitlines()[-1:] or [""]
            raise RsilabError(
                f"the baseline failed ({first.reason}); log: {first.log_path} {tail[0]}".strip()
            )
        mean = sum(ok) / len(ok)
        sd = math.sqrt(sum((v - mean) ** 2 for v in ok) / (len(ok) - 1)) if len(ok) > 1 else 0.0
        self.ledger.add_decision(
            exp_id,
            verdict=Verdict.KEEP,
            metric=mean,
            source="supervisor",
            reason=f"baseline: {len(ok)} runs, mean {mean:.4f}, sd {sd:.4f} (the noise floor)",
        )
        self._noise_prior(baseline=ok)  # for later sessions; this one keeps the prior it had
        spec = self.task.judge
        bar = keep_threshold(
            ok, self.metric, spec, 1, min_runs=spec.knob_min_runs, prior=self._prior
        )
        self._event(
            "baseline",
            f"baseline {self.metric.name} {mean:.4f} ± {sd:.4f} over {len(ok)} seeds"
            + (
                f"; a knob change that beats it by {bar:.4g} is kept on its first run, a smaller "
                f"gain is confirmed with more runs (up to {spec.max_runs})"
                if bar is not None
                else ""
            ),
        )
        if note := baseline_seed_note(results, self.metric.name, spec):  # issue 23: seeds ignored
            self._event("baseline", note)
        return self.ledger.experiment(exp_id)

    def _check_caps(self) -> None:
        """Refuse to research when the incumbent itself breaks a memory cap.

        Every candidate of its size would be discarded for it, all night long; more often
        than not the cap was set for another machine (the bundled task's CPU figure on a
        GPU). Constraints are not checked: getting under one can be the research itself.
        """
        inc = self.ledger.incumbent()
        assert inc is not None
        runs = [r.result for r in self.ledger.runs(inc.id) if r.result.ok]
        host = cap_breach(runs, memory_gb=self.task.memory_gb)
        gpu = cap_breach(runs, gpu_memory_gb=self.task.gpu_memory_gb)
        for key, breach, peak in (
            ("memory_gb", host, max((r.peak_rss_gb for r in runs), default=0.0)),
            ("gpu_memory_gb", gpu, max((r.peak_gpu_memory_gb for r in runs), default=0.0)),
        ):
            if breach:
                raise RsilabError(
                    f"the incumbent #{inc.id} itself breaks a cap: {breach}; no candidate of its "
                    f"size could be kept. Run again with a higher cap, e.g. `--set {key}="
                    f"{math.ceil(2 * peak)}`: the measurements so far are kept"
                )

    # ---- proposals --------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return self._stopping or self.ws.stop_file.exists()

    def _context(self, inc: Experiment, workdir: Path) -> Context:
        files = self.ws.editable_files(self.task, inc.commit)
        program_path = self.ws.root / self.task.program
        program = program_path.read_text() if program_path.is_file() else ""
        in_flight = [f.proposal for f in self._flights if f.kind == "trial"]
        # Never through a link (an agent editing outside the sandbox could plant one there):
        # the text goes into an LLM's prompt.
        queued = {p: read_regular(p) for p in sorted(self.ws.queue_dir.glob("*.idea.md"))}
        ideas = [(p, raw.decode(errors="replace")) for p, raw in queued.items() if raw is not None]
        return Context(
            files=files,
            metric=self.metric,
            incumbent_metric=mean_or_none(self._values(inc.id)),
            ideas=ideas,
            history=self.history(),
            in_flight=in_flight,
            preset=self.preset or "cpu",
            program=program,
            editable=tuple(self.task.editable),
            limits=self.task.limits(),
            workdir=workdir,
            notify=self._say,
            should_stop=self._should_stop,
            **self._judge_figures(inc),
        )

    def _judge_figures(self, inc: Experiment) -> dict[str, Any]:
        """For the researcher's prompt: the incumbent's noise, the gain the judge needs to
        keep a change confirmed by all its runs, and the means of its run summaries."""
        values = self._values(inc.id)
        spec = self.task.judge
        sums: dict[str, list[float]] = {}
        for r in self.ledger.runs(inc.id):
            if not r.result.ok:
                continue
            for key, value in r.result.summary.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    sums.setdefault(str(key), []).append(float(value))
        # train.py's own figures; the runner's bookkeeping (CPU count, handover time, the
        # RSS twin of peak_memory_gb) and zeros only crowd a small model's prompt.
        summary = {
            k: sum(v) / len(v)
            for k, v in sums.items()
            if any(v) and not any(w in k for w in ("cpu_seconds", "handover", "peak_rss"))
        }
        return {
            "noise_sd": noise_sigma(values, self._prior),  # the session's prior pooled in
            "keep_gain": keep_threshold(
                values, self.metric, spec, spec.max_runs, prior=self._prior
            ),
            "incumbent_summary": dict(list(summary.items())[:10]),
        }

    def _known_trees(self) -> dict[str, int]:
        """The files of every experiment tried or in flight (a tree sha) -> its id."""
        if self._trees is None:
            exps = [e for e in self.ledger.experiments() if e.status != Verdict.INTERRUPTED]
            trees = self.ws.trees([e.commit for e in exps])
            self._trees = {}
            for e in exps:
                if e.commit in trees:
                    self._trees.setdefault(trees[e.commit], e.id)
        return self._trees

    def _proposed(self, job: ProposalJob) -> None:
        """A proposer finished thinking: start its experiment (or note why not)."""
        self.pool.done(job)
        self._tell_rejections()
        proposal = job.future.result()  # a proposer's own exception stops the loop, as before
        if proposal is None:
            self.pool.empty(job.proposer)
            self.ws.remove_worktree(job.worktree)
        elif self._stopping:  # asked to stop while it thought: its idea waits for the next run
            self._record_proposal_costs(None, proposal)
            self.pool.observe(proposal, Verdict.INTERRUPTED, None)
            self.ws.remove_worktree(job.worktree)
        else:
            self._begin(job.inc, proposal, job.worktree, job.proposer)

    def _tell_rejections(self) -> None:
        """Queued files the queue rejected (each with a reason file): one event each, so the
        reason reaches the ledger, `rsilab status` and the dashboard, not only the folder."""
        told = {str(ev.data.get("file")) for ev in self.ledger.events_after(0, "rejected")}
        for name, reason in rejections(self.ws.queue_dir, told):
            self._event("rejected", f"queued {name} rejected: {reason}", file=name, reason=reason)

    def _begin(
        self, inc: Experiment, proposal: Proposal, worktree: Path, proposer: Proposer
    ) -> None:
        """Apply, check and record one proposal against `inc` in `worktree` (a fresh checkout
        of the incumbent, possibly already edited in place by the proposer); start its runs."""
        parent = inc.commit
        # A proposer may hand over a failure of its own (e.g. an LLM answer that stayed
        # malformed through every repair round): recorded as invalid, never run.
        problem = proposal.meta.get("invalid") or self.ws.apply(worktree, proposal.files)
        problem = problem or self.ws.check(worktree, self.task)
        commit = self.ws.commit(worktree, proposal.description) or parent
        if commit == parent and problem is None:
            problem = "the proposal changes nothing" + (
                f" ({proposal.meta['error']})" if "error" in proposal.meta else ""
            )
        tree = self.ws.trees([commit]).get(commit, "")
        same = self._known_trees().get(tree) if problem is None else None
        if same is not None:  # the very files were tried, or are in flight: no run, no row
            self._record_proposal_costs(None, proposal)
            status = self.ledger.experiment(same).status
            self._event(
                "duplicate",
                f"skipped a duplicate from {proposal.proposer}: {proposal.description} "
                f"(the same files as experiment {same}, {status})",
                proposer=proposal.proposer,
                description=proposal.description,
                same_as=same,
            )
            self.pool.observe(proposal, "duplicate", None)
            self.pool.duplicate(proposer)
            self.ws.remove_worktree(worktree)
            return
        self.pool.proposed(proposer)
        diff = self.ws.diff(parent, commit) if commit != parent else ""
        exp_id = self._open_experiment(
            proposal,
            parent=parent,
            commit=commit,
            diff=diff,
            lineage_parent=inc.id,
            worktree=worktree,
        )
        self._record_proposal_costs(exp_id, proposal)
        self._started += 1
        self._say(f"experiment {exp_id} [{proposal.proposer}]: {proposal.description}")
        if problem is not None:
            self.ledger.add_decision(exp_id, verdict=Verdict.INVALID, reason=f"invalid: {problem}")
            self.ws.remove_worktree(worktree)
            self._settled(exp_id, proposal)
            return
        self._known_trees()[tree] = exp_id
        self._fly(Flight(exp_id, proposal, inc, commit, worktree, **self._compare(commit, parent)))

    def _compare(self, commit: str, parent: str) -> dict[str, Any]:
        """Flight fields from the editable files of `commit` and its parent: their sizes
        (the simplicity rule) and whether only knob values differ (judge.knob_min_runs)."""
        new, old = (
            self.ws.editable_files(self.task, commit),
            self.ws.editable_files(self.task, parent),
        )
        return {
            "sizes": (_size(new), _size(old)),
            "knob_only": SearchSpace.of(self.task).only_knobs_differ(old, new),
        }

    def _record_proposal_costs(self, exp_id: int | None, proposal: Proposal) -> None:
        """Tokens and money a proposal cost, and its transcript (a file next to its runs)."""
        usage = proposal.meta.get("usage") or {}
        with self.ledger.transaction():
            for kind, unit in (
                ("tokens_in", "tokens"),
                ("tokens_out", "tokens"),
                ("cost_usd", "usd"),
            ):
                if usage.get(kind):
                    self.ledger.add_cost(exp_id, kind, float(usage[kind]), unit)
            stats = proposal.meta.get("proposal")  # wall time, tokens, rounds (llm proposer)
            if isinstance(stats, dict):
                self.ledger.add_proposal_cost(exp_id, proposal.proposer, stats)
        log = proposal.meta.get("log")
        if log and exp_id is not None:
            path = self.ws.run_dir(exp_id, 0).parent / "proposal.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(log))

    # ---- runs and decisions -----------------------------------------------------------
    def _fly(self, flight: Flight) -> None:
        self._flights.append(flight)
        self._submit(flight)

    def _submit(self, flight: Flight) -> None:
        """Start the flight's next run on the executor. With judge.pair_seeds a trial's run
        uses a seed of the incumbent's that the trial has not used yet; when there is none,
        the incumbent runs first under a fresh seed (its partner run, a re-check recorded on
        the incumbent), and the trial's run follows under that seed."""
        k = len(flight.runs) if flight.kind == "trial" else flight.run_index
        label = (
            f"experiment {flight.exp_id} run {k + 1}"
            if flight.kind == "trial"
            else f"recheck of incumbent #{flight.exp_id}"
        )
        seed = None
        if flight.kind == "trial" and self.task.judge.pair_seeds:
            theirs = [r.seed for r in self.ledger.runs(flight.parent.id) if r.ok]
            seed = evidence.candidate_seed(theirs, [r.seed for r in flight.runs])
            if (
                seed is None
                and flight.partner is None
                and k < self.task.judge.max_runs
                and evidence.wants_partner(self._judged_against(flight.parent))
            ):
                self._submit_partner(flight, seed_schedule(self.task.seed, flight.exp_id, k))
                return
        self._launch(flight, flight.exp_id, k, flight.worktree, flight.commit, label, seed)

    def _submit_partner(self, flight: Flight, seed: int) -> None:
        """Run the incumbent of `flight` under `seed` (see `_submit`)."""
        inc = flight.parent
        flight.partner = self.ws.create_worktree(
            f"partner-{inc.id:04d}-{time.time_ns()}", inc.commit
        )
        label = f"incumbent #{inc.id} under experiment {flight.exp_id}'s next seed"
        self._launch(
            flight, inc.id, self._next_index(inc.id), flight.partner, inc.commit, label, seed
        )

    def _launch(
        self, flight: Flight, exp_id: int, k: int, worktree: Path, commit: str, label: str,
        seed: int | None,
    ) -> None:  # fmt: skip
        """Submit run `k` of experiment `exp_id` as the flight's run in flight."""
        req = self._request(exp_id, k, worktree, commit, label, seed)
        flight.future, flight.run_index, flight.label, flight.since = (
            self.bench.submit(req),
            k,
            label,
            time.time(),
        )
        flight.node = self._submitted(exp_id, req, flight.future)
        self._show()

    def _judged_against(self, inc: Experiment) -> int:
        """Decided experiments made on `inc` (its commit as their parent), itself aside."""
        return sum(
            1
            for e in self.ledger.experiments()
            if e.parent == inc.commit and e.decided and e.id != inc.id
        )

    def _next_index(self, exp_id: int) -> int:
        """A run index of `exp_id` that no recorded run and no run in flight has."""
        flying = [
            f.run_index
            for f in self._flights
            if f.future is not None
            and (
                (f.kind == "recheck" and f.exp_id == exp_id)
                or (f.partner and f.parent.id == exp_id)
            )
        ]
        return max([len(self.ledger.runs(exp_id)) - 1, *flying]) + 1

    def _ran(self, flight: Flight) -> None:
        """A run of a flight ended: record it, judge, and run again or decide."""
        assert flight.future is not None
        result, flight.future = flight.future.result(), None
        cancelled = self._hard and result.status is Status.INTERRUPTED
        if flight.partner is not None:  # the incumbent's partner run
            if not cancelled:
                self._record_run(flight.parent.id, result, kind="recheck")
            self.ws.remove_worktree(flight.partner)
            flight.partner = None
            if cancelled or self._hard:
                self._interrupted(flight)
            elif result.ok:
                self._submit(flight)
            else:  # the trial's run goes on under the fresh seed, unpaired
                k = len(flight.runs)
                label = f"experiment {flight.exp_id} run {k + 1}"
                self._launch(
                    flight, flight.exp_id, k, flight.worktree, flight.commit, label, result.seed
                )
            return
        if flight.kind == "recheck":
            if not cancelled:
                self._record_run(flight.exp_id, result, kind="recheck")
            self._drop(flight)
            if not cancelled and self.task.judge.undo:
                self._undo_if_worse(flight.exp_id)
            return
        if not cancelled:
            self._record_run(flight.exp_id, result)
            flight.runs.append(result)
            ev = self._evidence(flight.exp_id, flight.parent.id)
            spec = self.task.judge
            j = judge(
                flight.runs,
                ev.incumbent,
                self.metric,
                self.task.judge,
                candidate_size=flight.sizes[0],
                incumbent_size=flight.sizes[1],
                memory_cap_gb=self.task.memory_gb,
                gpu_memory_cap_gb=self.task.gpu_memory_gb,
                constraints=self.task.constraints,
                noise_groups=ev.noise_groups,
                min_runs=spec.knob_min_runs if flight.knob_only else None,
                cpu_reference=self._cpu_seconds(flight.parent.id) if self.task.budget_flops else (),
                prior=self._prior,
                incumbent_seeds=ev.seeds if spec.pair_seeds else (),
                paired_groups=ev.paired_groups if spec.pair_seeds else (),
            )
            if j.verdict is not Verdict.MORE:
                self._decide(flight, j)
                return
            if not self._hard:
                self._submit(flight)
                return
        self._interrupted(flight)

    def _interrupted(self, flight: Flight) -> None:
        """A hard stop: the run was cut short on purpose (or no more runs may start), so the
        idea is not judged; an interrupted one is proposed again by a later `rsilab run`."""
        self.ledger.add_decision(
            flight.exp_id,
            verdict=Verdict.INTERRUPTED,
            source="supervisor",
            reason=f"interrupted: {self._requested or 'stopped'}",
        )
        self._drop(flight)
        self._settled(flight.exp_id, flight.proposal)

    def _decide(self, flight: Flight, j: Judgement) -> None:
        mean = mean_or_none([r.metric for r in flight.runs if r.ok and r.metric is not None])
        reason = j.reason if not j.flags else f"{j.reason} [{', '.join(j.flags)}]"
        inc = self.ledger.incumbent()
        if j.verdict is Verdict.KEEP and inc is not None and inc.id != flight.parent.id:
            self._reapply(flight, j, inc, mean, reason)
            return
        if j.verdict is Verdict.KEEP:  # runs here, in this thread
            # Every keep is re-checked at acceptance (diff confined, frozen hashes, evaluator
            # provenance), then re-tested on the fidelity ladder when there is one.
            j = AcceptanceGate(then=self.ladder).gate(
                j,
                ws=self.ws,
                task=self.task,
                ledger=self.ledger,
                experiment_id=flight.exp_id,
                candidate=flight.worktree,
                incumbent_commit=flight.parent.commit,
                bench=self.bench,
                notify=self._say,
            )
            reason = j.reason if not j.flags else f"{j.reason} [{', '.join(j.flags)}]"
        # The decision is durable before the branch moves (see recover()).
        log.debug(
            "experiment %d: %s after %d run(s): %s",
            flight.exp_id,
            j.verdict,
            len(flight.runs),
            reason,
        )
        self.ledger.add_decision(
            flight.exp_id,
            verdict=j.verdict,
            reason=reason,
            effect=j.effect,
            ci_low=j.ci_low,
            ci_high=j.ci_high,
            p_value=j.p_value,
            metric=mean,
        )
        if j.verdict is Verdict.KEEP:
            self.ws.advance(flight.commit, flight.parent.commit)
        self._drop(flight)
        self._settled(flight.exp_id, flight.proposal)

    def _reapply(
        self, flight: Flight, j: Judgement, inc: Experiment, mean: float | None, reason: str
    ) -> None:
        """`flight` won against its parent, but `inc` was kept meanwhile: merge its change onto
        `inc` and confirm it there as a new experiment, or record why that cannot be done."""
        won = f"won against its parent #{flight.parent.id} ({reason})"
        figures: dict[str, Any] = {
            "effect": j.effect,
            "ci_low": j.ci_low,
            "ci_high": j.ci_high,
            "p_value": j.p_value,
            "metric": mean,
        }
        why, worktree, commit, tree, merged = "", None, None, "", Merge("")
        if self._hard:
            why = f"interrupted: {won}, but the supervisor is stopping"
        elif flight.depth >= MAX_REAPPLY:
            why = (
                f"superseded: {won}, but the incumbent kept moving ({MAX_REAPPLY} re-applications)"
            )
        else:
            worktree = self.ws.create_worktree(
                f"reapply-{flight.exp_id:04d}-{time.time_ns()}", inc.commit
            )
            merged = reapply(
                self.ws,
                self.task,
                worktree,
                parent=flight.parent.commit,
                commit=flight.commit,
                onto=inc.commit,
                preset=self.preset or "cpu",
            )
            conflict = merged.conflict
            problem = conflict or self.ws.check(worktree, self.task)
            commit = None if problem else self.ws.commit(worktree, flight.proposal.description)
            tree = self.ws.trees([commit]).get(commit, "") if commit else ""
            same = self._known_trees().get(tree)
            if conflict:
                why = f"conflict: {won}, but it does not apply onto the incumbent #{inc.id}: {conflict}"
            elif problem:
                why = f"conflict: {won}, but merged onto the incumbent #{inc.id}: {problem}"
            elif commit is None:
                why = f"superseded: {won}, but the incumbent #{inc.id} already has this change"
            elif same is not None:
                why = f"superseded: {won}; merged onto the incumbent #{inc.id} it is the files of experiment {same}"
        if why:
            verdict = Verdict.INTERRUPTED if self._hard else Verdict.DISCARD
            self.ledger.add_decision(flight.exp_id, verdict=verdict, reason=why, **figures)
            if worktree is not None:
                self.ws.remove_worktree(worktree)
            self._drop(flight)
            self._settled(flight.exp_id, flight.proposal)
            return
        assert worktree is not None and commit is not None
        knobs = dict(flight.proposal.knobs)
        if knobs:  # the knob values of the merged files (the incumbent may have moved some)
            from rsilab.proposers.knobs import collect_knobs

            now = collect_knobs(self.ws.editable_files(self.task, commit), self.preset or "cpu")
            knobs = {n: now[n][1].value if n in now else v for n, v in knobs.items()}
        proposal = replace(
            flight.proposal,
            knobs=knobs,
            meta={
                **flight.proposal.meta,
                "reapply_of": flight.exp_id,
                "merged_onto": inc.id,
                "merge": merged.how,
            },
        )

        def decide_winner(new_id: int) -> None:  # with the new experiment: both or neither
            self.ledger.add_decision(
                flight.exp_id,
                verdict=Verdict.DISCARD,
                **figures,
                reason=(
                    f"re-applied: {won}; the incumbent moved to #{inc.id}, so it is confirmed there as #{new_id}"
                ),
            )

        new_id = self._open_experiment(
            proposal,
            parent=inc.commit,
            commit=commit,
            diff=self.ws.diff(inc.commit, commit),
            lineage_parent=flight.exp_id,
            merged_onto=inc.id,
            worktree=worktree,
            then=decide_winner,
        )
        self._event(
            "reapply",
            f"experiment {flight.exp_id} won against #{flight.parent.id}; re-applied onto "
            f"the incumbent #{inc.id} as experiment {new_id}",
            experiment=flight.exp_id,
            reapplied_as=new_id,
            merged_onto=inc.id,
        )
        self._drop(flight)
        self._settled(
            flight.exp_id, flight.proposal, observe=False
        )  # told once, by the new one's result
        self._known_trees()[tree] = new_id
        self._fly(
            Flight(
                new_id,
                proposal,
                inc,
                commit,
                worktree,
                depth=flight.depth + 1,
                **self._compare(commit, inc.commit),
            )
        )

    def _undo_if_worse(self, exp_id: int) -> None:
        """After a re-check: an incumbent no better than its parent over all their runs
        (evidence.undo) gives way to it. The decision is durable before the branch moves
        back (recover() finishes a move cut short). It waits while a candidate made on this
        incumbent is in flight: that one is judged against it, and the next re-check
        decides again."""
        inc = self.ledger.incumbent()
        if inc is None or inc.id != exp_id or inc.kind == "baseline" or not inc.parent:
            return
        if any(f.parent.id == exp_id for f in self._flights if f.kind == "trial"):
            return
        parent = next(
            (
                e
                for e in self.ledger.experiments()
                if e.commit == inc.parent and e.status == Verdict.KEEP
            ),
            None,
        )
        if parent is None:
            return
        why = evidence.undo(self._values(exp_id), self._values(parent.id), self.metric)
        if why is None:
            return
        self.ledger.add_decision(
            exp_id, verdict=Verdict.DISCARD, source="supervisor", reason=f"undone: {why}",
            metric=inc.metric, effect=inc.effect, ci_low=inc.ci_low, ci_high=inc.ci_high,
            p_value=inc.p_value,
        )  # fmt: skip
        self.ws.reset_branch(parent.commit)
        self._event(
            "undo",
            f"undid experiment {exp_id} ({inc.description}): {why}; the incumbent is "
            f"#{parent.id} again",
            experiment=exp_id,
            incumbent=parent.id,
        )
        self.progress.best = mean_or_none(self.ledger.incumbent_values())

    def _drop(self, flight: Flight) -> None:
        self.ws.remove_worktree(flight.worktree)
        if flight.partner is not None:
            self.ws.remove_worktree(flight.partner)
        self._flights.remove(flight)

    def _settled(self, exp_id: int, proposal: Proposal, observe: bool = True) -> None:
        """An experiment was decided: tell its proposer, count it, let proposers try again."""
        exp = self.ledger.experiment(exp_id)
        if observe:
            self.pool.observe(proposal, exp.status, exp.metric)
        self._tally(exp)
        if (
            self.follower is not None
            and exp.status == Verdict.KEEP
            and proposal.proposer not in (self.follower.name, "queue")
        ):
            self.pool.follow_left = self.task.tuner.follow
        self._since_recheck += 1
        self.pool.decided()

    # ---- the loop ---------------------------------------------------------------------
    def _stop_reason(self) -> str | None:
        limit = reached(
            self.limits,
            started=self._started,
            elapsed_s=time.time() - self.progress.started,
            costs=self.ledger.costs(),
        )
        if limit is not None:
            return limit
        if self.ws.stop_file.exists():
            now = self._stop_now_file()
            self.ws.stop_file.unlink(missing_ok=True)
            return f"stop file {self.ws.stop_file} found" + (
                ": cancelling the runs in flight" if now else ""
            )
        if self.controls.stop_requested():
            return "stop requested from the dashboard: finishing the experiments in flight"
        return self._requested

    def _steer(self) -> bool:
        """Human controls from the ledger, once per loop turn: vetoes applied, the rest told;
        True while paused (nothing new starts; runs in flight finish and are judged)."""
        for action in self.controls.poll():
            self._say(self.controls.apply(action))
        paused = self.controls.pause_action()
        if (paused is not None) != self._paused:
            self._paused = paused is not None
            self._say(f"paused: {paused}" if paused else "resumed")
        return self._paused

    def _stop_now_file(self) -> bool:
        """A stop file that says `now` (`rsilab stop --now`) cancels the runs in flight."""
        with contextlib.suppress(OSError):
            if self.ws.stop_file.read_text().strip() == "now":
                self._hard = True
        return self._hard

    def _tally(self, exp: Experiment) -> None:
        p = self.progress
        p.experiments += 1
        if exp.status == Verdict.KEEP:
            p.kept += 1
        elif exp.status == Verdict.DISCARD:
            p.discarded += 1
        else:
            p.failed += 1
        p.best = mean_or_none(self.ledger.incumbent_values())
        shown = f"{exp.metric:.4f}" if exp.metric is not None else "-"
        p.last = f"#{exp.id} {exp.status} {shown} {exp.description}: {exp.reason}"
        self._say(p.last)

    def _fill(self) -> None:
        """Give every free slot work: a re-check of the incumbent when due, else a proposal."""
        while self.bench.slots - len(self._flights) - len(self.pool.jobs) > 0:
            inc = self.ledger.incumbent()
            assert inc is not None
            every = self.task.judge.recheck_every
            if (
                every
                and self._since_recheck >= every
                and not any(f.kind == "recheck" for f in self._flights)
            ):
                self._since_recheck = 0
                worktree = self.ws.create_worktree(
                    f"recheck-{inc.id:04d}-{time.time_ns()}", inc.commit
                )
                self._fly(
                    Flight(
                        inc.id,
                        Proposal("recheck", {}, "supervisor"),
                        inc,
                        inc.commit,
                        worktree,
                        kind="recheck",
                        run_index=self._next_index(inc.id),
                    )
                )
                continue
            cap = self.limits.max_experiments
            if cap is not None and self._started + len(self.pool.jobs) >= cap:
                return
            in_flight = Counter(f.proposal.proposer for f in self._flights if f.kind == "trial")
            p = self.pool.next(in_flight)
            if p is None:
                return
            worktree = self.ws.create_worktree(f"next-{time.time_ns()}", inc.commit)
            self.pool.start(p, self._context(inc, worktree), inc, worktree)
            self._show()

    def _step(self) -> None:
        """Wait for a run or a proposal to finish (or a short while) and handle it."""
        waiting: dict[concurrent.futures.Future[Any], Flight | ProposalJob] = {}
        for f in sorted(self._flights, key=lambda f: f.exp_id):
            if f.future is not None:
                waiting[f.future] = f
        for job in self.pool.jobs:
            waiting[job.future] = job
        done, _ = concurrent.futures.wait(
            list(waiting), timeout=POLL_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for fut, item in waiting.items():  # in a fixed order, whatever order they finished in
            if fut in done:
                self._proposed(item) if isinstance(item, ProposalJob) else self._ran(item)
        self._show()

    def _cancel_all(self) -> None:
        futures = [f.future for f in self._flights + self._batch if f.future is not None]
        for fut in futures:
            self.bench.cancel(fut)
        concurrent.futures.wait(futures, timeout=CANCEL_WAIT_SECONDS)

    def _loop(self) -> str:
        reason: str | None = None
        cancelled = False
        while True:
            paused = self._steer()
            if reason is None:
                reason = self._stop_reason()
                self._stopping = reason is not None
            elif (
                self.ws.stop_file.exists() and self._stop_now_file()
            ):  # `stop --now` after a `stop`
                self.ws.stop_file.unlink(missing_ok=True)
            if self._hard and not cancelled:
                reason, cancelled = reason or "stop requested: cancelling the runs in flight", True
                self._stopping = True
                for f in self._flights:
                    if f.future is not None:
                        self.bench.cancel(f.future)
            if reason is None and not paused:
                self._fill()
            if not self._flights and not self.pool.jobs:
                if paused and reason is None:
                    time.sleep(1.0)  # paused and idle: read the ledger again in a second
                    continue
                return reason or "no proposer has anything left: nothing left to propose"
            self._step()

    def run(self) -> str:
        """Loop until a stop rule; returns why it stopped. Ctrl-C propagates after cleanup:
        the runs in flight are cancelled and their experiments recorded as interrupted.
        Raises WorkspaceError, before touching anything, when another process runs a
        supervisor on this workspace (lock.py)."""
        with lock.hold(self.ws.state, self.ws.root), interrupt_once():
            reason = self._run()
        self._event("stop", f"stopped: {reason}")
        return reason

    def _run(self) -> str:
        self.recover()
        try:
            self.ensure_baseline()
            self._check_caps()
            self.progress.baseline = self.ledger.experiments()[0].metric
            self.progress.best = mean_or_none(self.ledger.incumbent_values())
            self.warm_start()
            return self._loop()
        except BaseException:
            self._stopping = self._hard = True  # proposers waiting on something give up
            self._cancel_all()
            self.recover()  # marks the experiments in flight interrupted, drops their worktrees
            raise
