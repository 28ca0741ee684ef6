"""Claimed and confirmed gains of kept changes (rsilab.record.claims), on the real loop:
the claim is the judge's effect at the keep; the confirmation comes only from runs made
after it (re-checks), and `rsilab status` and the report show both."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from loop_helpers import make_ws, queue_knobs, supervise

from rsilab.cli import main
from rsilab.record.claims import claim_lines, claims
from rsilab.report.html import snapshot, summary_html
from rsilab.results import Metric, RunResult, Status

LOSS = Metric("val_loss", "min")


def test_a_keep_is_claimed_at_once_and_confirmed_by_the_rechecks_after_it(tmp_path: Path) -> None:
    ws_dir = make_ws(tmp_path)
    queue_knobs(ws_dir, "b", "less weight decay", L2=0.01)
    _, ledger = supervise(ws_dir, ("judge.recheck_every", 0))
    (found,) = claims(ledger, LOSS)
    kept = ledger.experiments()[1]
    assert found.experiment_id == kept.id and found.claimed == kept.effect
    assert found.confirmed is None and "not re-measured yet" in claim_lines([found])[0]
    # Re-measured later (a re-check, as the loop records one: kind "recheck").
    for seed, value in ((101, kept.metric + 0.01), (102, kept.metric + 0.03)):  # type: ignore[operator]
        ledger.add_run(kept.id, RunResult(Status.OK, seed, value), kind="recheck")
    (found,) = [c for c in claims(ledger, LOSS) if c.experiment_id == kept.id]
    rechecks = [r.metric for r in ledger.runs(kept.id) if r.kind == "recheck"]
    assert found.confirm_runs == len(rechecks) == 2
    base = [r.metric for r in ledger.runs(ledger.experiments()[0].id) if r.metric is not None]
    mean = sum(rechecks) / len(rechecks)  # type: ignore[arg-type]
    assert abs(found.confirmed - (sum(base) / len(base) - mean)) < 1e-12  # type: ignore[operator]
    out = CliRunner().invoke(main, ["status", str(ws_dir)])
    assert out.exit_code == 0 and f"#{kept.id} less weight decay: claimed +" in out.output
    assert "confirmed +" in out.output
    html = summary_html(snapshot(ledger))
    assert "kept changes" in html and "less weight decay: claimed" in html
