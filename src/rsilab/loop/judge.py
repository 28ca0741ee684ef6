"""The judge. Owns: deciding keep / discard / more for one experiment, and the run seeds.

Pure functions of run results: no I/O, no clock, no randomness. The supervisor calls
`judge` after every candidate run and starts another (with `seed_schedule`) while it says
MORE.

Rules, in order: (1) a failed run decides (crash/oom -> CRASH, timeout, invalid,
interrupted); under a budget the run counts itself (FLOPs), a candidate that used more than
`max_cpu_ratio` times the incumbent's CPU time (the runner's count) -> INVALID, flag
"budget"; (2) a memory cap or `constraints` breach -> DISCARD; (3) a metric that barely
moves under different harness seeds, measured against the noise of the reference (see
below) -> INVALID, flag "ignores-seed"; (4) statistics.

The reference is every measurement that is not the candidate's: the incumbent's values
(the noise floor plus re-measurements) and `noise_groups`, every other repeated
measurement of the session (the runs of one earlier experiment under different seeds),
less those groups that barely moved against the incumbent's spread (`_steady_removed`).
Rule (3) is a one-sided variance-ratio test: under "the candidate's runs spread like the
reference's", s_c^2 / s_ref^2 follows F(n_c - 1, df_ref); a spread that small with p <
SEED_LEVEL is flagged (a pinned seed plus a tiny seed-dependent wobble gets caught, not
only identical values), and a keep whose spread is suspiciously small (SEED_SUSPECT,
SEED_SUSPECT_RATIO) waits for more seeds first (up to max_runs), where the test has the
power to flag it.

A noise `prior` (a variance worth some df, from the task or earlier sessions; see
rsilab.loop.evidence) pools with the reference groups like one more group. Before the
statistics, a paired candidate (every run under a seed the incumbent also ran, see
`incumbent_seeds`) whose values equal the incumbent's under the same seeds is an inert
change: DISCARD at once, flag "inert" (KEEP when it has fewer lines: simpler and identical).

Statistical rule: a one-sided test of H1 "gain > min_effect". Paired, with `paired_groups`
(earlier experiments' differences to their incumbents under shared seeds) worth at least
PAIRED_MIN_DF df: a paired t-test on the candidate's differences, their sd pooled from those
groups and the candidate's own differences (which may raise it, never lower it). Otherwise a
pooled two-sample t-test: the sd is pooled from the reference groups and the candidate's
(when it has >= 2 runs); df = the sum of (n - 1) over those groups. The candidate's own runs may raise the noise estimate, never
lower it: its variance enters the pool as at least the reference's (only where there is no
reference estimate at all is its own the only one). So a candidate can never make the bar
it is judged against lower than a candidate whose runs spread like the reference's faces,
e.g. with near-identical runs of a pinned seed. Pooling assumes an edit changes
the mean, not the harness noise, which is the only workable assumption with 2-4 candidate
runs; it lets the noise estimate sharpen as the session goes (df 2 after a 3-run noise
floor, tens after a few dozen experiments), so later decisions need fewer runs.

Runs are spent where the decision is uncertain. A candidate worse than the incumbent is
discarded after its first run; once the pooled noise estimate has 6 df, one whose gain
cannot become significant by max_runs (not even if it were one standard error larger than
measured, see `_futile`) is discarded before the cap. A KEEP needs >= min_runs candidate
runs (capped at max_runs): judge.min_runs (default 2) for a change to code, so the
ignores-seed check always sees two seeds, and judge.knob_min_runs (default 1) for a change
of knob values only (the supervisor passes `min_runs` accordingly; such a change cannot
alter how the code uses the harness seed). With 1, a first run that is already significant
is kept at once (against a 3-run noise floor, df 2, that takes a gain of about 7 sd;
against a pooled estimate of df 20, about 3 sd) and an ambiguous one gets confirmation
runs. Because the test is repeated after each run (looks at n = min_runs..max_runs), the
level is split evenly over the looks (Bonferroni: alpha / (max_runs - min_runs + 1)), so
pure noise is kept with probability <= alpha overall; stopping early (no gain, or futile)
only lowers it. The reported 95% CI is per-look, unadjusted. Ties (not significantly worse)
go to the candidate with fewer non-blank lines in the editable files.

Not covered: choosing the incumbent, re-measuring it, or writing the ledger.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

from rsilab.config import JudgeSpec
from rsilab.results import CPU_KEY, Metric, RunResult, Status, Verdict

REL_TOL = 1e-12  # values this close (relative) count as identical
# The futility stop (see `_futile`). The margin, in standard errors of the current gain: 1
# rather than 0 (the estimate as it stands) so that a real gain that happened to start low
# keeps its chance (a 2-sd gain was kept as often as with no stop, 0 lost a third of them).
# No stop before the pooled noise estimate has FUTILITY_MIN_DF degrees of freedom: a 3-run
# noise floor (df 2) is too rough a guess of the noise to project from; on the toy task a
# 3-sd gain whose first run came out low was dropped against it. In simulation
# (benchmarks/acceptance_sim.py, 30 sessions of 28 runs per cell) the stop bought 2-3 more
# experiments per session and more true gain at every noise level tried.
FUTILITY_SE = 1.0
FUTILITY_MIN_DF = 6
# Rule (3), the seed check (see the module docstring). SEED_LEVEL is the rate at which an
# honest candidate whose runs spread like the reference's is flagged, per look; at 2e-4 a
# pinned seed whose wobble is 1e-4 of the noise sd is flagged at its second run, 1e-2 at
# its third (against a 3-run noise floor alone; more reference df flag more). Two runs
# cannot tell a wobble of 1/20 of the noise from luck (|z| < 0.05 has a 4% chance), four
# nearly can (p ~2e-4): so a keep whose sd across seeds is under SEED_SUSPECT_RATIO of
# the reference's (or whose spread has p < SEED_SUSPECT) waits for more seeds, up to
# max_runs. That only costs runs: about one in five honest keeps at two runs takes another.
SEED_LEVEL = 2e-4
SEED_SUSPECT = 0.01
SEED_SUSPECT_RATIO = 0.25
# The paired test needs this many df of differences under shared seeds from earlier
# experiments (`paired_groups`): fewer, and a first run would be judged against a guess.
PAIRED_MIN_DF = 4
# The budget check (`_over_budget`): below this the watchdog's twice-a-second looks do not
# measure a sandboxed run's CPU time, so a shorter incumbent is taken as this long.
MIN_CPU_SECONDS = 1.0
_MASK31 = (1 << 31) - 1

_FAILED = {
    Status.CRASH: Verdict.CRASH,
    Status.OOM: Verdict.CRASH,
    Status.TIMEOUT: Verdict.TIMEOUT,
    Status.INVALID: Verdict.INVALID,
    Status.INTERRUPTED: Verdict.INTERRUPTED,
}


@dataclass(frozen=True)
class Noise:
    """A variance estimate with its degrees of freedom: the noise prior a session starts from
    (declared by the task, or carried from earlier sessions of comparable settings; see
    rsilab.loop.evidence). It enters the pool like a group of `df + 1` runs of that variance."""

    var: float
    df: int

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)


@dataclass(frozen=True)
class Judgement:
    """The decision about one experiment, with the figures behind it."""

    verdict: Verdict
    reason: str  # one line, with the figures
    effect: float | None  # mean gain of candidate over incumbent, positive = better
    ci_low: float | None  # 95% confidence interval of the effect
    ci_high: float | None
    p_value: float | None  # one-sided, H1: candidate better by more than min_effect
    n_candidate: int  # ok candidate runs used
    n_incumbent: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Stats:
    gain: float
    n_c: int
    n_i: int
    se: float | None = None  # standard error of the gain; None: no noise estimate
    df: int = 0
    p: float | None = None  # H1: gain > min_effect
    p_worse: float | None = None  # H1: gain < 0
    ci: tuple[float, float] | None = None
    seed: _Spread | None = None  # the candidate's spread against the reference's
    paired: bool = False  # the gain and its se come from differences under shared seeds


@dataclass(frozen=True)
class _Spread:
    """The candidate's spread across its runs against the reference noise (rule (3))."""

    sd: float  # the candidate's sample sd
    ref_sd: float  # the reference's pooled sd (> 0)
    p: float  # P(a spread this small | it spreads like the reference), F(n_c - 1, df_ref)
    identical: bool  # the candidate's values are identical (within REL_TOL)


def _prefixed(status: str, reason: str) -> str:
    """`status: reason`, without repeating a prefix the runner already wrote."""
    return reason if reason.startswith(f"{status}:") else f"{status}: {reason}"


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean of `values` (sum / n: the audit recomputes a decision metric so); None when
    there are none."""
    return sum(values) / len(values) if values else None


def noise_sigma(values: Sequence[float], prior: Noise | None = None) -> float | None:
    """Sample standard deviation of `values`, pooled with `prior` when there is one; None
    when that leaves no degree of freedom."""
    if prior is None:
        return statistics.stdev(values) if len(values) >= 2 else None
    var, df = _pool([values], prior)
    return math.sqrt(var) if df else None


def seed_schedule(base: int, experiment_id: int, run_index: int) -> int:
    """A fresh, deterministic harness seed in [0, 2**31) for run `run_index` of an experiment.

    A hash of (base, experiment_id) plus run_index, passed through a bijection of 31-bit
    integers: runs of one experiment always get distinct seeds, yet look unrelated.
    """
    if run_index < 0:
        raise ValueError(f"run_index must be >= 0, got {run_index}")
    digest = hashlib.blake2b(f"{base}:{experiment_id}".encode(), digest_size=4).digest()
    x = (int.from_bytes(digest, "little") + run_index) & _MASK31
    for mult, shift in ((0x2C1B3C6D, 15), (0x297A2D39, 12), (0x5BD1E995, 16)):
        x ^= x >> shift
        x = (x * mult) & _MASK31  # odd multiplier: a bijection mod 2**31
    return x ^ (x >> 15)


def _same(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _constant(values: Sequence[float]) -> bool:
    return all(_same(v, values[0]) for v in values)


def _pool(groups: Sequence[Sequence[float]], prior: Noise | None = None) -> tuple[float, int]:
    """(pooled variance, df) of the groups of >= 2 values and the `prior`; (0.0, 0) when there
    are none. Identical values (within REL_TOL) count as no variance at all, not as rounding
    noise."""
    groups = [g for g in groups if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    ss = sum((len(g) - 1) * statistics.variance(g) for g in groups if not _constant(g))
    if prior is not None and prior.df > 0:
        df, ss = df + prior.df, ss + prior.df * prior.var
    if not df or ss == 0:
        return 0.0, df
    return ss / df, df


def _steady_removed(
    noise_groups: Sequence[Sequence[float]], inc: Sequence[float], prior: Noise | None = None
) -> list[Sequence[float]]:
    """`noise_groups` without those that barely moved across their seeds, measured against
    the incumbent's spread at SEED_SUSPECT: like a candidate's, such runs are no evidence
    about the noise, and pooled they would lower the bar for every later candidate (earlier
    experiments that pinned their seed but were discarded, not flagged, would do so)."""
    inc_var, inc_df = _pool([inc], prior)
    if inc_var == 0:
        return list(noise_groups)
    kept: list[Sequence[float]] = []
    for g in noise_groups:
        var_g = statistics.variance(g) if len(g) >= 2 and not _constant(g) else 0.0
        if len(g) < 2 or stats.f.cdf(var_g / inc_var, len(g) - 1, inc_df) >= SEED_SUSPECT:
            kept.append(g)
    return kept


def _stats(
    cand: Sequence[float],
    inc: Sequence[float],
    metric: Metric,
    min_effect: float,
    noise_groups: Sequence[Sequence[float]] = (),
    prior: Noise | None = None,
    pairs: Sequence[float] | None = None,
    paired_groups: Sequence[Sequence[float]] = (),
) -> _Stats:
    cm, im = statistics.fmean(cand), statistics.fmean(inc)
    gain = metric.gain(cm, im)
    noise = _steady_removed(noise_groups, inc, prior)
    var, df = _pool([inc, *noise], prior)  # the reference: everything but the candidate
    seed = None
    if len(cand) >= 2:
        var_c = 0.0 if _constant(cand) else statistics.variance(cand)
        if var > 0:
            p_seed = float(stats.f.cdf(var_c / var, len(cand) - 1, df))
            seed = _Spread(math.sqrt(var_c), math.sqrt(var), p_seed, _constant(cand))
        if df:  # the candidate's runs may raise the noise estimate, never lower it
            var_c = max(var_c, var)
        df_c = len(cand) - 1
        var, df = (var * df + var_c * df_c) / (df + df_c), df + df_c
    n_c, n_i = len(cand), len(inc)
    se_scale = math.sqrt(1 / n_c + 1 / n_i)
    paired = False
    if pairs is not None:
        var_p, df_p = _pool(paired_groups)
        if df_p >= PAIRED_MIN_DF and var_p > 0:
            # The paired test (see the module docstring): the gain is the mean difference
            # under shared seeds; its noise is the pooled spread of such differences, which
            # the candidate's own differences may raise, never lower.
            gain, paired = statistics.fmean(pairs), True
            if len(pairs) >= 2:
                own, df_own = max(statistics.variance(pairs), var_p), len(pairs) - 1
                var_p = (var_p * df_p + own * df_own) / (df_p + df_own)
                df_p += df_own
            var, df, se_scale = var_p, df_p, math.sqrt(1 / len(pairs))
    if abs(gain) <= REL_TOL * max(abs(cm), abs(im)):
        gain = 0.0  # rounding in the means, not a difference
    if not df:
        return _Stats(gain, n_c, n_i)
    if var == 0:
        return _Stats(gain, n_c, n_i, se=0.0, df=df, ci=(gain, gain), seed=seed, paired=paired)
    se = math.sqrt(var) * se_scale
    half = float(stats.t.ppf(0.975, df)) * se
    return _Stats(
        gain, n_c, n_i, se=se, df=df,
        p=float(stats.t.sf((gain - min_effect) / se, df)),
        p_worse=float(stats.t.cdf(gain / se, df)),
        ci=(gain - half, gain + half), seed=seed, paired=paired,
    )  # fmt: skip


def cap_breach(
    runs: Sequence[RunResult],
    *,
    memory_gb: float = 0.0,
    gpu_memory_gb: float = 0.0,
    constraints: Mapping[str, float] | None = None,
) -> str | None:
    """Why the first run that breaks a cap breaks it (None: none does). 0 means no cap.

    `memory_gb` caps host memory (the watchdog's RSS), `gpu_memory_gb` the peak that
    train.py reports (rsilab.toml keys of the same names); `constraints` cap summary keys.
    """
    for i, r in enumerate(runs, 1):
        if memory_gb > 0 and r.peak_rss_gb > memory_gb:
            return f"peak memory {r.peak_rss_gb:.3g} GB over the {memory_gb:g} GB cap (memory_gb, run {i})"
        if gpu_memory_gb > 0 and r.peak_gpu_memory_gb > gpu_memory_gb:
            return (
                f"peak GPU memory {r.peak_gpu_memory_gb:.3g} GB over the {gpu_memory_gb:g} GB cap "
                f"(gpu_memory_gb, run {i})"
            )
        for key, limit in (constraints or {}).items():
            value = r.summary.get(key)
            if value is None:
                return f"constraint {key} <= {limit:g}: not reported (run {i})"
            if value > limit:
                return f"{key} {value:g} over the limit {limit:g} (run {i})"
    return None


_Out = Callable[..., "Judgement"]  # builds a Judgement from (verdict, reason[, flags])


def _g(x: float) -> str:
    return f"{x:+.4g}"


def judge(
    candidate: Sequence[RunResult],
    incumbent: Sequence[float],
    metric: Metric,
    spec: JudgeSpec,
    *,
    candidate_size: int | None = None,
    incumbent_size: int | None = None,
    memory_cap_gb: float = 0.0,
    gpu_memory_cap_gb: float = 0.0,
    constraints: Mapping[str, float] | None = None,
    noise_groups: Sequence[Sequence[float]] = (),
    min_runs: int | None = None,
    cpu_reference: Sequence[float] = (),
    prior: Noise | None = None,
    incumbent_seeds: Sequence[int] = (),
    paired_groups: Sequence[Sequence[float]] = (),
) -> Judgement:
    """Judge the candidate's runs so far against the incumbent's ok metric values.

    `noise_groups`: ok metric values of other experiments, one group per experiment (only
    groups of >= 2 values count); they sharpen the noise estimate and never move a mean.
    They must not hold the candidate's own runs (nor those of an earlier try of the same
    change): those would let it set its own bar, which `judge` otherwise refuses.
    `min_runs`: runs before a keep (None: spec.min_runs); capped at spec.max_runs.
    `cpu_reference`: the incumbent's CPU seconds per run (`train_cpu_seconds`, the runner's
    count) when the budget is one the run counts itself (FLOPs); a candidate whose runs used
    more than `spec.max_cpu_ratio` times as much is INVALID (flag "budget").
    `prior`: the noise known before this session; it pools with the session's groups.
    `incumbent_seeds`: the harness seed of each `incumbent` value (same order). When every
    candidate run has a partner under the same seed, the candidate is paired: values
    identical to their partners flag an inert change at once (DISCARD, flag "inert"), and
    with `paired_groups` (each earlier experiment's differences to its incumbent under shared
    seeds, groups of >= 2) worth PAIRED_MIN_DF df, the test is on the differences.
    """
    if not candidate or not incumbent:
        raise ValueError("judge needs at least one candidate run and one incumbent value")
    inc = [float(v) for v in incumbent]
    ok = [r for r in candidate if r.ok]
    vals = [float(r.metric) for r in ok if r.metric is not None]
    noise = [[float(v) for v in g] for g in noise_groups]
    pairs = (
        paired_differences(
            [(r.seed, float(r.metric)) for r in ok if r.metric is not None],
            list(zip(incumbent_seeds, inc, strict=True)),
            metric,
        )
        if len(incumbent_seeds) == len(inc)
        else None
    )
    st = (
        _stats(vals, inc, metric, spec.min_effect, noise, prior, pairs, paired_groups)
        if vals
        else None
    )

    def out(verdict: Verdict, reason: str, flags: tuple[str, ...] = ()) -> Judgement:
        ci = st.ci if st and st.ci else (None, None)
        return Judgement(verdict, reason, st.gain if st else None, ci[0], ci[1],
                         st.p if st else None, len(vals), len(inc), flags)  # fmt: skip

    for i, r in enumerate(candidate, 1):
        if not r.ok:
            where = f" (run {i})" if len(candidate) > 1 else ""
            if r.status is Status.OK:
                return out(Verdict.INVALID, f"invalid: no finite metric ({r.metric}){where}")
            return out(
                _FAILED[r.status], _prefixed(r.status.value, r.reason or "no reason given") + where
            )
    assert st is not None
    stretched = _over_budget(ok, cpu_reference, spec.max_cpu_ratio)
    if stretched:
        return out(Verdict.INVALID, stretched, ("budget",))
    breach = cap_breach(
        candidate, memory_gb=memory_cap_gb, gpu_memory_gb=gpu_memory_cap_gb, constraints=constraints
    )
    if breach:
        return out(Verdict.DISCARD, breach)
    seeds = {r.seed for r in ok}
    spread = st.seed if len(seeds) >= 2 else None
    if spread is not None and spread.p < SEED_LEVEL:
        if spread.identical:
            why = (
                f"metric {vals[0]:.6g} did not move under {len(seeds)} different harness "
                "seeds while the noise floor's did"
            )
        else:
            why = (
                f"metric barely moved under {len(seeds)} different harness seeds: sd "
                f"{spread.sd:.3g}, {_times(spread)} times less than the noise floor's "
                f"{spread.ref_sd:.3g} (p={spread.p:.2g})"
            )
        return out(Verdict.INVALID, why, ("ignores-seed",))
    if pairs and all(d == 0 for d in pairs):
        same = f"identical to the incumbent's under the same seed ({len(pairs)} run(s))"
        sizes = (candidate_size, incumbent_size)
        if sizes[0] is not None and sizes[1] is not None and sizes[0] < sizes[1]:
            return out(Verdict.KEEP, f"simpler ({sizes[1]} -> {sizes[0]} lines) and {same}")
        return out(Verdict.DISCARD, f"no effect: {same}", ("inert",))
    least = min(spec.min_runs if min_runs is None else min_runs, spec.max_runs)
    j = _decide(st, spec, least, candidate_size, incumbent_size, out)
    if (
        j.verdict is Verdict.KEEP
        and spread is not None
        and (spread.p < SEED_SUSPECT or spread.sd < SEED_SUSPECT_RATIO * spread.ref_sd)
        and st.n_c < spec.max_runs
    ):  # too steady to keep on this evidence: one more seed decides (rule (3) or a keep)
        return out(
            Verdict.MORE,
            f"{j.reason}; but its sd across seeds is {_times(spread)} times less than the "
            f"noise floor's (p={spread.p:.2g}): more seeds first",
        )
    return j


def paired_differences(
    candidate: Sequence[tuple[int, float]],
    incumbent: Sequence[tuple[int, float]],
    metric: Metric,
) -> list[float] | None:
    """The gain of each (seed, value) of the candidate over the incumbent's value under the
    same seed (0.0 when identical within REL_TOL), in order; None unless every one has a
    partner."""
    by_seed = dict(incumbent)
    out: list[float] = []
    for seed, value in candidate:
        partner = by_seed.get(seed)
        if partner is None:
            return None
        out.append(0.0 if _same(value, partner) else metric.gain(value, partner))
    return out or None


def _over_budget(ok: Sequence[RunResult], reference: Sequence[float], ratio: float) -> str:
    """Why the candidate's runs used too much CPU time against `reference`, or ""."""
    used = [float(r.summary[CPU_KEY]) for r in ok if CPU_KEY in r.summary]
    ref = [float(v) for v in reference if v > 0]
    if ratio <= 0 or not used or not ref:
        return ""
    mine, theirs = statistics.median(used), statistics.median(ref)
    # Below MIN_CPU_SECONDS the watchdog's looks (twice a second) do not measure a run, so a
    # short incumbent is taken as that long: no false alarm against a near-zero count.
    if mine <= ratio * max(theirs, MIN_CPU_SECONDS):
        return ""
    return (
        f"used {mine / theirs:.1f} times the incumbent's CPU time ({mine:.1f} s against "
        f"{theirs:.1f} s, the runner's count) under the same FLOPs budget, over "
        f"judge.max_cpu_ratio {ratio:g}: its own FLOPs count is not believed"
    )


def _times(spread: _Spread) -> str:
    """How many times smaller the candidate's spread is than the reference's, for a reason."""
    return f"{spread.ref_sd / spread.sd:.3g}" if spread.sd > 0 else "infinitely many"


def keep_threshold(
    incumbent: Sequence[float],
    metric: Metric,
    spec: JudgeSpec,
    runs: int,
    min_runs: int | None = None,
    prior: Noise | None = None,
) -> float | None:
    """The smallest gain that `judge` keeps from a candidate of `runs` ok runs (capped at
    spec.max_runs) against `incumbent`, with no other noise groups: what a change must buy
    at the start of a session. The candidate's values are the incumbent's first `runs`
    values (cycled), moved so that their mean is the incumbent's mean improved by the gain:
    its runs spread like the incumbent's. Assumes, as the t-test gives, that a larger gain
    is never kept less.

    None when the judge has no noise to test against (no `prior` and fewer than 2 incumbent
    values, or identical ones: any gain > min_effect is kept there) or when `runs` is below the runs a
    keep needs (`min_runs`, None: spec.min_runs). Found by bisection on `judge` itself, so
    it is exactly the rule's threshold, not a formula beside it (to 1e-6 of the noise sd).
    """
    runs = min(runs, spec.max_runs)
    var, _ = _pool([incumbent], prior)
    sd = math.sqrt(var)
    if not sd or runs < min(spec.min_runs if min_runs is None else min_runs, spec.max_runs):
        return None
    if len(incumbent) >= 2:
        spread = [incumbent[i % len(incumbent)] for i in range(runs)]
    else:  # one value and a prior: runs spread like the prior says
        spread = [incumbent[0] + sd * (i - (runs - 1) / 2) for i in range(runs)]
    centre = statistics.fmean(incumbent) - statistics.fmean(spread)
    sign = -1.0 if metric.direction == "min" else 1.0

    def kept(gain: float) -> bool:
        values = [v + centre + sign * gain for v in spread]
        cand = [RunResult(Status.OK, seed, v) for seed, v in enumerate(values)]
        j = judge(cand, incumbent, metric, spec, min_runs=min_runs, prior=prior)
        return j.verdict is Verdict.KEEP

    lo, hi = 0.0, sd
    while not kept(hi):
        lo, hi = hi, hi * 2
        if hi > 1e6 * sd:
            return None  # cannot happen with a finite level; a guard, not a result
    while hi - lo > 1e-6 * sd:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if kept(mid) else (mid, hi)
    return hi


def _futile(st: _Stats, spec: JudgeSpec, level: float) -> bool:
    """True when more runs are very unlikely to make the candidate significant: even an
    optimistic gain (the estimate plus FUTILITY_SE standard errors) would not pass the test
    with the candidate's runs at the cap, the noise estimate as it is (needs >=
    FUTILITY_MIN_DF df). Stopping only ever turns a later keep into a discard, so it cannot
    raise the rate of keeping noise; it saves the runs (up to max_runs - 1 per candidate)
    that confirmation would spend on hopeless gains."""
    assert st.se is not None
    if st.df < FUTILITY_MIN_DF:
        return False
    n, cap = st.n_c, spec.max_runs
    se_cap = st.se * math.sqrt((1 / cap + 1 / st.n_i) / (1 / n + 1 / st.n_i))
    optimistic = st.gain + FUTILITY_SE * st.se
    return float(stats.t.sf((optimistic - spec.min_effect) / se_cap, st.df + cap - n)) > level


def _decide(
    st: _Stats, spec: JudgeSpec, least: int, cand_size: int | None, inc_size: int | None, out: _Out
) -> Judgement:
    n, at_cap = st.n_c, st.n_c >= spec.max_runs
    need_confirm = n < least
    looks = spec.max_runs - least + 1
    level = spec.alpha / looks
    simpler = cand_size is not None and inc_size is not None and cand_size < inc_size
    lines = f"{inc_size} -> {cand_size} lines"
    counts = f"n={n} vs {st.n_i}"
    if st.gain <= 0 and not simpler:
        return out(Verdict.DISCARD, f"no gain: {_g(st.gain)}, {counts}")
    if st.se is None:  # one value each: no noise estimate
        if not at_cap:
            return out(Verdict.MORE, f"no noise estimate yet ({counts}): confirmation run")
        keep = st.gain > spec.min_effect or (simpler and st.gain == 0)
        return out(Verdict.KEEP if keep else Verdict.DISCARD,
                   f"no noise estimate ({counts}), plain comparison: gain {_g(st.gain)}")  # fmt: skip
    if st.se == 0:  # deterministic task: decide by direct comparison
        if need_confirm:
            return out(Verdict.MORE, f"no noise, gain {_g(st.gain)}: confirmation run")
        if st.gain > spec.min_effect:
            return out(Verdict.KEEP, f"deterministic gain {_g(st.gain)}, {counts}")
        if simpler and st.gain == 0:
            return out(Verdict.KEEP, f"simpler ({lines}) and equal (deterministic)")
        return out(
            Verdict.DISCARD, f"deterministic gain {_g(st.gain)} <= min_effect {spec.min_effect:g}"
        )
    assert st.p is not None and st.p_worse is not None and st.ci is not None
    figures = f"gain {_g(st.gain)} (95% CI {_g(st.ci[0])}..{_g(st.ci[1])}), p={st.p:.2g}, {counts}"
    if st.p < level and st.gain > spec.min_effect:
        if need_confirm:
            return out(Verdict.MORE, f"promising, {figures}: confirmation run")
        return out(Verdict.KEEP, f"better: {figures}, level {level:.2g}")
    if simpler:
        if st.p_worse < spec.alpha:
            return out(
                Verdict.DISCARD, f"simpler ({lines}) but worse, {figures}, p_worse={st.p_worse:.2g}"
            )
        if not at_cap:
            return out(Verdict.MORE, f"simpler ({lines}), tie so far, {figures}")
        return out(Verdict.KEEP, f"simpler ({lines}) and equal within noise, {figures}")
    if not at_cap:
        if _futile(st, spec, level):
            return out(Verdict.DISCARD, f"gain {_g(st.gain)} cannot become significant by run "
                       f"{spec.max_runs}: {figures}")  # fmt: skip
        return out(Verdict.MORE, f"promising, {figures}")
    floor = f" > min_effect {spec.min_effect:g}" if spec.min_effect else ""
    return out(Verdict.DISCARD, f"gain {_g(st.gain)}{floor} not significant, p={st.p:.2g}, n={n}")
