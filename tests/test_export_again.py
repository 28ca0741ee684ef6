"""Exporting a real workspace to a real MLflow store again after it changed (issue 24):
re-checks added since are exported, the message counts what was already there, and the
baseline carries its knob values as params."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from report_helpers import real_workspace

from rsilab.cli import main
from rsilab.record.ledger import Ledger
from rsilab.results import RunResult, Status
from rsilab.workspace import open_workspace


def test_reexport_takes_new_rechecks_and_says_what_was_there(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    ws = open_workspace(real_workspace(tmp_path))
    with Ledger(ws.ledger_path) as led:
        led.set_setting("metric", "val_loss")  # as `rsilab run` records it
    out = CliRunner().invoke(main, ["export", str(ws.root), "--mlflow"])
    assert out.exit_code == 0, out.output
    assert "5 runs written (5 new, 0 updated), 0 already there unchanged" in out.output
    with Ledger(ws.ledger_path) as led:
        inc = led.incumbent()
        assert inc is not None
        runs_before = len(led.runs(inc.id))
        led.add_run(inc.id, RunResult(Status.OK, 12345, 0.2468), kind="recheck")  # a re-check

    again = CliRunner().invoke(main, ["export", str(ws.root), "--mlflow"])
    assert again.exit_code == 0, again.output
    assert "1 runs written (0 new, 1 updated), 4 already there unchanged" in again.output

    client = MlflowClient(tracking_uri=f"sqlite:///{ws.state / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rsilab-t")
    assert exp is not None
    runs = {r.data.tags["rsilab.experiment"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs, key=int) == ["1", "2", "3", "4", "5"]  # one per experiment, no more
    kept = runs[str(inc.id)]
    history = client.get_metric_history(kept.info.run_id, "val_loss_run")
    assert len(history) == runs_before + 1 and 0.2468 in [m.value for m in history]
    # The baseline's knobs, read from its commit (its proposal changed none).
    base = runs["1"].data.params
    assert {"knob.L2", "knob.LR", "knob.BATCH_SIZE"} <= set(base), base
    assert base["knob.L2"] == "0.1"
    assert runs["2"].data.params["knob.L2"] == "0.06"  # the queued change's value
