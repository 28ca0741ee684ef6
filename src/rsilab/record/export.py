"""Export to experiment trackers. Owns: turning ledger experiments into MLflow and W&B runs.

One tracking run per decided experiment: the metric (the mean the decision is based on),
each run's metric as a series (step = run index), the judge's effect, 95% CI and p-value,
compute seconds and tokens as metrics; the knobs, proposer, kind, commit and parent as
params (W&B: config); status, description and reason as tags / notes; the diff as a file
(`diff.patch`: an MLflow artifact, a W&B artifact). Both work offline: MLflow by default
writes a SQLite store and artifact folder under `<workspace>/.rsilab/mlflow/` (MLflow 3
refuses the plain file store unless MLFLOW_ALLOW_FILE_STORE=true; `--uri` takes any
tracking URI), and W&B runs in `mode="offline"` into `<workspace>/.rsilab/wandb/`, to be
pushed later with `wandb sync`.

Params hold every knob value of the experiment's files (the baseline's too), read from its
commit, with the proposal's own values over them where the files cannot be read.

Exporting again is safe: MLflow runs are found by their `rsilab.experiment` tag and
re-made only when the experiment changed since: a new decision (e.g. a veto) or new runs
(re-checks of a kept one), both in the `rsilab.signature` tag; W&B runs have a
fixed id per experiment (`<tag>-exp-NNNN`), so a later sync updates the same run.
`mlflow` and `wandb` are imported inside the functions: both are optional extras.
Not covered: running experiments (only decided ones are exported), system metrics.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rsilab.errors import ConfigError, RsilabError
from rsilab.record.ledger import Experiment, Ledger, Run
from rsilab.workspace import Workspace

PARAM_CHARS = 500  # MLflow's oldest servers cap a param value at 500 characters


@dataclass(frozen=True)
class Exported:
    """What an export did: how many runs it wrote, into what, where."""

    runs: int
    name: str  # the MLflow experiment / W&B project
    where: str  # tracking URI or folder
    skipped: int = 0  # already exported and unchanged
    updated: int = 0  # of `runs`, made anew in place of an older export of the same experiment


@dataclass(frozen=True)
class _Item:
    exp: Experiment
    runs: list[Run]
    costs: dict[str, float]
    decisions: int
    knobs: dict[str, Any]  # every knob value of its files, the proposal's own over them

    @property
    def signature(self) -> str:
        """What an export of it shows: its decisions and its runs (re-checks add runs)."""
        return f"{self.decisions}d/{len(self.runs)}r"

    def metrics(self, metric: str) -> dict[str, float]:
        x, out = self.exp, {}
        for key, value in ((metric, x.metric), ("effect", x.effect), ("ci_low", x.ci_low),
                           ("ci_high", x.ci_high), ("p_value", x.p_value)):  # fmt: skip
            if value is not None and math.isfinite(value):
                out[key] = float(value)
        out["compute_seconds"] = self.costs.get("compute", 0.0)
        out["tokens"] = self.costs.get("tokens_in", 0.0) + self.costs.get("tokens_out", 0.0)
        out["cost_usd"] = self.costs.get("cost_usd", 0.0)
        out["runs"] = float(len(self.runs))
        return out

    def params(self) -> dict[str, str]:
        x = self.exp
        out = {_key(f"knob.{k}"): _param(v) for k, v in sorted(self.knobs.items())}
        out.update(proposer=x.proposer, kind=x.kind, commit=x.commit, parent=x.parent or "")
        return out

    def tags(self) -> dict[str, str]:
        x = self.exp
        return {"rsilab.experiment": str(x.id), "rsilab.status": x.status,
                "rsilab.decisions": str(self.decisions), "rsilab.signature": self.signature,
                "rsilab.description": x.description[:5000],
                "rsilab.reason": x.reason[:5000]}  # fmt: skip

    @property
    def run_name(self) -> str:
        return f"#{self.exp.id} {' '.join(self.exp.description.split())}"[:250]


def _items(ledger: Ledger, ws: Workspace | None = None) -> Iterator[_Item]:
    runs: dict[int, list[Run]] = {}
    for r in ledger.runs():
        runs.setdefault(r.experiment_id, []).append(r)
    counts: dict[int, int] = {}
    for d in ledger.decisions():
        counts[d.experiment_id] = counts.get(d.experiment_id, 0) + 1
    read = _knob_reader(ledger, ws)
    for x in ledger.experiments():
        if x.decided:
            knobs = read(x.commit) | dict(x.knobs)
            yield _Item(x, runs.get(x.id, []), ledger.costs(x.id), counts.get(x.id, 0), knobs)


def _knob_reader(ledger: Ledger, ws: Workspace | None) -> Callable[[str], dict[str, Any]]:
    """commit -> every knob value of its editable files ({} where they cannot be read: a
    ledger without its git repo, a task without knobs)."""
    if ws is None:
        return lambda commit: {}
    try:
        from rsilab.config import parse_override
        from rsilab.proposers.knobs import collect_knobs

        overrides = [parse_override(o) for o in ledger.get_setting("overrides", []) or []]
        task = ws.load_task(overrides)
        preset = str((ledger.get_setting("comparable", {}) or {}).get("preset", "cpu"))
    except (RsilabError, OSError, ValueError, subprocess.SubprocessError):
        return lambda commit: {}

    def read(commit: str) -> dict[str, Any]:
        try:
            found = collect_knobs(ws.editable_files(task, commit), preset)
        except (RsilabError, OSError, ValueError, subprocess.SubprocessError):
            return {}
        return {name: knob.value for name, (_, knob) in found.items()}

    return read


def _metric_name(ledger: Ledger) -> str:
    meta = ledger.get_setting("metric", "val_bpb")
    return _key(str(meta.get("name", "val_bpb")) if isinstance(meta, dict) else str(meta))


def _key(name: str) -> str:
    """A key both trackers accept: letters, digits and _ - . / space."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)[:250] or "_"


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 3] + "..."


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def to_mlflow(ledger: Ledger, ws: Workspace, *, uri: str | None = None,
              experiment: str | None = None) -> Exported:  # fmt: skip
    """Export decided experiments to MLflow (default: a local SQLite store, offline)."""
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("export --mlflow needs MLflow: pip install 'rsilab[mlflow]'") from None
    folder = ws.state / "mlflow"
    if uri is None:
        folder.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    name = experiment or f"rsilab-{ws.tag}"
    metric = _metric_name(ledger)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is not None:
            exp_id = found.experiment_id
        else:
            where = (folder / "artifacts").as_uri() if uri.startswith("sqlite:///") else None
            exp_id = client.create_experiment(name, artifact_location=where,
                                              tags={"rsilab.workspace": str(ws.root)})  # fmt: skip
        done: dict[str, tuple[str, str]] = {}  # experiment id -> (run id, signature)
        for r in client.search_runs([exp_id], max_results=50_000):
            tags = r.data.tags
            if "rsilab.experiment" in tags:
                done[tags["rsilab.experiment"]] = (r.info.run_id, tags.get("rsilab.signature", ""))
        written = skipped = updated = 0
        for item in _items(ledger, ws):
            old = done.get(str(item.exp.id))
            if old is not None and old[1] == item.signature:
                skipped += 1
                continue
            if old is not None:  # a later decision (a veto) or new runs (a re-check): made anew
                client.delete_run(old[0])
                updated += 1
            run = client.create_run(exp_id, start_time=_ms(item.exp.started_at), run_name=item.run_name,
                                    tags=item.tags())  # fmt: skip
            rid = run.info.run_id
            stamp = _ms(item.exp.decided_at) or 0
            metrics = [Metric(k, v, stamp, 0) for k, v in item.metrics(metric).items()]
            metrics += [
                Metric(f"{metric}_run", float(r.metric), _ms(r.created_at) or stamp, k)
                for k, r in enumerate(item.runs)
                if r.metric is not None and math.isfinite(r.metric)
            ]
            params = [Param(k, v) for k, v in item.params().items()]
            client.log_batch(
                rid,
                metrics=metrics,
                params=params,
                tags=[
                    RunTag("mlflow.note.content", f"{item.exp.description}\n\n{item.exp.reason}")
                ],
            )
            if item.exp.diff:
                client.log_text(rid, item.exp.diff, "diff.patch")
            failed = item.exp.status in ("crash", "invalid", "timeout")
            status = (
                "KILLED" if item.exp.status == "interrupted" else "FAILED" if failed else "FINISHED"
            )
            client.set_terminated(rid, status, end_time=_ms(item.exp.decided_at))
            written += 1
    except MlflowException as err:
        raise RsilabError(f"mlflow ({uri}): {err.message}") from None
    return Exported(written, name, uri, skipped, updated)


def to_wandb(ledger: Ledger, ws: Workspace, *, project: str | None = None,
             offline: bool = True) -> Exported:  # fmt: skip
    """Export decided experiments to Weights & Biases (offline files unless `offline=False`)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("export --wandb needs wandb: pip install 'rsilab[wandb]'") from None
    name = project or f"rsilab-{ws.tag}"
    metric = _metric_name(ledger)
    ws.state.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(silent=True, disable_git=True, save_code=False, x_disable_stats=True)
    written = 0
    for item in _items(ledger, ws):
        x = item.exp
        config = {f"knob.{k}": v for k, v in sorted(item.knobs.items())}
        config.update(proposer=x.proposer, kind=x.kind, commit=x.commit, parent=x.parent or "")
        run = wandb.init(project=name, name=item.run_name, id=f"{ws.tag}-exp-{x.id:04d}", dir=str(ws.state),
                         mode="offline" if offline else "online", config=config, tags=[x.status, x.proposer],
                         notes=f"{x.description}\n\n{x.reason}", reinit="create_new", settings=settings,
                         resume="allow")  # fmt: skip
        try:
            for k, r in enumerate(item.runs):
                row: dict[str, Any] = {"seed": r.seed, "run_kind": r.kind, "run_ok": int(r.ok)}
                if r.metric is not None and math.isfinite(r.metric):
                    row[f"{metric}_run"] = r.metric
                run.log(row, step=k)
            run.summary.update(item.metrics(metric) | {"status": x.status, "experiment": x.id})
            if x.diff:
                art = wandb.Artifact(f"diff-exp-{x.id:04d}", type="diff",
                                     description=x.description[:500])  # fmt: skip
                with art.new_file("diff.patch", encoding="utf-8") as f:
                    f.write(x.diff)
                run.log_artifact(art)
        finally:
            run.finish(exit_code=0 if x.status in ("keep", "discard") else 1)
        written += 1
    where = str(ws.state / "wandb") if offline else "online"
    return Exported(written, name, where)
