"""Tests for rsilab.report.progress: results.tsv reading and the progress chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsilab.errors import RsilabError
from rsilab.record.ledger import Ledger
from rsilab.report.progress import Point, plot_progress, points_from_ledger, read_results_tsv
from rsilab.results import RunResult, Status

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / ".rsilab" / "ledger.db")
    rows = [
        ("baseline", "keep", [0.998, 1.000, 0.996], 0.998),
        ("switch to GeLU\tactivation", "discard", [1.004], 1.004),
        ("double width: $ cost", "crash", [], None),
        ("increase LR to 0.04", "keep", [0.990, 0.992], 0.991),
        ("weight tying", "discard", [0.9915], 0.9915),
    ]
    for i, (desc, verdict, values, metric) in enumerate(rows):
        eid = led.add_experiment(
            parent=None, commit=f"{i:x}" * 40, proposer="tuner", description=desc, diff="",
            kind="baseline" if i == 0 else "candidate",
        )  # fmt: skip
        for seed, v in enumerate(values):
            led.add_run(eid, RunResult(Status.OK, seed, v, summary={"peak_memory_gb": 2.0}))
        if not values:
            led.add_run(eid, RunResult(Status.CRASH, 0, None, reason="exit 1"))
        led.add_decision(eid, verdict=verdict, reason="", metric=metric)
    led.add_experiment(
        parent=None, commit="f" * 40, proposer="tuner", description="running", diff=""
    )
    return led


def test_read_results_tsv_round_trips_export(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    led.export_tsv(tmp_path / "results.tsv", metric_name="val_bpb")
    metric, points = read_results_tsv(tmp_path / "results.tsv")
    assert metric == "val_bpb"
    assert [p.index for p in points] == [1, 2, 3, 4, 5]
    assert [p.status for p in points] == ["keep", "discard", "crash", "keep", "discard"]
    assert [p.metric for p in points] == [0.998, 1.004, None, 0.991, 0.9915]
    assert [p.description for p in points] == [
        "baseline", "switch to GeLU activation", "double width: $ cost", "increase LR to 0.04",
        "weight tying",
    ]  # fmt: skip
    led.close()


def test_read_autoresearch_file(tmp_path: Path) -> None:
    path = tmp_path / "results.tsv"
    path.write_text(
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.997900\t44.0\tKEEP\tbaseline\n"
        "\n"
        "c3d4e5f\t0.000000\t0.0\tcrash\tdouble model width (OOM)\n"
        "b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR\tto 0.04\n"
    )
    metric, points = read_results_tsv(path)
    assert metric == "val_bpb"
    assert points == [
        Point(1, 0.9979, "keep", "baseline"),
        Point(2, None, "crash", "double model width (OOM)"),
        Point(3, 0.9932, "keep", "increase LR to 0.04"),
    ]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", ":1:"),
        ("hash\tval_bpb\tstatus\n", ":1:"),
        (
            "commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\t0.9\t1.0\tkeep\n",
            ":2: expected 5",
        ),
        (
            "commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\t0.9\t1.0\tkeep\tok\nabc\tfast\t1.0\tkeep\tx\n",
            ":3: val_bpb is not a number",
        ),
        (
            "commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\t0.9\t1.0\t\tok\n",
            ":2: empty status",
        ),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(RsilabError) as err:
        read_results_tsv(path)
    message = str(err.value)
    assert str(path) in message and where in message and "\n" not in message


def test_missing_tsv(tmp_path: Path) -> None:
    with pytest.raises(RsilabError, match="missing.tsv"):
        read_results_tsv(tmp_path / "missing.tsv")


def test_points_from_ledger_with_band(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    led.set_setting("metric", {"name": "val_loss", "direction": "min"})
    metric, points = points_from_ledger(led)
    assert metric == "val_loss"
    assert [p.index for p in points] == [1, 2, 3, 4, 5]  # the running experiment is left out
    assert points[2].metric is None and points[2].status == "crash"
    base_band, new_band = points[0].band, points[3].band
    assert (
        base_band is not None
        and base_band[0] == pytest.approx(0.996)
        and base_band[1] == pytest.approx(1.0)
    )
    assert points[1].band == base_band and points[4].band == new_band
    assert new_band is not None and new_band[0] < 0.991 < new_band[1]
    led.set_setting("metric", "acc")
    assert points_from_ledger(led)[0] == "acc"
    led.close()


def test_plot_progress_writes_png(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    metric, points = points_from_ledger(led)
    led.close()
    out = plot_progress(points, tmp_path / "out" / "progress.png", metric=metric)
    assert out == tmp_path / "out" / "progress.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["progress.png"]  # no temp file left


@pytest.mark.parametrize(
    "points",
    [
        [],
        [Point(1, None, "crash", "all crashed")],
        [Point(1, 0.5, "keep", "baseline")],
        [
            Point(1, 0.5, "keep", "b"),
            Point(2, 0.6, "keep", "better $x$"),
            Point(3, 0.4, "discard", "worse"),
        ],
    ],
)
def test_plot_progress_edge_cases(tmp_path: Path, points: list[Point]) -> None:
    out = plot_progress(points, tmp_path / "p.png", metric="acc", direction="max", title="t")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plot_progress_rejects_bad_direction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="direction"):
        plot_progress([], tmp_path / "p.png", direction="lower")
