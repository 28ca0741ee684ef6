"""Research on the research strategy. Owns: `rsilab meta`: strategies, their sessions, velocity.

A strategy is what drives the proposers: for the tuner its own settings (knobs changed per
proposal, TPE's random start-up draws, TPE or uniform sampling), for the LLM and agent
proposers the research program (`program.md`) and the prompt settings (temperature).
`rsilab meta DIR` runs generations; in each, the champion strategy and K-1 variants each
get one research session of a fixed size (N experiments, or M minutes), driven through the
Supervisor's public API in a fresh workspace cloned from the same baseline commit, with no
person in the loop and no queue. Sessions run one after another (the runs of a session
already use the machine; parallel workers are the supervisor's business).

Research velocity = confirmed gain / compute hours. The gain is confirmed with fresh seeds
(`CONFIRM_SEED_BASE`, apart from research, score and ladder seeds): the session's final
incumbent against the baseline commit, the baseline's confirmation runs shared by every
session (so all gains are measured against the same numbers). Its standard error comes
from the pooled sd of the confirmation runs; a strategy with several sessions gets the
sd of its session velocities instead (which also holds the luck of the search). Compute
is the session ledger's "compute" cost (train + evaluation seconds of every run).

Variants: for the tuner, untried neighbours of the champion's settings (one setting one
step away, leaving out steps that cannot change a session of N experiments), drawn with a
seeded RNG; for the LLM and agent proposers, the LLM rewrites the champion's program.md
from the evidence of the sessions so far (what was kept, discarded, crashed; each
strategy's velocity), through `llmclient.from_spec(...).complete` (the temperature is
part of the strategy and carried over; it is not searched yet). The
champion is the strategy with the highest mean velocity among those run in a generation
(the old champion keeps its place on a tie); it is re-run every generation, so a lucky
first measurement does not reign forever.

Everything is recorded in `DIR/meta.json` (strategies with their lineage, every session
with its figures, each generation's outcome), rewritten atomically after every session so
`rsilab meta DIR` again resumes where it stopped. Session workspaces stay under
`DIR/sessions/` (ledgers, logs, results.tsv; model artifacts are deleted).

Not covered: judging (the judge is the same referee for every strategy and is not part of
a strategy), parallel sessions, searching the judge's or the budget's settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from rsilab.config import TaskSpec, load_task, parse_override
from rsilab.errors import ConfigError
from rsilab.fsio import atomic_write, json_safe
from rsilab.loop.judge import seed_schedule
from rsilab.loop.limits import Limits
from rsilab.loop.supervisor import Supervisor
from rsilab.notify import Notify
from rsilab.proposers import create
from rsilab.proposers.base import Context, Proposer
from rsilab.proposers.tuner import N_STARTUP, RandomSearch, Tuner
from rsilab.record.ledger import Ledger
from rsilab.results import Proposal
from rsilab.run.bench import Bench
from rsilab.run.executors.base import Executor
from rsilab.studies.score import export_commit, fmt
from rsilab.workspace import git, init_workspace

# Seeds of confirmation runs (research: task.seed; score/ladder: their own)
CONFIRM_SEED_BASE = 3_000_017
META_FILE = "meta.json"
MAX_KNOBS_CAP = 8
N_STARTUP_RANGE = (1, 64)
TEMPERATURE_STEP = 0.3


# ---- strategies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """What drives the proposer of a research session."""

    id: str
    proposer: str  # "tuner" (settings["sampler"] picks TPE or uniform), "llm" or "agent"
    settings: dict[str, Any]
    program: str | None = None  # program.md for llm/agent; None: the task's own
    parent: str | None = None
    generation: int = 0
    origin: str = "start"  # how it was made: "start", "mutation: max_knobs 1 -> 2", "llm rewrite"

    def label(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        program = "" if self.program is None else f" program {len(self.program)} chars"
        return f"{self.proposer} {shown}{program}"

    def key(self) -> str:
        """Identical strategies have identical keys (a variant is never a copy of a tried one)."""
        return json.dumps([self.proposer, self.settings, self.program], sort_keys=True)


class ProgramOverride:
    """A proposer that sees a strategy's research program instead of the task's program.md."""

    def __init__(self, inner: Proposer, program: str) -> None:
        self.inner, self.program = inner, program
        self.name = inner.name  # the supervisor routes observations by name

    def propose(self, ctx: Context) -> Proposal | None:
        return self.inner.propose(dataclasses.replace(ctx, program=self.program))

    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        self.inner.observe(proposal, verdict, metric)


class StrategyTuner(Tuner):
    """The tuner with its TPE start-up length as a setting (the module default otherwise)."""

    def __init__(self, *, n_startup: int = N_STARTUP, **options: Any) -> None:
        super().__init__(**options)
        self.n_startup = n_startup

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup)


def make_proposer(strategy: Strategy, task: TaskSpec, seed: int) -> Proposer:
    """The proposer a strategy describes, seeded with `seed`."""
    s = strategy.settings
    if strategy.proposer == "tuner":
        options: dict[str, Any] = {"seed": seed, "max_knobs": int(s["max_knobs"])}
        if s.get("sampler") == "random":
            return RandomSearch.from_task(task, **options)
        return StrategyTuner.from_task(
            task, n_startup=int(s.get("n_startup", N_STARTUP)), **options
        )
    if strategy.proposer == "llm":
        spec = dataclasses.replace(
            task.llm, temperature=float(s.get("temperature", task.llm.temperature))
        )
        inner = create("llm", task=task, spec=spec)
    elif strategy.proposer == "agent":
        inner = create("agent", task=task)
    else:
        raise ConfigError(
            f"meta: unknown proposer {strategy.proposer!r} (tuner, random, llm or agent)"
        )
    return ProgramOverride(inner, strategy.program) if strategy.program is not None else inner


def starting_strategy(task: TaskSpec, proposer: str, program: str) -> Strategy:
    """The strategy `rsilab run --proposer PROPOSER` would use on this task."""
    if proposer in ("tuner", "random"):
        return Strategy(
            "s0",
            "tuner",
            {
                "max_knobs": task.tuner.max_knobs,
                "n_startup": N_STARTUP,
                "sampler": "tpe" if proposer == "tuner" else "random",
            },
        )
    if proposer in ("llm", "agent"):
        settings = {"temperature": task.llm.temperature} if proposer == "llm" else {}
        return Strategy("s0", proposer, settings, program=program)
    raise ConfigError(f"meta: --proposer {proposer!r}: one of tuner, random, llm, agent")


def tuner_neighbours(
    s: Strategy, session_experiments: int | None = None
) -> list[tuple[dict[str, Any], str]]:
    """Settings one step from `s`'s, each with a one-line description of the step.

    With sessions of `session_experiments`, steps that cannot change a session are left
    out: TPE draws at random for its first `n_startup` proposals, so with n_startup >= N
    before and after, a change of n_startup or of the sampler changes nothing but the draws.
    """
    cur = s.settings
    out: list[tuple[dict[str, Any], str]] = []
    mk, ns = int(cur["max_knobs"]), int(cur.get("n_startup", N_STARTUP))
    n = session_experiments or math.inf
    for v in (mk - 1, mk + 1):
        if 1 <= v <= MAX_KNOBS_CAP:
            out.append((cur | {"max_knobs": v}, f"max_knobs {mk} -> {v}"))
    if cur.get("sampler", "tpe") == "tpe":
        for v in (ns // 2, ns * 2):
            if N_STARTUP_RANGE[0] <= v <= N_STARTUP_RANGE[1] and v != ns and min(v, ns) < n:
                out.append((cur | {"n_startup": v}, f"n_startup {ns} -> {v}"))
    if ns < n:
        other = "random" if cur.get("sampler", "tpe") == "tpe" else "tpe"
        out.append((cur | {"sampler": other}, f"sampler {cur.get('sampler', 'tpe')} -> {other}"))
    return out


# ---- the LLM's rewrite of program.md -------------------------------------------------------

REWRITE_SYSTEM = """\
You improve research programs. A research program (program.md) instructs an AI researcher
who edits a training script, one experiment at a time; each experiment is trained for a
fixed budget and kept only when a noise-aware judge confirms a real gain. You will see the
current program and the evidence of what researchers did under this and other programs,
and how fast each improved the metric (research velocity: confirmed gain per compute hour).
Write an improved program: keep what worked, steer away from what did not, be concrete
about which directions to explore first. Answer with the complete new program.md in one
```markdown fenced block and nothing else."""


def parse_program(text: str) -> str | None:
    """The program in a model's answer: the first fenced block, else the whole text."""
    m = re.search(r"```(?:markdown|md)?[ \t]*\n(.*?)```", text, re.DOTALL)
    body = (m.group(1) if m else text).strip()
    return body + "\n" if body else None


def rewrite_program(
    client: Any, task: TaskSpec, program: str, evidence: str
) -> tuple[str | None, dict[str, Any]]:
    """Ask the LLM (a `ChatClient`) for a better program; (program or None, usage figures)."""
    better = "lower" if task.metric.direction == "min" else "higher"
    user = (
        f"# The task\n\n{task.description}\nMetric: {task.metric.name}, {better} is better.\n\n"
        f"# The current program.md\n\n{program.strip()}\n\n# Evidence\n\n{evidence.strip()}\n"
    )
    reply = client.complete(REWRITE_SYSTEM, [{"role": "user", "content": user}])
    usage = {
        "tokens_in": reply.tokens_in,
        "tokens_out": reply.tokens_out,
        "model": reply.model,
        "cost_usd": (reply.tokens_in * task.llm.price_in + reply.tokens_out * task.llm.price_out)
        / 1e6,
    }
    return parse_program(reply.text), usage


# ---- sessions and their velocity -----------------------------------------------------------


@dataclass
class Session:
    """One research session of one strategy, with what it achieved."""

    strategy: str
    generation: int
    dir: str
    tuner_seed: int
    experiments: int = 0
    kept: int = 0
    compute_s: float = 0.0
    wall_s: float = 0.0
    stop: str = ""
    incumbent: str = ""  # commit
    incumbent_description: str = ""
    claimed_gain: float | None = None  # incumbent - baseline means, from the session's own runs
    confirm_values: list[float] = field(default_factory=list)
    confirm_failures: list[str] = field(default_factory=list)
    gain: float | None = None  # confirmed: fresh seeds, against the shared baseline runs
    gain_se: float | None = None
    velocity: float | None = None  # gain per compute hour
    velocity_se: float | None = None


@dataclass
class SearchState:
    """The content of meta.json."""

    task: str
    task_dir: str
    overrides: list[str]
    preset: str
    proposer: str
    base_commit: str = ""
    session_experiments: int | None = None
    session_minutes: float | None = None
    seed: int = 0
    confirm_seeds: list[int] = field(default_factory=list)
    baseline_confirm: list[float] = field(default_factory=list)
    strategies: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)
    rewrites: list[dict[str, Any]] = field(default_factory=list)  # LLM rewrites: usage, outcome
    champion: str = "s0"
    version: int = 1

    def strategy(self, sid: str) -> Strategy:
        for d in self.strategies:
            if d["id"] == sid:
                return Strategy(**d)
        raise KeyError(sid)

    def session_list(self) -> list[Session]:
        return [Session(**d) for d in self.sessions]


def _pooled_se(a: Sequence[float], b: Sequence[float]) -> float | None:
    groups = [g for g in (a, b) if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if not a or not b or df == 0:
        return None
    sd = math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / df)
    return sd * math.sqrt(1 / len(a) + 1 / len(b))


def strategy_velocity(sessions: Sequence[Session]) -> tuple[float | None, float | None]:
    """Mean velocity over a strategy's sessions and its standard error (module docstring)."""
    measured = [s for s in sessions if s.velocity is not None]
    vs = [s.velocity for s in measured if s.velocity is not None]
    if not vs:
        return None, None
    if len(vs) == 1:
        return vs[0], measured[0].velocity_se
    return statistics.fmean(vs), statistics.stdev(vs) / math.sqrt(len(vs))


# ---- the strategy search---------------------------------------------------------------------


class StrategySearch:
    """Runs `generations` of strategy search in `root` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        task_dir: Path,
        overrides: Sequence[str] = (),
        preset: str = "cpu",
        proposer: str = "tuner",
        session_experiments: int | None = None,
        session_minutes: float | None = None,
        confirm_seeds: int = 3,
        seed: int = 0,
        train_data: Path | None = None,
        val_data: Path | None = None,
        executor: Executor | None = None,
        notify: Notify = print,
    ) -> None:
        """`executor`: where the runs execute (None: one local slot, closed by `run`)."""
        if (session_experiments is None) == (session_minutes is None):
            raise ConfigError(
                "meta: give one session size: --session-experiments N or --session-minutes M"
            )
        if confirm_seeds < 2:
            raise ConfigError(
                "meta: --confirm-seeds must be >= 2 (the gain needs a noise estimate)"
            )
        self.root = root.resolve()
        self.say = notify
        self.n_confirm = confirm_seeds
        self.task = load_task(task_dir, [parse_override(o) for o in overrides])
        path = self.root / META_FILE
        if path.is_file():
            self.state = SearchState(**json.loads(path.read_text()))
            wanted = (
                self.task.name,
                list(overrides),
                proposer,
                session_experiments,
                session_minutes,
            )
            have = (
                self.state.task,
                self.state.overrides,
                self.state.proposer,
                self.state.session_experiments,
                self.state.session_minutes,
            )
            if wanted != have:
                raise ConfigError(
                    f"{path}: made with task/overrides/proposer/session {have}, not {wanted}; "
                    "use another folder to change them"
                )
            notify(f"resuming {path}: {len(self.state.sessions)} sessions done")
        else:
            self.state = SearchState(
                self.task.name,
                str(task_dir.resolve()),
                list(overrides),
                preset,
                proposer,
                session_experiments=session_experiments,
                session_minutes=session_minutes,
                seed=seed,
            )
        self.metric = self.task.metric_obj
        self.bench = Bench(
            self.task,
            train_data=train_data,
            val_data=val_data,
            preset=self.state.preset,
            executor=executor,
        )

    # ---- bookkeeping ------------------------------------------------------------------
    def save(self) -> None:
        atomic_write(
            self.root / META_FILE,
            json.dumps(json_safe(dataclasses.asdict(self.state)), indent=1) + "\n",
        )

    def _add_strategy(self, s: Strategy) -> Strategy:
        self.state.strategies.append(dataclasses.asdict(s))
        return s

    def _sessions_of(self, sid: str) -> list[Session]:
        return [s for s in self.state.session_list() if s.strategy == sid]

    def velocity(self, sid: str) -> tuple[float | None, float | None]:
        return strategy_velocity(self._sessions_of(sid))

    # ---- the baseline ------------------------------------------------------------------
    @property
    def base_repo(self) -> Path:
        return self.root / "base"

    def prepare(self) -> None:
        """The baseline repository (a copy of the task, one commit) and its confirmation runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.state.base_commit:
            if self.base_repo.exists():
                shutil.rmtree(self.base_repo)
            shutil.copytree(
                self.state.task_dir,
                self.base_repo,
                ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", ".rsilab", ".git", "reference"
                ),
            )
            git(self.base_repo, "init", "-q", "-b", "main")
            git(self.base_repo, "add", "-A")
            git(self.base_repo, "commit", "-q", "-m", f"rsilab meta: task {self.task.name}")
            self.state.base_commit = git(self.base_repo, "rev-parse", "HEAD").strip()
            self.state.confirm_seeds = [
                seed_schedule(CONFIRM_SEED_BASE, 0, k) for k in range(self.n_confirm)
            ]
            self.save()
        if not self.state.baseline_confirm:
            values, failures = self._confirm(
                self.base_repo, self.state.base_commit, self.root / "confirm-baseline"
            )
            if len(values) < 2:
                raise ConfigError(
                    f"meta: the baseline failed its confirmation runs: {failures[:1]}"
                )
            self.state.baseline_confirm = values
            self.save()
            self.say(
                f"baseline {self.metric.name} {statistics.fmean(values):.4f} ± "
                f"{statistics.stdev(values):.4f} over {len(values)} confirmation seeds"
            )

    def _confirm(self, repo: Path, commit: str, where: Path) -> tuple[list[float], list[str]]:
        work = export_commit(repo, commit, where / "work")
        values, failures = [], []
        runs = [(seed, where / f"seed-{k}") for k, seed in enumerate(self.state.confirm_seeds)]
        for r in self.bench.measure(work, runs, label="confirmation run", commit=commit):
            if r.ok and r.metric is not None:
                values.append(float(r.metric))
            else:
                failures.append(r.reason)
        shutil.rmtree(work, ignore_errors=True)
        for artifact in where.glob("**/artifact"):
            shutil.rmtree(artifact, ignore_errors=True)
        return values, failures

    # ---- one session -----------------------------------------------------------------
    def run_session(self, strategy: Strategy, generation: int) -> Session:
        name = f"g{generation:02d}-{strategy.id}"
        sdir = self.root / "sessions" / name
        if sdir.exists():  # an unfinished session of an earlier invocation: start it again
            shutil.rmtree(sdir)
        sdir.parent.mkdir(parents=True, exist_ok=True)
        git(sdir.parent, "clone", "-q", str(self.base_repo), str(sdir))
        ws = init_workspace(sdir, None, f"meta-{name}")
        task = ws.load_task([parse_override(o) for o in self.state.overrides])
        # The same tuner seed for every strategy of a generation: common random numbers.
        tuner_seed = self.state.seed * 1000 + generation
        session = Session(strategy.id, generation, str(sdir), tuner_seed)
        limits = (
            Limits(max_experiments=self.state.session_experiments)
            if self.state.session_experiments
            else Limits(hours=(self.state.session_minutes or 0) / 60)
        )
        tag = f"[{name}]"

        def view(message: str, progress: Any) -> None:
            if message.startswith(("#", "baseline ", "stopped")):
                self.say(f"{tag} {message}")

        t0 = time.time()
        with Ledger(ws.ledger_path) as ledger:
            # What `rsilab run` records, so `rsilab status/score/report` work on a session too.
            ledger.set_setting("overrides", list(self.state.overrides))
            ledger.set_setting("comparable", task.comparable(self.state.preset))
            ledger.set_setting("metric", task.metric.name)
            ledger.set_setting("meta_strategy", dataclasses.asdict(strategy))
            sup = Supervisor(
                ws,
                ledger,
                self.bench.derive(task=task),
                [make_proposer(strategy, task, tuner_seed)],
                limits=limits,
                view=view,
            )
            session.stop = sup.run()
            session.wall_s = time.time() - t0
            exps = ledger.experiments()
            base, inc = exps[0], ledger.incumbent()
            assert base.kind == "baseline" and inc is not None
            trials = [e for e in exps if e.kind != "baseline"]
            session.experiments = len(trials)
            session.kept = sum(1 for e in trials if e.status == "keep")
            session.compute_s = ledger.costs().get("compute", 0.0)
            session.incumbent = inc.commit
            session.incumbent_description = "baseline" if inc.id == base.id else inc.description

            def ok_values(exp_id: int) -> list[float]:
                return [r.metric for r in ledger.runs(exp_id) if r.ok and r.metric is not None]

            claimed = (ok_values(inc.id), ok_values(base.id))
            if all(claimed):
                session.claimed_gain = self.metric.gain(
                    statistics.fmean(claimed[0]), statistics.fmean(claimed[1])
                )
            ledger.export_tsv(sdir / "results.tsv", task.metric.name)
        base_values = self.state.baseline_confirm
        if inc.commit == self.state.base_commit:
            session.gain, session.gain_se = 0.0, 0.0  # nothing was kept: no gain, measured or not
        else:
            values, failures = self._confirm(sdir, inc.commit, ws.state / "confirm")
            session.confirm_values, session.confirm_failures = values, failures
            if values:
                session.gain = self.metric.gain(
                    statistics.fmean(values), statistics.fmean(base_values)
                )
                session.gain_se = _pooled_se(values, base_values)
        hours = session.compute_s / 3600
        if session.gain is not None and hours > 0:
            session.velocity = session.gain / hours
            session.velocity_se = session.gain_se / hours if session.gain_se is not None else None
        for artifact in ws.state.glob("**/artifact"):
            shutil.rmtree(artifact, ignore_errors=True)
        self.state.sessions.append(dataclasses.asdict(session))
        self.save()
        self.say(
            f"{tag} {strategy.label()}: {session.experiments} experiments, {session.kept} kept, compute "
            f"{session.compute_s / 60:.1f} min, confirmed gain {fmt(session.gain)} ± {fmt(session.gain_se)}, "
            f"velocity {fmt(session.velocity)} per compute-hour"
        )
        return session

    # ---- variants ----------------------------------------------------------------------
    def variants(self, champion: Strategy, n: int, generation: int) -> list[Strategy]:
        """Up to `n` new strategies derived from the champion (never one tried before)."""
        if n <= 0:
            return []
        if champion.proposer == "tuner":
            return self._tuner_variants(champion, n, generation)
        return self._llm_variants(champion, n, generation)

    def _next_id(self) -> str:
        return f"s{len(self.state.strategies)}"

    def _tuner_variants(self, champion: Strategy, n: int, generation: int) -> list[Strategy]:
        tried = {self.state.strategy(d["id"]).key() for d in self.state.strategies}
        rng = random.Random(f"{self.state.seed}:{generation}")
        size = self.state.session_experiments
        options = [
            (s, why)
            for s, why in tuner_neighbours(champion, size)
            if Strategy("", "tuner", s).key() not in tried
        ]
        rng.shuffle(options)
        if len(options) < n:  # every neighbour tried: two steps away
            far = [
                (s2, f"{why1}, {why2}")
                for s1, why1 in tuner_neighbours(champion, size)
                for s2, why2 in tuner_neighbours(Strategy("", "tuner", s1), size)
                if Strategy("", "tuner", s2).key() not in tried and s2 != champion.settings
            ]
            rng.shuffle(far)
            options += far
        out: list[Strategy] = []
        for settings, why in options:
            s = Strategy(
                self._next_id(),
                "tuner",
                settings,
                None,
                champion.id,
                generation,
                f"mutation: {why}",
            )
            if s.key() in tried:
                continue
            tried.add(s.key())
            out.append(self._add_strategy(s))
            if len(out) == n:
                break
        return out

    def _llm_variants(self, champion: Strategy, n: int, generation: int) -> list[Strategy]:
        from rsilab.proposers.llmclient import from_spec

        program = champion.program or ""
        evidence = self.evidence()
        out: list[Strategy] = []
        tried = {self.state.strategy(d["id"]).key() for d in self.state.strategies}
        with from_spec(self.task.llm) as client:
            for _ in range(n):
                text, usage = rewrite_program(client, self.task, program, evidence)
                record: dict[str, Any] = {"generation": generation, "parent": champion.id, **usage}
                if (
                    text is None
                    or Strategy("", champion.proposer, champion.settings, text).key() in tried
                ):
                    record["outcome"] = "empty or repeated answer: no variant"
                    self.state.rewrites.append(record)
                    continue
                s = Strategy(
                    self._next_id(),
                    champion.proposer,
                    dict(champion.settings),
                    text,
                    champion.id,
                    generation,
                    "llm rewrite of program.md from the evidence",
                )
                tried.add(s.key())
                record["outcome"] = s.id
                self.state.rewrites.append(record)
                out.append(self._add_strategy(s))
        self.save()
        return out

    def evidence(self, per_session: int = 15) -> str:
        """What the sessions so far show, for the LLM: velocities, then each session's results."""
        lines = ["## Strategies (research velocity = confirmed metric gain per compute hour)"]
        for d in self.state.strategies:
            v, se = self.velocity(d["id"])
            if v is None:
                continue
            s = Strategy(**d)
            lines.append(
                f"- {s.id} (from {s.parent or 'the start'}, {s.origin}): velocity {fmt(v)} ± {fmt(se)} "
                f"over {len(self._sessions_of(s.id))} sessions"
            )
        for sess in self.state.session_list()[-6:]:
            lines.append(
                f"\n## Session {Path(sess.dir).name} under strategy {sess.strategy}: "
                f"confirmed gain {fmt(sess.gain)}, {sess.kept} of {sess.experiments} kept"
            )
            ledger_path = Path(sess.dir) / ".rsilab" / "ledger.db"
            if not ledger_path.is_file():
                continue
            with Ledger(ledger_path) as ledger:
                for e in [e for e in ledger.experiments() if e.kind != "baseline"][-per_session:]:
                    effect = f" (gain {e.effect:+.4g})" if e.effect is not None else ""
                    reason = f": {e.reason[:120]}" if e.status != "keep" else ""
                    lines.append(f"- {e.status}{effect}: {e.description[:160]}{reason}")
        return "\n".join(lines)

    # ---- generations -------------------------------------------------------------------
    def run(self, generations: int, strategies: int) -> SearchState:
        """Run until `generations` generations are done (resuming a previous invocation)."""
        if strategies < 1 or generations < 1:
            raise ConfigError("meta: --generations and --strategies must be >= 1")
        with self.bench:  # closes the executor if the bench made it
            return self._run(generations, strategies)

    def _run(self, generations: int, strategies: int) -> SearchState:
        self.prepare()
        if not self.state.strategies:
            program_path = Path(self.state.task_dir) / self.task.program
            program = program_path.read_text() if program_path.is_file() else ""
            self._add_strategy(starting_strategy(self.task, self.state.proposer, program))
            self.save()
        for g in range(len(self.state.generations), generations):
            champion = self.state.strategy(self.state.champion)
            members = [
                d["id"]
                for d in self.state.strategies
                if d["generation"] == g and d["id"] != champion.id
            ]
            done = {s.strategy for s in self.state.session_list() if s.generation == g}
            if champion.id not in done:
                self.run_session(champion, g)
            if not members:  # variants come after the champion's session: its evidence is fresh
                members = [s.id for s in self.variants(champion, strategies - 1, g)]
                self.save()
            for sid in members:
                if sid not in done:
                    self.run_session(self.state.strategy(sid), g)
            self._close_generation(g, [champion.id, *members])
            self.say(format_table(self.state))
        return self.state

    def _close_generation(self, g: int, ids: list[str]) -> None:
        before = self.state.champion
        best, best_v = before, self.velocity(before)[0]
        for sid in ids:
            v = self.velocity(sid)[0]
            if v is not None and (best_v is None or v > best_v):
                best, best_v = sid, v
        self.state.champion = best
        start_v, start_se = self.velocity("s0")
        champ_v, champ_se = self.velocity(best)
        change = champ_v - start_v if champ_v is not None and start_v is not None else None
        change_se: float | None = None
        if change is not None:  # the same strategy: no change, exactly
            change_se = (
                0.0 if best == "s0" else math.sqrt((champ_se or 0) ** 2 + (start_se or 0) ** 2)
            )
        self.state.generations.append(
            {
                "generation": g,
                "strategies": ids,
                "champion_before": before,
                "champion": best,
                "velocities": {sid: self.velocity(sid)[0] for sid in ids},
                "velocity_change_vs_start": change,
                "velocity_change_se": change_se,
            }
        )
        self.save()


def run_search(
    root: Path, *, task_dir: Path, generations: int, strategies: int, **options: Any
) -> SearchState:
    """`rsilab meta`: see `StrategySearch`."""
    return StrategySearch(root, task_dir=task_dir, **options).run(generations, strategies)


# ---- output ------------------------------------------------------------------------------


def format_table(state: SearchState) -> str:
    """Strategies (lineage, sessions, velocity) and the generations, as plain text."""
    sessions = [Session(**d) for d in state.sessions]
    rows: list[Sequence[str]] = [
        (
            "strategy",
            "parent",
            "gen",
            "settings",
            "origin",
            "sessions",
            "experiments",
            "kept",
            "compute min",
            "confirmed gain",
            "velocity/h ± se",
        )
    ]
    for d in state.strategies:
        s = Strategy(**d)
        mine = [x for x in sessions if x.strategy == s.id]
        v, se = strategy_velocity(mine)
        gains = [x.gain for x in mine if x.gain is not None]
        champion = " *" if s.id == state.champion else ""
        rows.append(
            (
                s.id + champion,
                s.parent or "-",
                str(s.generation),
                s.label(),
                s.origin[:40],
                str(len(mine)),
                str(sum(x.experiments for x in mine)),
                str(sum(x.kept for x in mine)),
                f"{sum(x.compute_s for x in mine) / 60:.1f}",
                fmt(statistics.fmean(gains)) if gains else "-",
                f"{fmt(v)} ± {fmt(se, '.3g')}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for gen in state.generations:
        lines.append(
            f"generation {gen['generation']}: champion {gen['champion_before']} -> {gen['champion']}; "
            f"velocity change vs the starting strategy {fmt(gen['velocity_change_vs_start'])} ± "
            f"{fmt(gen['velocity_change_se'], '.3g')} per compute-hour"
        )
    return "\n".join(lines)


def summary(state: SearchState) -> Mapping[str, Any]:
    """The headline figures: starting and champion strategies and their velocities."""
    sessions = [Session(**d) for d in state.sessions]

    def vel(sid: str) -> tuple[float | None, float | None]:
        return strategy_velocity([s for s in sessions if s.strategy == sid])

    return {
        "start": "s0",
        "start_velocity": vel("s0"),
        "champion": state.champion,
        "champion_velocity": vel(state.champion),
    }
