"""`rsilab score` on the toy task: the normalized score, its interval and the milestones.

The contenders are really trained and evaluated (toy runs take a fraction of a second);
the ledgers that decide "unattended" and "steered" are built directly for each case.
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rsilab.cli import main
from rsilab.config import resolve_task_dir
from rsilab.record.ledger import Ledger
from rsilab.results import Metric
from rsilab.studies.score import (
    SCORE_FILE,
    Arm,
    Autonomy,
    autonomy,
    build_report,
    compare,
    fieller,
    format_table,
    normalized_score,
)
from rsilab.workspace import Workspace, init_workspace

MIN = Metric("val_loss", "min")
# The toy reference's validation MSE (closed form: no seed dependence)
RIDGE_MSE = 0.30801427639034956
# The toy evaluator's seeded noise, smaller than the default so the cases are clear-cut.
NOISE = "0.01"
UNATTENDED = Autonomy(True, 0, 0, 0)

# Fits the validation split: a fixture that beats any honest solution, for the parity and
# supremacy cases (the toy task does not hide toydata.val_split from train.py).
FITS_VAL = """\
import numpy as np

import toydata
from rsilab import harness

x, y = toydata.val_split()
w = np.linalg.lstsq(x, y, rcond=None)[0]
np.save(harness.artifact_dir() / "weights.npy", w)
harness.print_summary({"num_steps": 0})
"""


def commit_train(ws: Workspace, text: str, message: str) -> str:
    """Commit a new train.py on the research branch (as a kept experiment would)."""
    parent = ws.incumbent_commit()
    tree = ws.create_worktree("edit", parent)
    (tree / "train.py").write_text(text)
    sha = ws.commit(tree, message)
    assert sha is not None
    ws.remove_worktree(tree)
    ws.advance(sha, parent)
    return sha


def record(ledger: Ledger, base: str, commit: str, proposer: str, description: str) -> None:
    """A ledger with a baseline and one kept experiment."""
    b = ledger.add_experiment(
        parent=None,
        commit=base,
        proposer="baseline",
        description="baseline",
        diff="",
        kind="baseline",
    )
    ledger.add_decision(b, verdict="keep", reason="baseline", source="supervisor")
    e = ledger.add_experiment(
        parent=base, commit=commit, proposer=proposer, description=description, diff=""
    )
    ledger.add_decision(e, verdict="keep", reason="better")


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An unattended run whose incumbent fits the validation split, scored by the CLI against
    the toy reference and a human-steered run whose incumbent is a plain tuning win."""
    root = tmp_path_factory.mktemp("score")
    toy = resolve_task_dir("toy")
    ours = init_workspace(root / "ours", toy, "ours")
    base = ours.incumbent_commit()
    strong = commit_train(ours, FITS_VAL, "fit the validation split")
    with Ledger(ours.ledger_path) as ledger:
        record(ledger, base, strong, "tuner", "fit the validation split")
    steered = init_workspace(root / "steered", toy, "steered")
    sbase = steered.incumbent_commit()
    tuned = commit_train(
        steered, (toy / "train.py").read_text().replace("L2 = 0.1 ", "L2 = 0.03"), "less decay"
    )
    with Ledger(steered.ledger_path) as ledger:
        record(ledger, sbase, tuned, "queue", "less weight decay (queued by a person)")
        ledger.add_event(
            "control", "note: try less weight decay", data={"action": "note"}, source="cli"
        )
        task = steered.load_task([("env.TOY_NOISE", NOISE)])
        ledger.set_setting("comparable", task.comparable("cpu") | {"seed": 0})
    result = CliRunner().invoke(
        main,
        [
            "score",
            str(ours.root),
            "--seeds",
            "3",
            "--preset",
            "cpu",
            "--compare",
            str(steered.root),
            "--set",
            f'env.TOY_NOISE="{NOISE}"',
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((ours.root / SCORE_FILE).read_text())
    arms = {
        a["name"]: Arm(a["name"], a["kind"], a["commit"], a["source"], a["seeds"], a["results"])
        for a in report["arms"]
    }
    return {
        "report": report,
        "output": result.output,
        "arms": arms,
        "ours": ours,
        "base": base,
        "strong": strong,
        "tuned": tuned,
    }


def test_score_table_json_and_ledger(scored: dict[str, Any]) -> None:
    report, arms = scored["report"], scored["arms"]
    assert [(a["name"], a["kind"]) for a in report["arms"]] == [
        ("baseline", "baseline"),
        ("ridge", "reference"),
        ("incumbent", "incumbent"),
        (f"steered:{scored['ours'].root.parent / 'steered'}", "steered"),
    ]
    assert (
        report["arms"][0]["commit"] == scored["base"]
        and report["arms"][2]["commit"] == scored["strong"]
    )
    assert all(a["n_ok"] == 3 and a["seeds"] == report["arms"][0]["seeds"] for a in report["arms"])
    # The reference is the human closed form: its MSE does not depend on the seed.
    assert abs(statistics.fmean(arms["ridge"].values) - RIDGE_MSE) < 0.03
    # The normalized score is (b - x) / (b - r) of the measured means, inside its interval.
    b, r, x = (statistics.fmean(arms[n].values) for n in ("baseline", "ridge", "incumbent"))
    s = report["score"]
    assert report["reference"] == "ridge" and s["estimate"] == pytest.approx((b - x) / (b - r))
    assert s["bounded"] and s["low"] < s["estimate"] < s["high"]
    assert "Fieller" in report["ci_method"]
    assert "incumbent" in scored["output"] and "milestone: supremacy" in scored["output"]
    with Ledger(scored["ours"].ledger_path) as ledger:
        (event,) = [e for e in ledger.events() if e.kind == "score"]
        assert event.source == "score" and event.data["milestone"] == "supremacy"
        assert event.data["score"]["estimate"] == pytest.approx(s["estimate"])
        assert ledger.costs()["score_compute"] > 0


def test_supremacy_over_a_steered_run(scored: dict[str, Any]) -> None:
    report = scored["report"]
    assert report["autonomy"]["unattended"] is True
    assert {k: v["reached"] for k, v in report["milestones"].items()} == {
        "adequacy": True,
        "parity": True,
        "supremacy": True,
    }
    assert report["milestones"]["supremacy"]["against"].startswith("steered:")
    assert report["milestone"] == "supremacy"
    assert report["score"]["low"] >= 1


def test_adequacy_without_parity(scored: dict[str, Any]) -> None:
    """A plain tuning win (less weight decay), unattended: better than the baseline, short of the reference."""
    arms = scored["arms"]
    tuned = Arm(
        "incumbent",
        "incumbent",
        scored["tuned"],
        "",
        arms["baseline"].seeds,
        next(a.results for n, a in arms.items() if n.startswith("steered:")),
    )
    report = build_report(
        [arms["baseline"], arms["ridge"], tuned], MIN, UNATTENDED, alpha=0.05, settings={}
    )
    assert {k: v["reached"] for k, v in report["milestones"].items()} == {
        "adequacy": True,
        "parity": False,
        "supremacy": False,
    }
    assert report["milestone"] == "adequacy"
    assert 0 < report["score"]["estimate"] < 1 and report["score"]["low"] < 1
    assert "no human-steered run" in report["milestones"]["supremacy"]["reason"]
    assert "adequacy" in format_table(report)


def test_no_milestone_for_a_steered_run_or_without_a_significant_gain(
    tmp_path: Path, scored: dict[str, Any]
) -> None:
    arms = scored["arms"]
    with Ledger(tmp_path / "ledger.db") as ledger:
        record(ledger, "a" * 40, "b" * 40, "tuner", "a tuner change")
        assert autonomy(ledger).unattended
        ledger.add_event("control", "pause", data={"action": "pause"}, source="dashboard@127.0.0.1")
        steered = autonomy(ledger)
    assert not steered.unattended and steered.control_events == 1
    report = build_report(
        [arms["baseline"], arms["ridge"], arms["incumbent"]], MIN, steered, alpha=0.05, settings={}
    )
    assert report["milestone"] is None
    assert all(
        "steered by a person: 1 control events" in m["reason"]
        for m in report["milestones"].values()
    )
    # Unattended, but the "incumbent" is the baseline's code: no significant gain.
    same = Arm(
        "incumbent",
        "incumbent",
        scored["base"],
        "",
        arms["baseline"].seeds,
        list(arms["baseline"].results),
    )
    report = build_report(
        [arms["baseline"], arms["ridge"], same], MIN, UNATTENDED, alpha=0.05, settings={}
    )
    assert (
        report["milestone"] is None
        and "not significant" in report["milestones"]["adequacy"]["reason"]
    )
    assert report["score"]["estimate"] == 0


def test_autonomy_counts_queue_and_human_decisions(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.db") as ledger:
        record(ledger, "a" * 40, "b" * 40, "queue", "a person's idea")
        aut = autonomy(ledger)
        assert not aut.unattended and aut.queue_experiments == 1
        assert autonomy(
            ledger, experiment_ids={1}
        ).unattended  # another tag's experiment does not count
        ledger.add_decision(1, verdict="discard", reason="vetoed", source="human")
        assert autonomy(ledger, experiment_ids={1}).human_decisions == 1


def seeded(*values: float) -> dict[int, float]:
    return dict(enumerate(values))


def test_fieller_interval() -> None:
    base, ref, cand = (
        seeded(1.0, 1.1, 0.9, 1.05),
        seeded(0.5, 0.58, 0.43, 0.5),
        seeded(0.74, 0.86, 0.66, 0.77),
    )
    s = fieller(base, ref, cand, MIN)
    assert s.estimate == pytest.approx(0.255 / 0.51) and s.bounded
    assert s.low < s.estimate < s.high  # type: ignore[operator]
    # The same data with the direction flipped (higher is better) scores the same.
    neg = [{k: -v for k, v in g.items()} for g in (base, ref, cand)]
    flipped = fieller(*neg, Metric("acc", "max"))
    assert flipped.estimate == pytest.approx(s.estimate) and flipped.low == pytest.approx(s.low)
    # A reference within the noise of the baseline cannot bound the ratio: said, not faked.
    loose = fieller(base, seeded(1.1, 0.95, 1.0, 0.98), cand, MIN)
    assert not loose.bounded and loose.low is None and "not bounded" in loose.note
    worse = fieller(
        base, {k: v + 0.3 for k, v in base.items()}, cand, MIN
    )  # a "reference" worse than the baseline
    assert not worse.bounded and "not better than the baseline" in worse.note
    assert normalized_score(1.0, 1.0, 0.5, MIN) is None
    # Gains identical on every seed: no noise, a point interval.
    assert fieller(
        base, {k: v - 0.5 for k, v in base.items()}, {k: v - 0.25 for k, v in base.items()}, MIN
    ).low == pytest.approx(0.5)
    # A seed where a contender failed drops out of the comparisons that involve it.
    assert fieller(base, ref, {0: 0.74, 1: 0.86}, MIN).estimate == pytest.approx(0.25 / 0.51)
    gain = compare(cand, base, MIN)
    assert gain.gain == pytest.approx(0.255) and gain.pairs == 4
    assert gain.p_value is not None and gain.p_value < 0.05


def test_fieller_covers_the_true_score_about_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    hits, trials = 0, 2000
    for _ in range(trials):
        # True score 0.4; a shared per-seed effect (data order) plus each contender's own noise.
        shared = [rng.gauss(0, 0.1) for _ in range(5)]
        base, ref, cand = (
            {k: mu + shared[k] + rng.gauss(0, 0.05) for k in range(5)} for mu in (1.0, 0.5, 0.8)
        )
        s = fieller(base, ref, cand, MIN)
        # An unbounded set (the reference not clearly better) contains every value.
        hits += (not s.bounded) or s.low <= 0.4 <= s.high  # type: ignore[operator]
    assert 0.93 < hits / trials < 0.97
