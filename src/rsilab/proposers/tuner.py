"""The offline proposers. Owns: "tuner" (Optuna TPE over knobs) and "random" (its baseline).

Both read the knobs of the incumbent's `.py` files (see knobs.py) and propose a change of
1..`max_knobs` knobs around the incumbent. The search space is built once, from the first
incumbent this process sees: floats log-uniform over value/10..value*10 (a fraction in
(0, 1) stays at most 1; zero or negative: a linear range), ints over max(1, value//4)..
value*4 (log), bools and `# one of:` sets categorical; free strings are not tuned. A
fraction in [0.5, 1) (Adam's betas, a momentum, an EMA decay) is searched as 1 - value,
log-uniform over (1 - value)/10..(1 - value)*10: what matters for a decay is its horizon
1/(1 - beta), so 0.95 ranges over 0.5..0.995 and not over 0.095..1, where half of the
draws were betas under 0.31 (on a GPU run, BETA2 0.264 took val_bpb from 2.56 to 3.64).
The space holds these search coordinates; knobs, keys and proposals hold values. A range
widens when a later incumbent or result lies outside it. The knobs come from the task's
search space (rsilab.space): the UPPER_CASE knobs plus those declared in `[knobs]`, whose
declared `range` (and `log`) or `choices` replace the ranges above; a knob with a `when`
condition is moved only in a proposal where its condition holds.

How a proposal is drawn: a seeded RNG picks which knobs change; the others are fixed at the
incumbent with `study.enqueue_trial`, and `study.ask` samples the rest (floats rounded to
3 significant digits, so diffs stay readable). A draw that changes nothing, or repeats a
setting tried or in flight, is drawn again; when TPE keeps repeating itself the later draws
are uniform, and after ATTEMPTS draws `propose` returns None. The asked trial is closed as
FAIL at once: a draw is not a result. Results enter the study only through `observe`, as
`study.add_trial` in the order they are observed, and every draw is seeded from (seed,
number of observations, attempt). So a live run and a replay of its history through
`observe` build the same study and make the same next proposal, as long as the incumbent
the replay starts from is the one the live run started from (the space is centred on it).
What a result teaches: the knobs the proposal moved (`meta["changed"]`), with the change of
the metric against the parent's (`meta["parent_metric"]`, the incumbent's when it was
proposed). Knobs left at the incumbent's values are not credited: with every knob in every
trial, TPE's "good" densities were mostly the incumbent's own values (what made a trial good
was the one knob that moved), so its draws stayed small perturbations and it did no better
than uniform draws. The change rather than the raw metric, because the incumbent improves
during a session: raw values would rank late trials as good whatever they moved. A result
without a parent metric teaches nothing. A crash, timeout or invalid result is told as the
metric's worst value (TPE ranks values, so that is simply "worse than anything seen"); an
interrupted one teaches nothing.

Not covered: code changes (that is the llm and agent proposers' job).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState

from rsilab.errors import ConfigError
from rsilab.proposers.base import Context, register
from rsilab.proposers.knobs import Knob, format_value, in_choices
from rsilab.results import Metric, Proposal, Verdict
from rsilab.space import SearchSpace, active

if TYPE_CHECKING:
    from rsilab.config import TaskSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

ATTEMPTS = 64  # draws per proposal before giving up (all identical or already tried)
UNIFORM_AFTER = 16  # when the model keeps repeating itself, later draws are uniform
N_STARTUP = 5  # random draws before TPE starts modelling (sessions are tens of experiments)
_FAILED = {Verdict.CRASH, Verdict.TIMEOUT, Verdict.INVALID}
_JUDGED = {Verdict.KEEP, Verdict.DISCARD}

Key = tuple[tuple[str, Any], ...]
# One result: (knobs, the knobs the proposal moved or None, its parent's metric or None,
# verdict, metric).
_Observation = tuple[dict[str, Any], list[str] | None, float | None, str, float | None]


def complemented(knob: Knob) -> bool:
    """Whether the knob is searched as 1 - value (a float fraction in [0.5, 1))."""
    v = knob.value
    return isinstance(v, float) and knob.choices is None and knob.low is None and 0.5 <= v < 1


def space_for(knob: Knob) -> BaseDistribution | None:
    """The distribution of the knob's search coordinate (1 - value when `complemented`),
    or None when it is not tuned."""
    if complemented(knob):
        c = _co(float(knob.value))
        return FloatDistribution(c / 10, min(c * 10, 1.0), log=True)
    v = knob.value
    if isinstance(v, bool):
        return CategoricalDistribution((False, True))
    if knob.low is not None and knob.high is not None and isinstance(v, int | float):
        if isinstance(v, int):  # declared in rsilab.toml [knobs]: its range, as declared
            return IntDistribution(math.ceil(knob.low), math.floor(knob.high), log=bool(knob.log))
        return FloatDistribution(knob.low, knob.high, log=bool(knob.log))
    if knob.choices is not None:
        choices = knob.choices if in_choices(v, knob.choices) else (*knob.choices, v)
        return CategoricalDistribution(choices)
    if isinstance(v, str):
        return None
    if isinstance(v, int):
        if v > 0:
            return IntDistribution(max(1, v // 4), v * 4, log=True)
        if v == 0:
            return IntDistribution(0, 8)
        return IntDistribution(v * 4, -max(1, -v // 4))
    if v > 0:
        return FloatDistribution(v / 10, min(v * 10, 1.0) if v < 1 else v * 10, log=True)
    if v == 0:
        return FloatDistribution(0.0, 1.0)
    return FloatDistribution(v * 10, v / 10)


def _co(x: float) -> float:
    """1 - x without the float dust (1 - 0.95 is 0.05000000000000004)."""
    return round(1 - x, 12)


def _round(x: float) -> float:
    return float(f"{x:.3g}") if x != 0 else 0.0


def _seed(*parts: int) -> int:
    return random.Random(":".join(map(str, parts))).getrandbits(32)


@register("tuner")
class Tuner:
    """Optuna TPE over the knobs, around the incumbent (see the module docstring)."""

    name = "tuner"
    learns = True

    def __init__(
        self,
        seed: int = 0,
        max_knobs: int = 3,
        exclude: Sequence[str] = (),
        search: SearchSpace | None = None,
    ) -> None:
        if max_knobs < 1:
            raise ConfigError(f"proposer {self.name!r}: max_knobs must be >= 1, got {max_knobs}")
        self.seed = seed
        self.max_knobs = max_knobs
        self.exclude = frozenset(exclude)
        self.search = search or SearchSpace()  # where the knobs come from
        self._study: optuna.Study | None = None
        self._space: dict[str, BaseDistribution] = {}  # of search coordinates
        self._complement: set[str] = set()  # knobs whose coordinate is 1 - value
        self._metric = Metric()
        self._observed: list[_Observation] = []
        self._learned = 0  # observations already told to the study
        self._tried: set[Key] = set()

    @classmethod
    def from_task(cls, task: TaskSpec, **options: Any) -> Self:
        """The tuner of `task`'s `[tuner]` section; `options` override its keys."""
        t = task.tuner
        return cls(
            **{
                "seed": t.seed,
                "max_knobs": t.max_knobs,
                "exclude": t.exclude,
                "search": SearchSpace.of(task),
                **options,
            }
        )

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP)

    @property
    def space(self) -> dict[str, BaseDistribution]:
        """The search space, of coordinates (empty until the first `propose`)."""
        return dict(self._space)

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study, for inspection (None until the first `propose`)."""
        return self._study

    # ---- learning -------------------------------------------------------------------
    def observe(self, proposal: Proposal, verdict: str, metric: float | None) -> None:
        moved = proposal.meta.get("changed")
        parent = proposal.meta.get("parent_metric")
        self._observed.append(
            (
                dict(proposal.knobs),
                [str(n) for n in moved] if isinstance(moved, list) else None,
                float(parent)
                if isinstance(parent, int | float) and not isinstance(parent, bool)
                else None,
                str(verdict),
                metric,
            )
        )
        self._catch_up()

    def _catch_up(self) -> None:
        """Tell the study what was observed (waits until the first propose built it)."""
        if self._study is None:
            return
        for knobs, moved, parent, verdict, metric in self._observed[self._learned :]:
            params = {}
            for n, v in knobs.items():
                if n in self._space and (fit := self._fit(n, v)) is not _OUT:
                    params[n] = fit
            if len(params) == len(self._space):
                self._tried.add(self._key({n: knobs[n] for n in params}))
            if moved is not None:  # credit the knobs this proposal moved, not the others
                params = {n: v for n, v in params.items() if n in moved}
            if verdict in _FAILED:
                value = self._metric.worst
            elif verdict in _JUDGED and metric is not None and math.isfinite(metric):
                if parent is None:
                    continue  # no parent to measure the move against (not one of ours)
                value = metric - parent
            else:
                continue  # interrupted, or no number: nothing to learn
            if params and self.learns:
                dists = {n: self._space[n] for n in params}
                trial = optuna.trial.create_trial(params=params, distributions=dists, value=value)
                self._study.add_trial(trial)
        self._learned = len(self._observed)

    def _fit(self, name: str, value: Any) -> Any:
        """`value` as the space of `name` holds it, its coordinate (widening a range), or _OUT."""
        d = self._space[name]
        if isinstance(d, CategoricalDistribution):
            return value if in_choices(value, tuple(d.choices)) else _OUT
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return _OUT
        if isinstance(d, IntDistribution):
            if value != int(value) or (d.log and value < 1):
                return _OUT
            value = int(value)
            if not d.low <= value <= d.high:
                self._space[name] = IntDistribution(
                    min(d.low, value), max(d.high, value), log=d.log
                )
            return value
        assert isinstance(d, FloatDistribution)
        value = _co(float(value)) if name in self._complement else float(value)
        if d.log and value <= 0:
            return _OUT
        if not d.low <= value <= d.high:
            self._space[name] = FloatDistribution(min(d.low, value), max(d.high, value), log=d.log)
        return value

    def _key(self, knobs: Mapping[str, Any]) -> Key:
        """A setting's identity, from knob values (not coordinates)."""
        return tuple(sorted((n, v) for n, v in knobs.items() if n in self._space))

    # ---- proposing ------------------------------------------------------------------
    def _start(self, knobs: Mapping[str, tuple[str, Knob]], metric: Metric) -> None:
        for name, (_, knob) in knobs.items():
            dist = None if name in self.exclude else space_for(knob)
            if dist is not None:
                self._space[name] = dist
                if complemented(knob):
                    self._complement.add(name)
        self._metric = metric
        direction = (
            StudyDirection.MINIMIZE if metric.direction == "min" else StudyDirection.MAXIMIZE
        )
        self._study = optuna.create_study(direction=direction, sampler=self.sampler(self.seed))

    def propose(self, ctx: Context) -> Proposal | None:
        knobs = self.search.knobs(ctx.files, ctx.preset)
        if self._study is None:
            self._start(knobs, ctx.metric)
        self._catch_up()
        base: dict[str, Any] = {}  # the incumbent's values of the searched knobs
        for name in sorted(self._space):
            if name in knobs and self._fit(name, value := knobs[name][1].value) is not _OUT:
                base[name] = value
        if not base:
            return None
        blocked = self._tried | {self._key(p.knobs) for p in ctx.in_flight} | {self._key(base)}
        for attempt in range(ATTEMPTS):
            rng = random.Random(_seed(self.seed, len(self._observed), attempt))
            free = rng.sample(sorted(base), rng.randint(1, min(self.max_knobs, len(base))))
            fixed = {n: v for n, v in base.items() if n not in free}
            drawn = self._draw(fixed, free, rng.getrandbits(32), uniform=attempt >= UNIFORM_AFTER)
            changed = {n: drawn[n] for n in free if not _same(drawn[n], base[n])}
            # A knob whose condition does not hold in the new setting does not matter there:
            # moving it would spend a run on a change that changes nothing.
            values = {n: k.value for n, (_, k) in knobs.items()} | changed
            changed = {n: v for n, v in changed.items() if active(knobs[n][1], values)}
            full = {**base, **changed}
            if changed and self._key(full) not in blocked:
                return self._proposal(ctx, knobs, base, changed, full)
        return None

    def _draw(
        self, fixed: dict[str, Any], free: list[str], seed: int, uniform: bool
    ) -> dict[str, Any]:
        """Values for the `free` knobs, drawn with the others at their `fixed` values."""
        assert self._study is not None
        sampler = optuna.samplers.RandomSampler(seed) if uniform else self.sampler(seed)
        self._study.sampler = sampler
        self._study.enqueue_trial({n: self._fit(n, v) for n, v in fixed.items()})
        dists = {n: self._space[n] for n in [*fixed, *free]}
        trial = self._study.ask(dists)
        self._study.tell(trial, state=TrialState.FAIL)  # a draw, not a result
        out = dict(fixed)
        for n in free:
            x, d = trial.params[n], self._space[n]
            if isinstance(d, FloatDistribution):
                x = min(max(x, d.low), d.high)
                # Round the value, not the coordinate: 0.997, not 1 - 0.00271.
                x = _round(_co(x)) if n in self._complement else min(max(_round(x), d.low), d.high)
            out[n] = x
        return out

    def _proposal(
        self,
        ctx: Context,
        knobs: Mapping[str, tuple[str, Knob]],
        base: Mapping[str, Any],
        changed: dict[str, Any],
        full: dict[str, Any],
    ) -> Proposal:
        order = sorted(changed, key=lambda n: (knobs[n][0], knobs[n][1].lineno))
        description = ", ".join(
            f"{n} {format_value(base[n])} -> {format_value(changed[n])}" for n in order
        )
        files = self.search.set(ctx.files, changed, ctx.preset)
        meta: dict[str, Any] = {"changed": order, "from": {n: base[n] for n in order}}
        if ctx.incumbent_metric is not None and math.isfinite(ctx.incumbent_metric):
            meta["parent_metric"] = ctx.incumbent_metric
        return Proposal(description, files, self.name, knobs=full, meta=meta)


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


class _Out:
    def __repr__(self) -> str:
        return "<outside the space>"


_OUT: Any = _Out()


@register("random")
class RandomSearch(Tuner):
    """The baseline arm: the same knobs and space, uniform draws, no learning."""

    name = "random"
    learns = False

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)
