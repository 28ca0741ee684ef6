"""Tests for rsilab.record.export: MLflow (a local SQLite store) and W&B (offline mode), no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_helpers import DIFF, EVIL, synthetic_ledger

from rsilab.cli import main
from rsilab.record.ledger import Ledger
from rsilab.workspace import Workspace, open_workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    (root / ".rsilab").mkdir(parents=True)
    (root / ".rsilab" / "workspace.json").write_text(json.dumps({"tag": "t"}))
    synthetic_ledger(root / ".rsilab" / "ledger.db").close()
    return open_workspace(root)


def test_mlflow_one_run_per_experiment_with_metrics_params_and_diff(ws: Workspace) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out = CliRunner().invoke(main, ["export", str(ws.root), "--mlflow"])
    assert out.exit_code == 0, out.output
    assert (
        "mlflow: 5 runs written (5 new, 0 updated), 0 already there unchanged, in experiment 'rsilab-t'"
        in out.output
    )
    uri = f"sqlite:///{ws.state / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rsilab-t")
    assert exp is not None
    runs = {r.data.tags["rsilab.experiment"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["1", "2", "3", "4", "5"]
    kept = runs["3"]
    assert (
        kept.data.tags["rsilab.status"] == "keep" and kept.data.tags["rsilab.description"] == EVIL
    )
    assert kept.data.metrics["val_bpb"] == pytest.approx(0.9905)
    assert (
        kept.data.metrics["effect"] == pytest.approx(0.0095) and kept.data.metrics["tokens"] == 1500
    )
    assert kept.data.params["proposer"] == "llm" and kept.info.status == "FINISHED"
    history = client.get_metric_history(kept.info.run_id, "val_bpb_run")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.99),
        (1, 0.991),
        (2, 0.9895),
    ]
    assert runs["2"].data.params["knob.LR"] == "0.04"
    assert runs["4"].info.status == "FAILED"
    local = client.download_artifacts(kept.info.run_id, "diff.patch", str(ws.root))
    assert Path(local).read_text() == DIFF
    # Again: nothing new. After a later decision (a veto), only that run is made anew.
    with Ledger(ws.ledger_path) as led:
        from rsilab.record import export

        again = export.to_mlflow(led, ws)
        assert (again.runs, again.skipped) == (0, 5)
        led.add_decision(3, verdict="discard", reason="vetoed", source="human")
        again = export.to_mlflow(led, ws)
        assert (again.runs, again.skipped) == (1, 4)
    live = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags["rsilab.experiment"] == "3"
    ]
    assert [r.data.tags["rsilab.status"] for r in live] == ["discard"]


def test_wandb_offline_one_run_per_experiment(ws: Workspace, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))  # nothing outside the test's folder
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = CliRunner().invoke(main, ["export", str(ws.root), "--wandb"])
    assert out.exit_code == 0, out.output
    assert "wandb: 5 runs in project 'rsilab-t'" in out.output
    runs = sorted((ws.state / "wandb").glob("offline-run-*"))
    assert [r.name.rsplit("-", 1)[-1] for r in runs] == ["0001", "0002", "0003", "0004", "0005"]
    # The run records (protobuf) hold the names, config, series and summary as plain strings.
    record = next(runs[2].glob("*.wandb")).read_bytes()
    for text in ("t-exp-0003", "#3 ", "val_bpb_run", "effect", "diff-exp-0003", "keep"):
        assert text.encode() in record, text
    assert b"knob.LR" in next(runs[1].glob("*.wandb")).read_bytes()
    # The diff waits in W&B's staging folder until `wandb sync` uploads it.
    staged = [p for p in (tmp_path / "wandb_data_dir").rglob("*") if p.is_file()]
    assert any(p.read_bytes() == DIFF.encode() for p in staged)


def test_export_needs_a_target(ws: Workspace) -> None:
    out = CliRunner().invoke(main, ["export", str(ws.root)])
    assert out.exit_code == 2 and "--mlflow and/or --wandb" in out.output
