"""Scores against human research. Owns: `rsilab score`: the normalized score, its interval, and
the milestones (adequacy, parity, supremacy) read from ledgers.

Every contender (the baseline, each human reference solution of the task, the run's
incumbent or any commit, and the incumbents of human-steered runs it is compared with) is
checked out with `git archive` (read-only for every repository involved), trained and
evaluated by the real runner under the same task settings and the same seeds (from
`judge.seed_schedule` with `SCORE_SEED_BASE`, apart from research and confirmation seeds),
seed by seed across contenders so a change of machine load hits all of them alike.

Normalized score (RE-Bench's convention): 0 = the baseline, 1 = the human reference,
`gain(x, baseline) / gain(reference, baseline)`, i.e. (b - x) / (b - r) for a metric where
lower is better. Every contender runs the same seeds, so the analysis is paired by seed
(common random numbers: data order and initialisation noise shared between contenders
cancel; no assumption that contenders are equally noisy, which a closed-form reference
next to an SGD baseline is not). Its 95% interval is Fieller's interval for the ratio of
the mean per-seed gains (exact for normal noise, Student t with pairs - 1 degrees of
freedom; the delta method is its first-order approximation and fails as the reference's
gain nears the noise). When the reference does not beat the baseline clearly the interval
is unbounded, and the report says so rather than print a meaningless ratio. Seeds where a
contender failed drop out of the comparisons that involve it.

Milestones (all three are about research without a person, so each needs "unattended": no
ledger event of kind "control", no experiment by the "queue" proposer, no decision taken by
a person): adequacy = the incumbent beats the baseline (one-sided paired t-test at the
judge's alpha); parity = the interval's low end >= 1 against the best reference;
supremacy = the incumbent beats, by the same test, the best incumbent of every comparable
run (same task, budget and evaluation) that had human steering: other workspaces given
with `--compare`, and other research tags in this repository.

`score.json` (written to the workspace root; `build_report` makes it):
    version, created_at, metric {name, direction}, settings {budget, budget_flops, preset,
    ..., seeds, workspace, tag}, ci_method, reference (the best reference's name),
    arms [{name, kind (baseline|reference|incumbent|commit|steered), commit, source, seeds,
    results (by seed, null = failed), mean, sd, n_ok, failures, compute_s}],
    score (vs the best reference) and scores {reference name: the same} and arm_scores
    {arm name: the same, vs the best reference}, each {estimate, low, high, bounded, note},
    improvement {gain, ci_low, ci_high, p_value, pairs} (incumbent vs baseline),
    autonomy {unattended, control_events, queue_experiments, human_decisions, reason},
    milestones {adequacy|parity|supremacy: {reached, reason[, against]}}, milestone (the
    highest reached, or null), skipped [why a compared run was left out], notes.

Not covered: the HTML report (it reads `score.json`), choosing what to compare against.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from rsilab import paths
from rsilab.config import COMPARABLE_KEYS, TaskSpec
from rsilab.errors import ConfigError, WorkspaceError
from rsilab.fsio import atomic_write, json_safe
from rsilab.loop.judge import seed_schedule
from rsilab.notify import Notify, silent
from rsilab.record.ledger import Ledger
from rsilab.results import Metric
from rsilab.run.bench import Bench
from rsilab.workspace import Workspace, export_tree, git, open_workspace

SCORE_SEED_BASE = 7_000_003  # seeds of score runs; research uses task.seed (0 by default)
REFERENCE_DIR = "reference"  # a task's folder of human reference solutions
SCORE_FILE = "score.json"
MILESTONES = ("adequacy", "parity", "supremacy")
# Settings that must match for results of two workspaces to be compared: the task's
# comparable settings (config.COMPARABLE_KEYS) and the preset, but the research seed, which
# differs legitimately between runs.
ACROSS_WORKSPACES = (*(k for k in COMPARABLE_KEYS if k != "seed"), "preset")


# ---- contenders and their results ------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """Something to evaluate: a commit of a repository, optionally with files written over it."""

    name: str
    kind: str  # baseline | reference | incumbent | commit | steered
    repo: Path
    commit: str
    overlay: Mapping[str, str] = field(default_factory=dict)  # relative path -> content
    source: str = ""  # where it came from, for the report

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """Two contenders with the same key are the same code: evaluated once."""
        return str(self.repo.resolve()), self.commit, tuple(sorted(self.overlay.items()))


@dataclass
class Arm:
    """A contender's runs: the metric by seed (None where the run failed), and why they failed."""

    name: str
    kind: str
    commit: str
    source: str
    seeds: list[int] = field(default_factory=list)
    results: list[float | None] = field(default_factory=list)  # aligned with `seeds`
    failures: list[str] = field(default_factory=list)
    compute_s: float = 0.0

    @property
    def values(self) -> list[float]:
        return [v for v in self.results if v is not None]

    @property
    def by_seed(self) -> dict[int, float]:
        return {k: v for k, v in zip(self.seeds, self.results, strict=True) if v is not None}

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% interval; `bounded` is False when the data cannot bound it."""

    estimate: float | None
    low: float | None
    high: float | None
    bounded: bool
    note: str = ""


@dataclass(frozen=True)
class Autonomy:
    """Whether a run was unattended, from its ledger."""

    unattended: bool
    control_events: int
    queue_experiments: int
    human_decisions: int

    @property
    def reason(self) -> str:
        if self.unattended:
            return "no control action, queued idea or human decision in the ledger"
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.control_events, "control events"),
                (self.queue_experiments, "queued experiments"),
                (self.human_decisions, "human decisions"),
            )
            if n
        ]
        return "steered by a person: " + ", ".join(parts)


# ---- statistics (pure) -----------------------------------------------------------------

PerSeed = Mapping[int, float]  # seed -> metric value of a successful run


def _paired(*arms: PerSeed) -> list[int]:
    """The seeds every one of `arms` ran successfully: the pairs a comparison may use."""
    common = set(arms[0]).intersection(*arms[1:])
    return sorted(common)


def normalized_score(
    baseline: float, reference: float, candidate: float, metric: Metric
) -> float | None:
    """RE-Bench's normalized score: 0 at the baseline, 1 at the reference (None if they tie)."""
    denom = metric.gain(reference, baseline)
    if denom == 0:
        return None
    return metric.gain(candidate, baseline) / denom


def fieller(
    baseline: PerSeed, reference: PerSeed, candidate: PerSeed, metric: Metric, level: float = 0.95
) -> Interval:
    """The normalized score with Fieller's interval, paired by seed (see the module docstring).

    Per seed k: A_k = gain(candidate_k, baseline_k), B_k = gain(reference_k, baseline_k);
    theta = mean(A) / mean(B). The interval is the set of theta with (mean(A) - theta
    mean(B))^2 <= t^2 var(mean(A) - theta mean(B)), variances and covariance estimated from
    the pairs (df = pairs - 1); bounded iff mean(B) is significant at `level`.
    """
    seeds = _paired(baseline, reference, candidate)
    if not seeds:
        return Interval(None, None, None, False, "no seed on which all three ran successfully")
    a = [metric.gain(candidate[k], baseline[k]) for k in seeds]
    b = [metric.gain(reference[k], baseline[k]) for k in seeds]
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    point = ma / mb if mb != 0 else None
    if mb <= 0:  # a ratio to a reference that is not better than the baseline measures nothing
        return Interval(
            point,
            None,
            None,
            False,
            "the reference is not better than the baseline at this budget: no scale",
        )
    n = len(seeds)
    if n < 2:
        return Interval(point, None, None, False, "one seed: no noise estimate")
    v11, v22 = statistics.variance(a) / n, statistics.variance(b) / n
    v12 = statistics.covariance(a, b) / n
    if v11 == 0 and v22 == 0:
        return Interval(
            point, point, point, point is not None, "no noise: the gains are the same on every seed"
        )
    t2 = float(stats.t.ppf(0.5 + level / 2, n - 1)) ** 2
    qa = mb**2 - t2 * v22
    qb = ma * mb - t2 * v12
    qc = ma**2 - t2 * v11
    if qa <= 0:
        return Interval(
            point,
            None,
            None,
            False,
            "the reference does not beat the baseline clearly: the score is not bounded",
        )
    half = math.sqrt(max(qb**2 - qa * qc, 0.0))
    return Interval(point, (qb - half) / qa, (qb + half) / qa, True)


@dataclass(frozen=True)
class Comparison:
    """Paired one-sided t-test of H1 "a is better than b" over the seeds both ran."""

    gain: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    pairs: int = 0


def compare(a: PerSeed, b: PerSeed, metric: Metric) -> Comparison:
    seeds = _paired(a, b)
    if not seeds:
        return Comparison(None, None, None, None)
    d = [metric.gain(a[k], b[k]) for k in seeds]
    gain, n = statistics.fmean(d), len(d)
    if n < 2:
        return Comparison(gain, None, None, None, n)
    se = statistics.stdev(d) / math.sqrt(n)
    if se == 0:
        return Comparison(gain, gain, gain, 0.0 if gain > 0 else 1.0, n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return Comparison(gain, gain - half, gain + half, float(stats.t.sf(gain / se, n - 1)), n)


# ---- ledgers: autonomy and steered runs --------------------------------------------------


def tag_experiments(repo: Path, tag: str) -> set[int] | None:
    """Ids of the experiments of research tag `tag` (from refs/rsilab/<tag>/exp-NNNN);
    None when the repository has no such refs (then every experiment of the ledger counts)."""
    out = git(repo, "for-each-ref", "--format=%(refname)", f"refs/rsilab/{tag}/", check=False)
    ids = {int(m.group(1)) for line in out.splitlines() if (m := re.search(r"/exp-(\d+)$", line))}
    return ids or None


def autonomy(ledger: Ledger, experiment_ids: set[int] | None = None) -> Autonomy:
    """Whether the research recorded in `ledger` (only `experiment_ids`, when given) had a person
    in the loop. Control events carry no research tag, so every one of them counts."""
    controls = sum(1 for e in ledger.events() if e.kind == "control")
    exps = [e for e in ledger.experiments() if experiment_ids is None or e.id in experiment_ids]
    queued = sum(1 for e in exps if e.proposer == "queue")
    ids = {e.id for e in exps}
    human = sum(1 for d in ledger.decisions() if d.experiment_id in ids and d.source == "human")
    return Autonomy(controls == 0 and queued == 0 and human == 0, controls, queued, human)


def _mismatch(ours: Mapping[str, Any], theirs: Mapping[str, Any] | None) -> str | None:
    """Why two runs' settings do not compare, or None. Unknown settings count as the same
    (the report says so); a ledger older than the FLOPs budget had none."""
    if theirs is None:
        return None
    for key in ACROSS_WORKSPACES:
        if key not in theirs and key != "budget_flops":
            continue
        mine, other = ours.get(key), theirs.get(key, 0.0)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (mine, other))
        if (float(mine) != float(other)) if numbers else (mine != other):  # type: ignore[arg-type]
            return f"{key} {other!r} != {mine!r}"
    return None


@dataclass(frozen=True)
class SteeredRun:
    """A run on the same task and budget that had human steering: its best result."""

    contender: Contender
    autonomy: Autonomy
    note: str = ""


def steered_runs(
    ws: Workspace, task_name: str, ours: Mapping[str, Any], compare_dirs: Sequence[Path]
) -> tuple[list[SteeredRun], list[str]]:
    """Steered, comparable runs among `compare_dirs` and the other tags of `ws`'s repository;
    also the reasons others were skipped."""
    found: list[SteeredRun] = []
    skipped: list[str] = []
    candidates: list[tuple[Workspace, str]] = []
    branches = git(
        ws.root, "for-each-ref", "--format=%(refname:short)", "refs/heads/rsilab/", check=False
    )
    for branch in branches.split():
        tag = branch.removeprefix("rsilab/")
        if tag != ws.tag:
            candidates.append((Workspace(ws.root, tag), f"tag {tag}"))
    for d in compare_dirs:
        other = open_workspace(d)
        if other.root == ws.root and other.tag == ws.tag:
            continue
        candidates.append((other, str(other.root)))
    for other, label in candidates:
        info = other.info()
        if str(info.get("task", task_name)) != task_name:
            skipped.append(f"{label}: task {info.get('task')!r}, not {task_name!r}")
            continue
        if not other.ledger_path.is_file():
            skipped.append(f"{label}: no ledger")
            continue
        with Ledger(other.ledger_path) as ledger:
            why = _mismatch(ours, ledger.get_setting("comparable"))
            if why:
                skipped.append(f"{label}: not comparable ({why})")
                continue
            aut = autonomy(ledger, tag_experiments(other.root, other.tag))
            inc = ledger.incumbent()
            note = "" if ledger.get_setting("comparable") is not None else "settings not recorded"
        if aut.unattended:
            skipped.append(f"{label}: unattended (not a human-steered run)")
            continue
        try:
            commit = other.incumbent_commit()
        except WorkspaceError:  # the branch is gone: the ledger still knows the incumbent
            commit = inc.commit if inc is not None else ""
        if not commit:
            skipped.append(f"{label}: no incumbent")
            continue
        found.append(
            SteeredRun(
                Contender(f"steered:{label}", "steered", other.root, commit, {}, label), aut, note
            )
        )
    return found, skipped


# ---- references --------------------------------------------------------------------------


def reference_dir(ws_root: Path, task_name: str) -> Path | None:
    """The task's reference folder: the workspace's own, else the bundled task's."""
    from rsilab.paths import bundled_tasks_dir

    for d in (ws_root / REFERENCE_DIR, bundled_tasks_dir() / task_name / REFERENCE_DIR):
        if d.is_dir():
            return d
    return None


def load_references(
    folder: Path, task: TaskSpec, editable: Sequence[str], names: Sequence[str] | None
) -> dict[str, tuple[dict[str, str], str]]:
    """Reference name -> (files to write over a checkout, source path).

    `NAME.py` replaces the task's one editable `.py` file; a folder `NAME/` holds files at
    their paths in the task. `names` None: all of them.
    """
    found: dict[str, tuple[dict[str, str], str]] = {}
    py_editable = [rel for rel in editable if rel.endswith(".py")]
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            if len(py_editable) != 1:
                raise ConfigError(
                    f"{entry}: a reference file needs exactly one editable .py file in the task, "
                    f"found {py_editable}; use a folder {entry.stem}/ with the files instead"
                )
            found[entry.stem] = ({py_editable[0]: entry.read_text()}, str(entry))
        elif entry.is_dir():
            files = {
                p.relative_to(entry).as_posix(): p.read_text()
                for p in sorted(entry.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts
            }
            bad = [rel for rel in files if not task.is_editable(rel)]
            if bad:
                raise ConfigError(
                    f"{entry}: reference files must be editable files of the task, not {bad}"
                )
            found[entry.name] = (files, str(entry))
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise ConfigError(
                f"unknown reference {', '.join(missing)} (known: {', '.join(sorted(found)) or 'none'})"
            )
        found = {n: found[n] for n in names}
    return found


# ---- running -----------------------------------------------------------------------------


def export_commit(repo: Path, commit: str, dest: Path) -> Path:
    """The tree of `commit` in `repo`, written to `dest` (via `git archive`: no worktree, no
    ref or index of `repo` is touched, so a supervisor working there is not disturbed)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    export_tree(repo, commit, dest)
    return dest


def evaluate(
    contenders: Sequence[Contender],
    bench: Bench,
    seeds: Sequence[int],
    run_root: Path,
    *,
    notify: Notify = silent,
) -> list[Arm]:
    """Run every contender on `bench` under every seed (seed-major order, one run at a time,
    so a change of machine load hits every contender alike); identical code runs once."""
    arms = [Arm(c.name, c.kind, c.commit, c.source) for c in contenders]
    unique: dict[Any, int] = {}
    workdirs: dict[int, Path] = {}
    for i, c in enumerate(contenders):
        if c.key in unique:
            continue
        unique[c.key] = i
        work = export_commit(c.repo, c.commit, run_root / _slug(c.name) / "work")
        for rel, text in c.overlay.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        workdirs[i] = work
    for k, seed in enumerate(seeds):
        for i, arm in workdirs.items():
            name = contenders[i].name
            notify(f"score: {name} seed {seed} ({k + 1}/{len(seeds)})")
            r = bench.run(
                arm, run_root / _slug(name) / f"seed-{k}", seed, label=f"score: {name} seed {seed}"
            )
            target = arms[i]
            target.seeds.append(seed)
            target.compute_s += r.train_seconds + r.eval_seconds
            if r.ok and r.metric is not None:
                target.results.append(float(r.metric))
                shown = f"{r.metric:.4f}"
            else:
                target.results.append(None)
                target.failures.append(r.reason or str(r.status))
                shown = r.reason
            notify(f"score: {name} seed {seed}: {shown}")
    for i, c in enumerate(contenders):  # copies share the results of the code they equal
        j = unique[c.key]
        if j != i:
            src = arms[j]
            arms[i].seeds, arms[i].results = list(src.seeds), list(src.results)
            arms[i].failures = list(src.failures)
    for artifact in run_root.glob("**/artifact"):  # models are large; logs and metrics stay
        shutil.rmtree(artifact, ignore_errors=True)
    return arms


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


# ---- the report --------------------------------------------------------------------------


def build_report(
    arms: Sequence[Arm],
    metric: Metric,
    unattended: Autonomy,
    *,
    alpha: float,
    settings: Mapping[str, Any],
    skipped: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The score report (the content of score.json) from the arms' results. Pure."""
    by_kind: dict[str, list[Arm]] = {}
    for a in arms:
        by_kind.setdefault(a.kind, []).append(a)
    base = by_kind["baseline"][0]
    cand = next(a for a in arms if a.kind in ("incumbent", "commit"))
    refs = [a for a in by_kind.get("reference", []) if a.values]
    steered = [a for a in by_kind.get("steered", []) if a.values]
    best_ref = _best(refs, metric)
    scores: dict[str, dict[str, Any]] = {}
    for ref in refs:
        scores[ref.name] = asdict(fieller(base.by_seed, ref.by_seed, cand.by_seed, metric))
    per_arm = {}
    if best_ref is not None:
        for a in arms:
            if a.kind not in ("baseline",) and a.values:
                per_arm[a.name] = asdict(fieller(base.by_seed, best_ref.by_seed, a.by_seed, metric))
    improvement = compare(cand.by_seed, base.by_seed, metric)
    milestones: dict[str, dict[str, Any]] = {}
    gate = "" if unattended.unattended else f"not unattended ({unattended.reason})"

    significant = (
        improvement.p_value is not None
        and improvement.p_value < alpha
        and (improvement.gain or 0) > 0
    )
    if gate:
        milestones["adequacy"] = {"reached": False, "reason": gate}
    elif not cand.values:
        milestones["adequacy"] = {"reached": False, "reason": "the incumbent had no successful run"}
    else:
        milestones["adequacy"] = {
            "reached": significant,
            "reason": (
                f"gain over the baseline {fmt(improvement.gain)} (95% CI {fmt(improvement.ci_low)}.."
                f"{fmt(improvement.ci_high)}), p={fmt(improvement.p_value, '.2g')}, "
                f"{'significant' if significant else 'not significant'} at alpha {alpha:g}"
            ),
        }
    primary = scores.get(best_ref.name) if best_ref is not None else None
    if gate:
        milestones["parity"] = {"reached": False, "reason": gate}
    elif primary is None or best_ref is None:
        milestones["parity"] = {"reached": False, "reason": "no reference with a successful run"}
    else:
        low = primary["low"]
        reached = bool(primary["bounded"] and low is not None and low >= 1)
        why = (
            primary["note"]
            or f"score {fmt(primary['estimate'], '.3f')}, 95% CI low {fmt(low, '.3f')}"
        )
        milestones["parity"] = {
            "reached": reached,
            "reason": f"against {best_ref.name}: {why} ({'>=' if reached else 'not >='} 1)",
        }
    best_steered = _best(steered, metric)
    if gate:
        milestones["supremacy"] = {"reached": False, "reason": gate}
    elif best_steered is None:
        milestones["supremacy"] = {
            "reached": False,
            "reason": "no human-steered run on the same task and budget to compare "
            "(give one with --compare DIR)",
        }
    else:
        vs = compare(cand.by_seed, best_steered.by_seed, metric)
        beat = vs.p_value is not None and vs.p_value < alpha and (vs.gain or 0) > 0
        milestones["supremacy"] = {
            "reached": beat,
            "against": best_steered.name,
            "reason": (
                f"against {best_steered.name}: gain {fmt(vs.gain)} (95% CI {fmt(vs.ci_low)}.."
                f"{fmt(vs.ci_high)}), p={fmt(vs.p_value, '.2g')}, "
                f"{'significant' if beat else 'not significant'} at alpha {alpha:g}"
            ),
        }
    hit = [m for m in MILESTONES if milestones[m]["reached"]]
    return json_safe(
        {
            "version": 1,
            "created_at": time.time(),
            "metric": {"name": metric.name, "direction": metric.direction},
            "settings": dict(settings),
            "ci_method": "Fieller 95% interval of the ratio of mean gains, paired by seed (every contender ran "
            "the same seeds); Student t with pairs - 1 degrees of freedom",
            "arms": [_arm_json(a) for a in arms],
            "reference": best_ref.name if best_ref is not None else None,
            "scores": scores,
            "score": primary,
            "arm_scores": per_arm,
            "improvement": asdict(improvement),
            "autonomy": asdict(unattended) | {"reason": unattended.reason},
            "milestones": milestones,
            "milestone": hit[-1] if hit else None,  # the highest one reached
            "skipped": list(skipped),
            "notes": list(notes),
        }
    )


def _best(arms: Sequence[Arm], metric: Metric) -> Arm | None:
    best: Arm | None = None
    for a in arms:
        if a.mean is not None and (
            best is None or best.mean is None or metric.better(a.mean, best.mean)
        ):
            best = a
    return best


def _arm_json(a: Arm) -> dict[str, Any]:
    return {
        "name": a.name,
        "kind": a.kind,
        "commit": a.commit,
        "source": a.source,
        "seeds": a.seeds,
        "results": a.results,
        "mean": a.mean,
        "sd": a.sd,
        "n_ok": len(a.values),
        "failures": a.failures,
        "compute_s": a.compute_s,
    }


def fmt(x: float | None, spec: str = "+.4g") -> str:
    """`x` formatted by `spec` for a table or a reason; "-" when it is None, NaN or infinite."""
    return format(x, spec) if x is not None and math.isfinite(x) else "-"


def format_table(report: Mapping[str, Any]) -> str:
    """The report as plain text: one line per contender, then the milestones."""
    metric = report["metric"]["name"]
    rows = [("contender", "kind", "commit", "runs", f"{metric} mean ± sd", "score [95% CI]")]
    for a in report["arms"]:
        s = report["arm_scores"].get(a["name"])
        if a["kind"] == "baseline":
            shown = "0 (baseline)"
        elif a["name"] == report["reference"]:
            shown = "1 (reference)"
        elif s is None or s["estimate"] is None:
            shown = "-"
        elif s["bounded"]:
            shown = f"{s['estimate']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"
        else:
            shown = f"{s['estimate']:.3f} [unbounded]"
        fails = f" ({len(a['failures'])} failed)" if a["failures"] else ""
        rows.append(
            (
                a["name"],
                a["kind"],
                a["commit"][:7],
                f"{a['n_ok']}/{len(a['seeds'])}{fails}",
                f"{fmt(a['mean'], '.4f')} ± {fmt(a['sd'], '.4f')}",
                shown,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"interval: {report['ci_method']}")
    for name in MILESTONES:
        m = report["milestones"][name]
        lines.append(f"{name:<10} {'yes' if m['reached'] else 'no ':<4} {m['reason']}")
    lines.append(f"milestone: {report['milestone'] or 'none'}")
    for s in report["skipped"]:
        lines.append(f"skipped: {s}")
    for n in report["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)


# ---- the command -------------------------------------------------------------------------


def baseline_commit(ws: Workspace, ledger: Ledger) -> str:
    """The commit research started from: the ledger's baseline, else the workspace's first."""
    for e in ledger.experiments():
        if e.kind == "baseline":
            return e.commit
    return str(ws.info().get("base_commit") or ws.incumbent_commit())


def score_workspace(
    ws: Workspace,
    bench: Bench,
    *,
    references: Sequence[str] | None = None,
    seeds: int = 3,
    commit: str | None = None,
    compare_dirs: Sequence[Path] = (),
    reference_folder: Path | None = None,
    notify: Notify = silent,
) -> dict[str, Any]:
    """Evaluate and score the incumbent (or `commit`) of `ws` on `bench` (the research task,
    data and preset); writes score.json, records a "score" event in the ledger, returns the
    report."""
    task, preset = bench.task, bench.preset or "cpu"
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    folder = reference_folder or reference_dir(ws.root, task.name)
    if folder is None or not folder.is_dir():
        raise ConfigError(
            f"task {task.name!r} has no {REFERENCE_DIR}/ folder of human reference solutions"
        )
    with Ledger(ws.ledger_path) as ledger:
        base = baseline_commit(ws, ledger)
        aut = autonomy(ledger, tag_experiments(ws.root, ws.tag))
    if commit is not None:
        resolved = git(
            ws.root, "rev-parse", "--verify", "-q", f"{commit}^{{commit}}", check=False
        ).strip()
        if not resolved:
            raise ConfigError(f"--commit {commit}: no such commit in {ws.root}")
        target = Contender(f"commit:{resolved[:7]}", "commit", ws.root, resolved, {}, commit)
    else:
        target = Contender("incumbent", "incumbent", ws.root, ws.incumbent_commit(), {}, ws.branch)
    editable = ws.editable_files(task, base)
    refs = load_references(folder, task, sorted(editable), references)
    if not refs:
        raise ConfigError(f"{folder}: no reference solutions")
    settings = task.comparable(preset)
    steered, skipped = steered_runs(ws, task.name, settings, compare_dirs)
    contenders = [Contender("baseline", "baseline", ws.root, base, {}, "the ledger's baseline")]
    contenders += [
        Contender(name, "reference", ws.root, base, files, src)
        for name, (files, src) in refs.items()
    ]
    contenders.append(target)
    contenders += [s.contender for s in steered]
    seed_list = [seed_schedule(SCORE_SEED_BASE, 0, k) for k in range(seeds)]
    run_root = paths.stamped_dir(ws.state / "score")
    arms = evaluate(contenders, bench, seed_list, run_root, notify=notify)
    notes = [f"{s.contender.name}: {s.note}" for s in steered if s.note]
    if target.commit == base:
        notes.append(
            "the incumbent is the baseline commit (nothing was kept): its score is 0 by definition"
        )
    report = build_report(
        arms,
        task.metric_obj,
        aut,
        alpha=task.judge.alpha,
        settings=settings | {"seeds": seed_list, "workspace": str(ws.root), "tag": ws.tag},
        skipped=skipped,
        notes=notes,
    )
    atomic_write(ws.root / SCORE_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
    with Ledger(ws.ledger_path) as ledger, ledger.transaction():
        ledger.add_event("score", _summary_line(report), data=_event_data(report), source="score")
        ledger.add_cost(None, "score_compute", sum(a.compute_s for a in arms), "s")
    return report


def _summary_line(report: Mapping[str, Any]) -> str:
    s = report["score"]
    if s is None or s["estimate"] is None:
        shown = "no score"
    elif s["bounded"]:
        shown = f"score {s['estimate']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"
    else:
        shown = f"score {s['estimate']:.3f} [unbounded]"
    return f"{shown} vs {report['reference']}; milestone: {report['milestone'] or 'none'}"


def _event_data(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the ledger keeps of a score: the figures, not every run."""
    return {
        "reference": report["reference"],
        "score": report["score"],
        "scores": report["scores"],
        "milestone": report["milestone"],
        "milestones": {k: v["reached"] for k, v in report["milestones"].items()},
        "means": {a["name"]: a["mean"] for a in report["arms"]},
        "commits": {a["name"]: a["commit"] for a in report["arms"]},
        "settings": report["settings"],
    }
