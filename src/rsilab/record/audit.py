"""The audit. Owns: re-checking that the ledger, the run folders and git tell one story.

The supervisor decides and records; this module only reads, and says where the record
and the repository disagree. Two entry points:

- `check_acceptance(ws, task, parent=..., commit=..., runs=...)`: the checks a kept change
  gets once more before the research branch moves to it (diff confined to the editable
  files, frozen files intact, every run ok and its metric written by the evaluator).
- `audit(ws, ledger)`: the same checks over a whole workspace plus the bookkeeping between
  experiments: every experiment's ref, parents, recorded diffs, decision metrics, and the
  kept experiments forming the first-parent history of the research branch.
  `rsilab audit DIR` prints its findings, one line each.

`AcceptanceGate` wraps `check_acceptance` as the supervisor's keep gate (a keep with a
problem becomes invalid).

Evaluator provenance: the runner removes any `metrics.json` a run left in its folder, puts
the evaluator's own file there (written in a private folder no run can reach) and records
its sha256, so a run's figures are trusted only while that file is still in its run
folder, byte for byte, and agrees with the ledger.

Not covered: whether a kept change is a real improvement (the judge's job; the audit only
checks that the recorded decision metric is the mean of the recorded runs), and repairing
anything (`rsilab run` recovers a workspace after a crash; the audit reports).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab.config import CONFIG_NAME, TaskSpec, load_task, parse_override
from rsilab.errors import RsilabError
from rsilab.fsio import read_regular, sha256_bytes, tail_regular
from rsilab.loop.judge import Judgement
from rsilab.record.ledger import Experiment, Ledger, Run
from rsilab.results import RunResult, Verdict
from rsilab.run.process import TAIL_BYTES
from rsilab.run.runner import METRICS_DIGEST, RunPaths, metric_from_log, parse_summary
from rsilab.workspace import STATE_DIR, Workspace, export_tree, git, git_bytes

REL_TOL = 1e-9  # a decision metric is a mean recomputed in floating point


@dataclass
class AuditReport:
    """What `audit` looked at and every inconsistency it found (one line each)."""

    experiments: int = 0
    runs: int = 0
    kept: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Repo:
    """Cached reads of one git repository (the audit asks the same things many times)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trees: dict[str, dict[str, str]] = {}
        self._blobs: dict[str, str] = {}

    def parents(self, commits: Sequence[str]) -> dict[str, list[str]]:
        """commit -> its parents, for the commits that exist."""
        out: dict[str, list[str]] = {}
        for sha in dict.fromkeys(commits):
            line = git(
                self.root, "rev-list", "--no-walk", "--parents", sha, "--", check=False
            ).strip()
            if line:
                head, *rest = line.split()
                out[sha] = rest
                out[head] = rest
        return out

    def changed(self, base: str, commit: str) -> list[str]:
        """Paths that differ between two commits (renames as a delete plus an add)."""
        raw = git(self.root, "diff", "--name-only", "--no-renames", "-z", base, commit)
        return [p for p in raw.split("\0") if p]

    def tree(self, commit: str) -> dict[str, str]:
        """Every file of a commit: path -> blob id."""
        if commit not in self._trees:
            raw = git(self.root, "ls-tree", "-r", "-z", commit)
            files = {}
            for entry in filter(None, raw.split("\0")):
                meta, _, path = entry.partition("\t")
                files[path] = meta.split()[2]
            self._trees[commit] = files
        return self._trees[commit]

    def sha256(self, blob: str) -> str:
        if blob not in self._blobs:
            self._blobs[blob] = sha256_bytes(git_bytes(self.root, "cat-file", "blob", blob))
        return self._blobs[blob]

    def archive(self, commit: str, dest: Path) -> None:
        """Write the files of `commit` into `dest`."""
        export_tree(self.root, commit, dest)


# -- the checks of one change and one run --------------------------------------------------


def _change_problems(
    repo: _Repo, task: TaskSpec, frozen: dict[str, str], parent: str, commit: str
) -> list[str]:
    """A change must be one commit on its parent, touching only editable files, with every
    frozen file as it was when the workspace was made."""
    problems = []
    parents = repo.parents([commit]).get(commit)
    if parents is None:
        return [f"commit {commit[:12]} is not in the repository"]
    if parents != [parent]:
        shown = ", ".join(p[:12] for p in parents) or "none"
        problems.append(f"commit {commit[:12]} has parent {shown}, not the recorded {parent[:12]}")
    problems += [
        f"changes {rel}, which is not editable (editable: {', '.join(task.editable)})"
        for rel in repo.changed(parent, commit)
        if not task.is_editable(rel)
    ]
    return problems + _frozen_problems(repo, frozen, commit)


def _frozen_problems(repo: _Repo, frozen: dict[str, str], commit: str) -> list[str]:
    tree = repo.tree(commit)
    problems = []
    for rel, digest in sorted(frozen.items()):
        blob = tree.get(rel)
        if blob is None:
            problems.append(f"frozen file {rel} is missing at {commit[:12]}")
        elif repo.sha256(blob) != digest:
            problems.append(
                f"frozen file {rel} at {commit[:12]} does not match its recorded sha256"
            )
    return problems


def _run_dir(ws: Workspace | None, log_path: str) -> Path:
    """A run's folder, taken under this workspace's state folder (the workspace may have been
    moved or copied since the ledger recorded the absolute path)."""
    path = Path(log_path).parent
    if ws is not None and STATE_DIR in path.parts:
        i = len(path.parts) - 1 - path.parts[::-1].index(STATE_DIR)
        return ws.state.joinpath(*path.parts[i + 1 :])
    return path


def run_problems(task: TaskSpec, run: RunResult, run_dir: Path) -> list[str]:
    """Evaluator provenance of one ok run: its metric is the one its evaluator wrote."""
    name = task.metric.name
    if not task.sealed:  # autoresearch's mode: the metric is train.py's own summary line
        if run.evaluation.get("sealed") is not False:
            return ["an in-process result is not marked unsealed"]
        paths = RunPaths(run_dir)
        log = tail_regular(paths.train_log, TAIL_BYTES)  # no link a run left is followed
        if log is None:
            return [f"{paths.train_log} is missing or not a regular file"]
        if task.metric.pattern:  # the training log's last match (the runner's own reading)
            value: float | None = metric_from_log(paths.train_log, task.metric.pattern)[0]
        else:
            value = parse_summary(log.decode(errors="replace")).get(name)
        if value != run.metric:
            return [f"{paths.train_log} says {name} {value}, the ledger {run.metric}"]
        return []
    if run.evaluation.get("sealed") is not True:
        return ["ok but not marked sealed by the evaluator"]
    metrics = RunPaths(run_dir).metrics
    raw = read_regular(metrics)  # no link a run left is followed
    if raw is None:
        return [
            f"{metrics} is missing or not a regular file: nothing shows the evaluator wrote this metric"
        ]
    recorded = run.evaluation.get(METRICS_DIGEST)
    if recorded is None:
        return [f"no sha256 of {metrics.name} was recorded, so its provenance cannot be checked"]
    if sha256_bytes(raw) != recorded:
        return [f"{metrics} changed after the evaluator wrote it (sha256 differs from the ledger)"]
    try:
        figures: Any = json.loads(raw)
    except ValueError:
        return [f"{metrics} is not JSON"]
    if not isinstance(figures, dict):
        return [f"{metrics} is not a JSON object"]
    problems = []
    if figures.get(name) != run.metric:
        problems.append(f"{metrics} says {name} {figures.get(name)}, the ledger {run.metric}")
    problems += [
        f"{metrics} says {key} {value!r}, the ledger {run.evaluation.get(key)!r}"
        for key, value in figures.items()
        if key != name and run.evaluation.get(key) != value
    ]
    return problems


def check_acceptance(
    ws: Workspace, task: TaskSpec, *, parent: str, commit: str, runs: Sequence[RunResult]
) -> list[str]:
    """Problems that forbid keeping `commit` (one line each); empty when it may be kept.

    For the supervisor, after the judge says keep and before it records the keep and
    moves the branch: the change is one commit on `parent` touching only editable files,
    frozen files match their recorded hashes, and every run is ok with a metric its
    evaluator wrote (see `run_problems`).
    """
    repo = _Repo(ws.root)
    problems = _change_problems(repo, task, ws.frozen_hashes(), parent, commit)
    for r in runs:
        if not r.ok:
            problems.append(f"run seed {r.seed} is {r.status}, not ok")
            continue
        problems += [
            f"run seed {r.seed}: {p}" for p in run_problems(task, r, _run_dir(ws, r.log_path))
        ]
    return problems


class AcceptanceGate:
    """`check_acceptance` in the shape of the supervisor's keep gate (orchestrator.KeepGate).

    A keep with any problem becomes `invalid`, the problems its reason; a clean one goes on
    to `then` (another gate, e.g. the fidelity ladder) when there is one. Reads the
    experiment's commit and trial runs from the ledger, where they are recorded by then.
    """

    def __init__(self, then: Any = None) -> None:
        self.then = then

    def gate(
        self,
        j: Judgement,
        *,
        ws: Workspace,
        task: TaskSpec,
        ledger: Ledger,
        experiment_id: int,
        incumbent_commit: str,
        **rest: Any,
    ) -> Judgement:
        if j.verdict is not Verdict.KEEP:
            return j
        exp = ledger.experiment(experiment_id)
        runs = [r.result for r in ledger.runs(experiment_id) if r.kind == "trial"]
        problems = check_acceptance(
            ws, task, parent=exp.parent or incumbent_commit, commit=exp.commit, runs=runs
        )
        if problems:
            return dataclasses.replace(
                j, verdict=Verdict.INVALID, reason=f"invalid at acceptance: {'; '.join(problems)}"
            )
        if self.then is None:
            return j
        return self.then.gate(
            j,
            ws=ws,
            task=task,
            ledger=ledger,
            experiment_id=experiment_id,
            incumbent_commit=incumbent_commit,
            **rest,
        )


# -- the whole workspace -------------------------------------------------------------------


class _Tasks:
    """The task as it is at a commit (with the workspace's `--set` overrides), cached by the
    content of its rsilab.toml: nearly every commit of a workspace shares one."""

    def __init__(self, repo: _Repo, overrides: list[tuple[str, Any]]) -> None:
        self.repo, self.overrides = repo, overrides
        self._cache: dict[str, TaskSpec | str] = {}

    def at(self, commit: str) -> TaskSpec | str:
        """The task, or a one-line reason it cannot be loaded."""
        blob = self.repo.tree(commit).get(CONFIG_NAME, "")
        if blob not in self._cache:
            with tempfile.TemporaryDirectory(prefix="rsilab-audit-") as tmp:
                self.repo.archive(commit, Path(tmp))
                try:
                    self._cache[blob] = load_task(Path(tmp), self.overrides)
                except RsilabError as e:
                    self._cache[blob] = f"the task at {commit[:12]} does not load: {e}"
        return self._cache[blob]


def audit(ws: Workspace, ledger: Ledger, *, live: bool = False) -> AuditReport:
    """Re-verify a whole workspace; see the module docstring for what is checked.

    With `live`, a supervisor is taken to be running: its undecided experiment, its
    worktree and a branch one keep behind the ledger are expected, not inconsistent.
    """
    repo = _Repo(ws.root)
    tasks = _Tasks(repo, [parse_override(s) for s in ledger.get_setting("overrides", [])])
    frozen = ws.frozen_hashes()
    exps = ledger.experiments()
    runs = ledger.runs()
    report = AuditReport(experiments=len(exps), runs=len(runs))
    say = report.problems.append
    refs = _refs(ws)
    latest = {d.experiment_id: d for d in ledger.decisions()}  # in id order: the last wins
    by_exp: dict[int, list[Run]] = {}
    for r in runs:
        by_exp.setdefault(r.experiment_id, []).append(r)
    folders: dict[Path, int] = {}

    for e in exps:
        where = f"experiment {e.id}"
        ref = f"refs/rsilab/{ws.tag}/exp-{e.id:04d}"
        if ref not in refs:
            say(f"{where}: {ref} is missing (the ledger records commit {e.commit[:12]})")
        elif refs[ref] != e.commit:
            say(f"{where}: {ref} is {refs[ref][:12]}, the ledger records {e.commit[:12]}")
        if not e.decided and not live:
            say(
                f"{where}: no decision (the supervisor stopped mid-experiment; `rsilab run` recovers it)"
            )
        mine = by_exp.get(e.id, [])
        for r in mine:
            folder = _run_dir(ws, r.log_path)
            if folder in folders:
                say(f"{where}: runs {folders[folder]} and {r.id} share the folder {folder}")
            folders[folder] = r.id
        task = tasks.at(e.parent or e.commit) if _exists(repo, e.parent or e.commit) else None
        if isinstance(task, str):
            say(f"{where}: {task}")
            continue
        say_all = [f"{where}: {p}" for p in _experiment_problems(repo, task, frozen, e, mine)]
        report.problems += say_all
        if task is not None:
            for r in mine:
                if r.ok:
                    report.problems += [
                        f"{where} run {r.id}: {p}"
                        for p in run_problems(task, r.result, _run_dir(ws, r.log_path))
                    ]
        if e.status == Verdict.KEEP:
            report.kept += 1
            report.problems += [f"{where} (kept): {p}" for p in _kept_problems(e, mine)]

    known = {f"refs/rsilab/{ws.tag}/exp-{e.id:04d}" for e in exps}
    for ref in sorted(set(refs) - known):
        say(f"{ref} ({refs[ref][:12]}) has no experiment in the ledger: an experiment was lost")
    base = ws.info().get("base_commit")
    if exps and exps[0].kind == "baseline" and base and exps[0].commit != base:
        say(
            f"experiment {exps[0].id}: the baseline commit {exps[0].commit[:12]} is not the workspace's "
            f"base commit {str(base)[:12]}"
        )
    report.problems += _lineage_problems(ws, ledger, exps, latest, live=live)
    if not live:
        listed = git(ws.root, "worktree", "list", "--porcelain").count("worktree ")
        if listed > 1:
            say(f"{listed - 1} experiment worktree(s) left behind (`rsilab run` removes them)")
    return report


def _refs(ws: Workspace) -> dict[str, str]:
    raw = git(
        ws.root, "for-each-ref", "--format=%(refname) %(objectname)", f"refs/rsilab/{ws.tag}/"
    )
    return dict(line.split(" ", 1) for line in raw.splitlines() if line)


def _exists(repo: _Repo, commit: str) -> bool:
    return bool(
        git(repo.root, "rev-parse", "--verify", "-q", f"{commit}^{{commit}}", check=False).strip()
    )


def _experiment_problems(
    repo: _Repo, task: TaskSpec | None, frozen: dict[str, str], e: Experiment, runs: list[Run]
) -> list[str]:
    """The commit of one experiment against its parent and its recorded diff."""
    if not _exists(repo, e.commit):
        return [f"commit {e.commit[:12]} is not in the repository"]
    if e.kind == "baseline":
        return _frozen_problems(repo, frozen, e.commit)
    if e.parent is None or not _exists(repo, e.parent):
        return [f"parent {e.parent} is not in the repository"]
    if e.commit == e.parent:  # a proposal that changed nothing: rejected before any run
        if e.status != Verdict.INVALID or runs:
            return [f"records no change (commit = parent) but is {e.status} with {len(runs)} runs"]
        return []
    problems = []
    if git(repo.root, "diff", e.parent, e.commit) != e.diff:
        problems.append(f"the recorded diff is not `git diff {e.parent[:12]} {e.commit[:12]}`")
    # A change that was run or kept must have passed the workspace's check; one rejected as
    # invalid before running may touch anything (that is why it was rejected).
    if task is not None and (runs or e.status == Verdict.KEEP):
        problems += _change_problems(repo, task, frozen, e.parent, e.commit)
    elif task is not None:
        parents = repo.parents([e.commit]).get(e.commit)
        if parents != [e.parent]:
            problems.append(
                f"commit {e.commit[:12]} is not a child of the recorded parent {e.parent[:12]}"
            )
    return problems


def _kept_problems(e: Experiment, runs: list[Run]) -> list[str]:
    """A keep stands on ok trial runs whose mean is the recorded metric (re-measurements
    of an incumbent are `recheck` runs, recorded after its decision)."""
    trials = [r for r in runs if r.kind == "trial"]
    ok = [r for r in trials if r.ok]
    problems = []
    if e.kind == "baseline":  # the noise floor: kept when at least one of its runs is ok
        if not ok:
            problems.append("no ok run")
    else:
        problems += [f"run {r.id} is {r.status}, not ok" for r in trials if not r.ok]
        if not trials:
            problems.append("kept without a single run")
    if ok:
        mean = sum(float(r.metric or 0.0) for r in ok) / len(ok)
        if e.metric is None or not math.isclose(e.metric, mean, rel_tol=REL_TOL, abs_tol=1e-12):
            problems.append(
                f"decision metric {e.metric} is not the mean {mean} of its {len(ok)} ok runs"
            )
    return problems


def _lineage_problems(
    ws: Workspace, ledger: Ledger, exps: list[Experiment], latest: dict[int, Any], *, live: bool
) -> list[str]:
    """The kept experiments, in the order they were kept, are the research branch's
    first-parent history: each one's parent is the previous one, the last is the tip."""
    kept = sorted((e for e in exps if e.status == Verdict.KEEP), key=lambda e: latest[e.id].id)
    tip = git(
        ws.root, "rev-parse", "--verify", "-q", f"refs/heads/{ws.branch}", check=False
    ).strip()
    if not kept:  # no baseline yet: the branch must still be where the workspace began
        base = str(ws.info().get("base_commit", ""))
        if tip != base:
            return [
                f"{ws.branch} is at {tip[:12] or 'nothing'}, but the ledger has kept nothing since "
                f"the base commit {base[:12]}"
            ]
        return []
    problems = []
    if kept[0].kind != "baseline":
        problems.append(f"experiment {kept[0].id} was kept before any baseline")
    for prev, e in zip(kept, kept[1:], strict=False):
        if e.parent != prev.commit:
            problems.append(
                f"experiment {e.id} was kept on {str(e.parent)[:12]}, not on the incumbent "
                f"before it (experiment {prev.id}, {prev.commit[:12]})"
            )
    inc = ledger.incumbent()
    if not tip:
        return [*problems, f"the research branch {ws.branch} is missing"]
    assert inc is not None  # there is a kept experiment
    if tip != inc.commit and not (live and tip == inc.parent):
        problems.append(
            f"{ws.branch} is at {tip[:12]}, the ledger's incumbent (experiment {inc.id}) is "
            f"{inc.commit[:12]}"
        )
    line = git(ws.root, "rev-list", "--first-parent", tip).split()
    position = {sha: i for i, sha in enumerate(reversed(line))}
    last = -1
    for e in kept:
        if e.commit not in position:
            if not (live and e is kept[-1]):
                problems.append(
                    f"kept experiment {e.id} ({e.commit[:12]}) is not on the first-parent "
                    f"history of {ws.branch}"
                )
            continue
        if position[e.commit] < last:
            problems.append(f"kept experiment {e.id} is out of order on {ws.branch}")
        last = position[e.commit]
    return problems
