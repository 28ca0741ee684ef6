"""Acceptance rules in simulation: rsilab's judge against "keep any single-run gain", many seeds.

research_velocity.py answers the question on the real task, but a session there costs tens of
minutes. This script asks it of a synthetic loss surface, where a session takes a second and
the true value of every configuration is known, so tens of paired seeds give tight means and
"confirmed gain" is exact. What is real: the proposers (`tuner`, `random`), the judge
(`rsilab.loop.judge.judge`, the task's JudgeSpec) and the supervisor's policy around it
(`rsilab.loop.evidence`: the noise prior, paired seeds, the window of noise groups, undoing a
keep after a re-check; the baseline's noise runs, a candidate's runs until the judge decides,
the knob-only shortcut, a re-check of the incumbent every `recheck_every` experiments), all
at equal runs per session: every noise, confirmation and re-check run counts. What is not:
the loss surface and its noise.

The surface, over the knobs of the bundled gpt task's train.py (cpu preset): a fixed
training-compute budget C split between parameters N and tokens D = C / 6N (a
Chinchilla-style E + A/N^a + B/D^b), plus a cost for few optimizer steps and small batches,
plus log-quadratic bowls in the learning rates, init scale and betas, and small effects for
the rest; DROPOUT > 0.6, INIT_STD < 0.004 or BETA2 < 0.2 diverge; MATRIX_LR matters only with
OPTIMIZER = "muon". From the task's defaults it has the shape the real benchmark found at
6e11 FLOPs (start about 3.9; large gains from a smaller, shallower model and shorter
context). Two starts: "defaults" (the task as shipped) and "tuned" (near the optimum: the
gains left are small and rare, the regime of a second night).

The noise, calibrated on the real task under a FLOPs budget (issue 21): the sd of one run
grows from --sigma-defaults (0.008) at the defaults' loss to --sigma-tuned (0.02) at the
tuned one (linear in the loss between them). A run's noise is sd * (sqrt(0.2) a_seed +
sqrt(rho_shape - 0.2) a_seed,shape + sqrt(1 - rho_shape) e_seed,config): two configurations
under one harness seed correlate at 0.8 when they agree on the knobs that shape the init
and the data order (SEED_SHAPE) and at 0.2 otherwise (measured: 0.75-0.84 for LR or
WEIGHT_DECAY moves, 0.22 for WIDTH), and one configuration under one seed gives the same
value every time (training on a CPU is deterministic), so an inert change repeats its
incumbent's value exactly.

    python benchmarks/acceptance_sim.py --seeds 40 --runs 28,150
    python benchmarks/acceptance_sim.py --arms judge,single --set judge.alpha=0.2  # another judge

Arms (`--arms`): `judge` (the tuner with the task's judge and policy; the prior is a
declared noise sd estimated with `judge.noise_df` df around the start's true sd, as a task
or an earlier session would give it), `random` (the same with the random proposer),
`single` (the single-run rule, a fresh seed per run), `single-one-seed` (the single-run rule
under one harness seed, autoresearch's own form), `oracle` (one run per experiment, kept
exactly when truly better: the most any rule could get from these proposals), and
`judge-v1` (the judge as shipped before issue 21: no prior, no pairing, every noise group,
no undo), `gp` (the judge with a tuner that samples with Optuna's GPSampler, not TPE).

Per arm: the mean true gain of the final incumbent over the start, its se over seeds and
its 10th percentile; the mean |claimed - confirmed| gain of the final incumbent (claimed:
what the ledger's runs say, the baseline's mean minus the incumbent's; confirmed: the true
gain); the share of keeps whose true effect is <= 0; experiments and keeps. Then the arms
paired by seed, and the issue's criteria with their verdicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from _common import paired_row, table

from rsilab import paths
from rsilab.config import ConfigError, JudgeSpec, TaskSpec, load_task, parse_override
from rsilab.loop import evidence
from rsilab.loop.judge import judge, paired_differences
from rsilab.proposers import create
from rsilab.proposers.base import Context, register
from rsilab.proposers.knobs import collect_knobs, set_knobs_in_files
from rsilab.proposers.tuner import N_STARTUP, Tuner
from rsilab.results import Metric, RunResult, Status, Verdict

COMPUTE = 6e11  # training FLOPs per run
TUNED = {
    "WIDTH": 48,
    "DEPTH": 1,
    "MLP_RATIO": 2,
    "SEQ_LEN": 64,
    "BATCH_SIZE": 8,
    "LR": 0.003,
    "OPTIMIZER": "muon",
    "MATRIX_LR": 0.1,
    "BETA1": 0.8,
    "INIT_STD": 0.03,
}
AUTORESEARCH = JudgeSpec(
    noise_runs=1, max_runs=1, min_runs=1, knob_min_runs=1, alpha=0.5, recheck_every=0
)
# The judge as shipped before issue 21 (its defaults then; no prior, pairing, window or undo).
V1 = JudgeSpec(noise_df=0, pair_seeds=False, noise_window=0, undo=False)
METRIC = Metric("val_bpb", "min")
ARMS = ("judge", "random", "single", "single-one-seed", "oracle", "judge-v1", "gp")
DEFAULT_ARMS = ("judge", "random", "single", "single-one-seed", "oracle")


def true_loss(k: Mapping[str, Any]) -> float:
    """The synthetic surface (see the module docstring); lower is better."""
    if k["INIT_STD"] < 0.004 or k["BETA2"] < 0.2 or k["DROPOUT"] > 0.6:
        return 5.0 + k["DROPOUT"]  # diverged
    width, depth, ratio = k["WIDTH"], k["DEPTH"], k["MLP_RATIO"]
    params = depth * width * width * (4 + 2 * ratio) + 256 * width
    tokens = COMPUTE / (6 * params)
    per_step = k["BATCH_SIZE"] * k["SEQ_LEN"]
    loss = (
        1.0
        + 25 / params**0.3
        + 60 / tokens**0.3
        + 8 / (tokens / per_step) ** 0.5
        + 3 / per_step**0.5
    )
    loss += 0.3 * math.log10(k["LR"] / 3e-3) ** 2
    if k["OPTIMIZER"] == "muon":
        loss += -0.06 + 0.2 * math.log10(k["MATRIX_LR"] / 0.15) ** 2
    loss += 0.2 * (k["BETA1"] - 0.8) ** 2 + 0.3 * max(0.0, 0.9 - k["BETA2"]) ** 2
    loss += 1.5 * k["DROPOUT"] + 0.4 * math.log10(k["INIT_STD"] / 0.03) ** 2
    loss += 0.03 * abs(k["WEIGHT_DECAY"] - 0.1) + 0.1 * (k["WARMUP_FRAC"] - 0.02) ** 2
    loss += 0.1 * (k["WARMDOWN_FRAC"] - 0.3) ** 2 + 0.01 * abs(math.log(max(k["GRAD_CLIP"], 0.05)))
    loss += (
        0.005 * abs(k["HEADS"] - 2)
        + {"gelu": 0.0, "relu": 0.01, "relu2": -0.01, "swiglu": 0.005}[k["ACTIVATION"]]
    )
    loss += (0.0 if k["NORM"] == "rmsnorm" else 0.005) + (
        -0.02 if k["POS_ENCODING"] == "rope" else 0.0
    )
    return loss


@register("tuner-gp")
class GPTuner(Tuner):
    """The tuner with Optuna's Gaussian-process sampler instead of TPE (arm `gp`)."""

    name = "tuner-gp"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=N_STARTUP)


@dataclass
class Outcome:
    gain: float  # true loss of the start - true loss of the final incumbent
    claimed: float  # the same from the session's own measurements
    experiments: int
    kept: int
    false_keeps: int  # keeps whose true effect was <= 0
    undone: int = 0


# What changes how the harness seed acts: parameter shapes (init) and the data windows
# drawn per step. Configurations that agree on these share most of a seed's effect.
SEED_SHAPE = ("WIDTH", "DEPTH", "MLP_RATIO", "HEADS", "BATCH_SIZE", "SEQ_LEN", "ACTIVATION")
RHO_COMMON, RHO_SHAPE = 0.2, 0.8  # correlation under one seed: other shapes, the same shape


@dataclass(frozen=True)
class World:
    """The noise of the surface (see the module docstring)."""

    sigma_defaults: float
    sigma_tuned: float
    loss_defaults: float
    loss_tuned: float

    def sigma(self, loss: float) -> float:
        span = self.loss_defaults - self.loss_tuned
        t = min(1.0, max(0.0, (self.loss_defaults - loss) / span)) if span > 0 else 0.0
        return self.sigma_defaults + t * (self.sigma_tuned - self.sigma_defaults)


@dataclass(frozen=True)
class Arm:
    proposer: str
    spec: JudgeSpec | None  # None: the oracle
    fixed_seed: bool = False  # every run under one harness seed (autoresearch's own way)
    policy: bool = True  # the supervisor's policy of issue 21 (prior, pairs, window, undo)


def _effective(k: Mapping[str, Any]) -> tuple[Any, ...]:
    """The knobs that change the computation: MATRIX_LR is inert without muon."""
    return tuple(
        (n, v) for n, v in sorted(k.items()) if n != "MATRIX_LR" or k["OPTIMIZER"] == "muon"
    )


def session(
    arm: Arm,
    files: Mapping[str, str],
    world: World,
    runs: int,
    seed: int,
    surface: Callable[[Mapping[str, Any]], float] = true_loss,
    task: TaskSpec | None = None,
) -> Outcome:
    """One session of `runs` runs, in the supervisor's order (see the module docstring). The
    proposer reads its options and the search space (conditions) from `task`."""
    rng = random.Random(f"{seed}")
    p = create(arm.proposer, task=task, seed=seed)
    knobs = {n: k.value for n, (_, k) in collect_knobs(files, "cpu").items()}
    spec = arm.spec
    draws: dict[tuple[Any, ...], float] = {}

    def draw(*key: Any) -> float:  # one standard normal per key, the same every time
        if key not in draws:
            draws[key] = rng.gauss(0.0, 1.0)
        return draws[key]

    def measure(k: Mapping[str, Any], s: int) -> float:
        true = surface(k)
        shape = tuple(k[n] for n in SEED_SHAPE)
        z = (
            math.sqrt(RHO_COMMON) * draw("seed", s)
            + math.sqrt(RHO_SHAPE - RHO_COMMON) * draw("shape", s, shape)
            + math.sqrt(1 - RHO_SHAPE) * draw("run", s, _effective(k))
        )
        return true + world.sigma(true) * z

    fresh_seeds = iter(range(1, 10**9))

    def fresh() -> int:
        return 0 if arm.fixed_seed else next(fresh_seeds)

    start = true = surface(knobs)
    policy = arm.policy and spec is not None
    prior = None
    if policy and spec is not None and spec.noise_df > 0:
        # A declared or carried sd, itself an estimate: chi-square with noise_df df.
        sd0 = world.sigma(start)
        var = sd0**2 * sum(rng.gauss(0, 1) ** 2 for _ in range(spec.noise_df)) / spec.noise_df
        prior = evidence.prior(dataclasses.replace(spec, noise_sd=math.sqrt(var)))
    noise_runs = (spec.prior_runs if prior else spec.noise_runs) if spec else 1
    inc: list[tuple[int, float]] = []
    for _ in range(noise_runs):
        s = fresh()
        inc.append((s, measure(knobs, s)))
    base = [v for _, v in inc]
    used, experiments, kept, false_keeps, undone, since_recheck = noise_runs, 0, 0, 0, 0, 0
    groups: list[list[float]] = []  # judged experiments with >= 2 runs, not the incumbent
    paired: list[list[float]] = []  # their differences to their incumbent under shared seeds
    parents: list[tuple[dict[str, Any], Mapping[str, str], list[tuple[int, float]]]] = []
    against = 0  # experiments judged against the incumbent
    while used < runs:
        if spec and spec.recheck_every and since_recheck >= spec.recheck_every:
            s = fresh()
            inc, used, since_recheck = [*inc, (s, measure(knobs, s))], used + 1, 0
            if policy and spec.undo and parents:
                why = evidence.undo([v for _, v in inc], [v for _, v in parents[-1][2]], METRIC)
                if why:
                    knobs, files, inc = parents.pop()
                    true, undone, against = surface(knobs), undone + 1, 0
            continue
        ctx = Context(
            files=files,
            metric=METRIC,
            incumbent_metric=statistics.fmean(v for _, v in inc),
            history=[],
            in_flight=[],
            preset="cpu",
        )
        proposal = p.propose(ctx)
        if proposal is None:
            break
        moved = {**knobs, **proposal.knobs}
        inc_seeds = [s for s, _ in inc]
        cand: list[RunResult] = []
        while True:  # knob-only proposals: judge.knob_min_runs applies
            if policy and spec is not None and spec.pair_seeds:
                got = evidence.candidate_seed(inc_seeds, [r.seed for r in cand])
                if got is None and not evidence.wants_partner(against):
                    got = fresh()  # unpaired
                elif got is None:  # the incumbent's partner run first
                    got = fresh()
                    inc, used = [*inc, (got, measure(knobs, got))], used + 1
                    inc_seeds = [x for x, _ in inc]
                s = got
            else:
                s = fresh()
            cand.append(RunResult(Status.OK, s, measure(moved, s)))
            used += 1
            if spec is None:
                verdict = Verdict.KEEP if surface(moved) < true else Verdict.DISCARD
                break
            if policy:
                j = judge(
                    cand, [v for _, v in inc], METRIC, spec,
                    noise_groups=evidence.recent(groups, spec.noise_window),
                    min_runs=spec.knob_min_runs, prior=prior,
                    incumbent_seeds=inc_seeds if spec.pair_seeds else (),
                    paired_groups=evidence.recent(paired, spec.noise_window),
                )  # fmt: skip
            else:
                j = judge(
                    cand, [v for _, v in inc], METRIC, spec, noise_groups=groups,
                    min_runs=spec.knob_min_runs,
                )  # fmt: skip
            verdict = j.verdict
            if verdict is not Verdict.MORE or used >= runs:
                break
        values = [r.metric for r in cand if r.metric is not None]
        experiments, since_recheck, against = experiments + 1, since_recheck + 1, against + 1
        diffs = judge_pairs(cand, inc)
        if verdict is Verdict.KEEP:
            groups += [[v for _, v in inc]] if len(inc) >= 2 else []
            false_keeps += surface(moved) >= true
            parents.append((knobs, files, inc))
            files, knobs, true, kept = {**files, **proposal.files}, moved, surface(moved), kept + 1
            against = 0
            inc = [(r.seed, r.metric) for r in cand if r.metric is not None]
        elif len(values) >= 2:
            groups.append(values)
        if diffs is not None and len(diffs) >= 2:
            paired.append(diffs)
        p.observe(proposal, verdict, statistics.fmean(values))
    claimed = statistics.fmean(base) - statistics.fmean(v for _, v in inc) if kept else 0.0
    return Outcome(start - true, claimed, experiments, kept, false_keeps, undone)


def judge_pairs(cand: list[RunResult], inc: list[tuple[int, float]]) -> list[float] | None:
    """The candidate's differences to the incumbent under shared seeds (all runs paired)."""
    return paired_differences([(r.seed, float(r.metric or 0.0)) for r in cand], inc, METRIC)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _lower95(diff: list[float]) -> float:
    return statistics.fmean(diff) - 1.645 * statistics.stdev(diff) / math.sqrt(len(diff))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40, help="sessions per cell (paired by seed)")
    ap.add_argument("--runs", default="28,150", help="runs per session, comma-separated")
    ap.add_argument(
        "--sigma-defaults", type=float, default=0.008, help="sd of a run at the defaults"
    )
    ap.add_argument("--sigma-tuned", type=float, default=0.02, help="sd of a run at tuned")
    ap.add_argument("--starts", default="defaults,tuned", help="defaults, tuned, or both")
    ap.add_argument(
        "--arms",
        default="",
        help=f"comma-separated, from {', '.join(ARMS)} (default: {', '.join(DEFAULT_ARMS)})",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the gpt task for the judge arms, e.g. --set judge.alpha=0.2",
    )
    ap.add_argument(
        "--partner-after",
        type=int,
        default=None,
        help="policy variant: evidence.PARTNER_AFTER (partner runs only for an incumbent that "
        "has outlived this many experiments)",
    )
    args = ap.parse_args()
    if args.partner_after is not None:
        evidence.PARTNER_AFTER = args.partner_after
    try:
        task = load_task(
            paths.bundled_tasks_dir() / "gpt", [parse_override(o) for o in args.overrides]
        )
    except ConfigError as e:
        raise SystemExit(f"--set: {e}") from None
    shipped = {"train.py": (task.root / "train.py").read_text()}
    starts = {
        "defaults": shipped,
        "tuned": {**shipped, **set_knobs_in_files(shipped, TUNED, "cpu")},
    }
    losses = {
        name: true_loss({n: k.value for n, (_, k) in collect_knobs(f, "cpu").items()})
        for name, f in starts.items()
    }
    world = World(args.sigma_defaults, args.sigma_tuned, losses["defaults"], losses["tuned"])
    every = {
        "judge": ("tuner + judge", Arm("tuner", task.judge)),
        "random": ("random + judge", Arm("random", task.judge)),
        "single": ("tuner + single-run rule", Arm("tuner", AUTORESEARCH, policy=False)),
        "single-one-seed": (
            "tuner + single-run rule, one seed",
            Arm("tuner", AUTORESEARCH, fixed_seed=True, policy=False),
        ),
        "oracle": ("tuner + oracle (bound)", Arm("tuner", None)),
        "judge-v1": ("tuner + judge v1", Arm("tuner", V1, policy=False)),
        "gp": ("GP tuner + judge", Arm("tuner-gp", task.judge)),
    }
    picked = [a.strip() for a in args.arms.split(",")] if args.arms else list(DEFAULT_ARMS)
    unknown = [a for a in picked if a not in every]
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)} (choose from {', '.join(every)})")
    arms = {key: every[key] for key in every if key in picked}
    print(
        f"synthetic surface (see docstring), {args.seeds} seeds per cell, sd "
        f"{world.sigma_defaults:g} at the defaults ({world.loss_defaults:.3f}) to "
        f"{world.sigma_tuned:g} at tuned ({world.loss_tuned:.3f}); judge: {task.judge}",
        flush=True,
    )
    rows, pairs, checks = [], [], []
    for start in [s.strip() for s in args.starts.split(",") if s.strip()]:
        for runs in [int(r) for r in args.runs.split(",")]:
            cell: dict[str, list[Outcome]] = {}
            for key, (label, arm) in arms.items():
                t0 = time.time()
                out = cell[key] = [
                    session(arm, starts[start], world, runs, s, task=task)
                    for s in range(args.seeds)
                ]
                gains = [o.gain for o in out]
                keeps = sum(o.kept for o in out)
                rows.append(
                    [
                        start, runs, label,
                        f"{statistics.fmean(gains):+.4f}",
                        f"{statistics.stdev(gains) / math.sqrt(len(gains)):.4f}",
                        f"{_pct(gains, 0.1):+.4f}",
                        f"{statistics.fmean(abs(o.claimed - o.gain) for o in out):.4f}",
                        f"{sum(o.false_keeps for o in out) / keeps:.0%}" if keeps else "-",
                        f"{statistics.fmean(o.experiments for o in out):.1f}",
                        f"{statistics.fmean(o.kept for o in out):.1f}",
                        f"{statistics.fmean(o.undone for o in out):.1f}",
                        f"{time.time() - t0:.0f}",
                    ]
                )  # fmt: skip
                print(" | ".join(map(str, rows[-1])), flush=True)
            keys = list(cell)
            for other in keys[1:]:
                diff = [a.gain - b.gain for a, b in zip(cell[keys[0]], cell[other], strict=True)]
                pairs.append([start, runs, f"{keys[0]} - {other}", *paired_row(diff),
                              f"{_lower95(diff):+.4f}"])  # fmt: skip
            checks += criteria(start, runs, cell)
    print()
    print(
        table(
            ["start", "runs", "arm", "true gain", "se", "p10", "|claimed-true|",
             "false keeps", "experiments", "kept", "undone", "seconds"],
            rows,
        )
    )  # fmt: skip
    print()
    print("paired by seed: the true gain of the first arm minus the second's")
    print(
        table(["start", "runs", "arms", "mean difference", "se", "first ahead", "lower 95%"], pairs)
    )
    if checks:
        print()
        print(table(["criterion", "cell", "figures", "met"], checks))


def criteria(start: str, runs: int, cell: Mapping[str, list[Outcome]]) -> list[list[str]]:
    """Issue 21's targets for one cell, where its arms were run."""
    out: list[list[str]] = []
    where = f"{start}, {runs} runs"
    judge_ = cell.get("judge")
    if judge_ is None:
        return out
    gains = [o.gain for o in judge_]
    singles = [k for k in ("single", "single-one-seed") if k in cell]
    if start == "defaults" and singles:
        best = max(singles, key=lambda k: statistics.fmean(o.gain for o in cell[k]))
        diff = [a.gain - b.gain for a, b in zip(judge_, cell[best], strict=True)]
        low = _lower95(diff)
        out.append(["first night: judge >= best single - 0.010 (one-sided 95%)", where,
                    f"vs {best}: {statistics.fmean(diff):+.4f}, lower {low:+.4f}",
                    "yes" if low >= -0.010 else "no"])  # fmt: skip
        p10, p10s = _pct(gains, 0.1), _pct([o.gain for o in cell[best]], 0.1)
        out.append(["first night: p10 >= single's p10 - 0.03", where,
                    f"{p10:+.4f} vs {p10s:+.4f}", "yes" if p10 >= p10s - 0.03 else "no"])  # fmt: skip
    if start == "tuned" and "single-one-seed" in cell:
        diff = [a.gain - b.gain for a, b in zip(judge_, cell["single-one-seed"], strict=True)]
        mean, low = statistics.fmean(diff), _lower95(diff)
        out.append(["second night: judge - one-seed single >= +0.004, lower > 0", where,
                    f"{mean:+.4f}, lower {low:+.4f}",
                    "yes" if mean >= 0.004 and low > 0 else "no"])  # fmt: skip
    if start == "tuned" and "oracle" in cell:
        share = statistics.fmean(gains) / statistics.fmean(o.gain for o in cell["oracle"])
        out.append(["second night: >= 40% of the oracle's gain", where, f"{share:.0%}",
                    "yes" if share >= 0.4 else "no"])  # fmt: skip
    err = statistics.fmean(abs(o.claimed - o.gain) for o in judge_)
    keeps = sum(o.kept for o in judge_)
    false = sum(o.false_keeps for o in judge_) / keeps if keeps else 0.0
    out.append(["claims hold: mean |claimed - confirmed| <= 0.005", where, f"{err:.4f}",
                "yes" if err <= 0.005 else "no"])  # fmt: skip
    out.append(["claims hold: <= 10% of keeps with true effect <= 0", where, f"{false:.0%}",
                "yes" if false <= 0.10 else "no"])  # fmt: skip
    if start == "defaults" and "random" in cell:
        diff = [a.gain - b.gain for a, b in zip(judge_, cell["random"], strict=True)]
        out.append(["proposer: tuner >= random + 0.03", where,
                    f"{statistics.fmean(diff):+.4f}",
                    "yes" if statistics.fmean(diff) >= 0.03 else "no"])  # fmt: skip
    return out


if __name__ == "__main__":
    main()
