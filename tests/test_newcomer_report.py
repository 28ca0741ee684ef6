"""What a newcomer reads in the reports (issue 24): progress.png's marks, `rsilab status`
with the controls people used, the incumbent after a veto told alike by status and the
dashboard, queue rejections that reach the record. Real ledgers, real toy workspaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from report_helpers import real_workspace

from rsilab.loop.controls import Controls, post
from rsilab.record.ledger import Ledger
from rsilab.report import html as H
from rsilab.report.progress import Point, progress_figure
from rsilab.results import RunResult, Status
from rsilab.workspace import open_workspace

LONG = "a change with a description long enough to run far past the frame"


def _chart() -> object:
    points = [
        Point(1, 1.00, "keep", "baseline", (0.98, 1.02)),
        Point(2, 40.0, "discard", "diverged: LR 10x"),  # far above the kept span
        Point(3, 0.95, "keep", LONG),
        Point(4, None, "interrupted", "stopped half-way"),
        Point(5, 0.97, "discard", "small change"),
        Point(6, 0.93, "keep", LONG + " again"),
    ]
    return progress_figure(points, metric="val_bpb", title="t")


def test_png_marks_off_chart_points_and_interrupted_ones_and_keeps_labels_in() -> None:
    fig = _chart()
    fig.canvas.draw()  # type: ignore[attr-defined]
    (ax,) = fig.axes  # type: ignore[attr-defined]
    labels = ax.get_legend_handles_labels()[1]
    assert "Discarded, off the chart (1)" in labels, labels
    assert "Interrupted (not judged)" in labels and not any("Crashed" in s for s in labels)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    notes = [t for t in ax.texts if "change" in t.get_text()]
    assert len(notes) == 2
    for t in notes:  # each kept label within the frame, left to right, and clipped by it
        box = t.get_window_extent(renderer)
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, (box, frame)
        assert t.get_clip_on()


def test_status_shows_pause_notes_vetoes_and_rejected_queue_files(tmp_path: Path) -> None:
    ws = open_workspace(real_workspace(tmp_path))
    q = ws.queue_dir
    (q / "zz-nope.toml").write_text(
        'description = "a knob that does not exist"\n[knobs]\nNOPE = 1\n'
    )
    from loop_helpers import supervise
    from report_helpers import TOY_OVERRIDES

    _, led = supervise(ws.root, *TOY_OVERRIDES)  # the queue rejects it, the supervisor records it
    rejected = led.events_after(0, "rejected")
    assert [ev.data["file"] for ev in rejected] == ["zz-nope.toml"]
    assert "NOPE" in rejected[0].message
    inc = led.incumbent()
    assert inc is not None and inc.kind != "baseline"
    Controls(ws, led).apply_veto(inc.id, "too good to be true")
    post(led, "note", {"text": "the L2 sweep is done"}, source="tester")
    post(led, "pause", {"reason": "reading diffs"}, source="tester")
    out = subprocess.run([sys.executable, "-m", "rsilab.cli", "status", str(ws.root)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "paused: pause: reading diffs (by tester" in out, out
    assert "note: the L2 sweep is done (tester)" in out
    assert f"veto: veto #{inc.id}: discarded" in out
    assert "rejected: queued zz-nope.toml rejected:" in out and "NOPE" in out
    # The same incumbent, the same value, in status and on the dashboard.
    line = next(s for s in out.splitlines() if s.startswith("baseline ") and "-> incumbent" in s)
    told = line.split("-> incumbent ", 1)[1].split(" (", 1)[0]  # "#2 0.3984"
    summary = H.summary_html(H.snapshot(led))
    assert f"→ incumbent {told} (gain" in summary, (line, summary)
    how = line.split("), ", 1)[1].split(" (", 1)[0]  # "its one run" / "the mean of N runs"
    assert how.startswith(("its one run", "the mean of")) and how in summary, (how, summary)
    assert "zz-nope.toml rejected" in H.human_html(H.snapshot(led))
    led.close()


def test_a_fresh_workspace_has_a_queue_folder(tmp_path: Path) -> None:
    for cmd in (["init", "a", "--task", "toy", "--tag", "t"],
                ["run", "b", "--task", "toy", "--max-experiments", "0"]):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "rsilab.cli", *cmd], cwd=tmp_path,
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert (tmp_path / cmd[1] / ".rsilab" / "queue").is_dir(), cmd
    with Ledger(tmp_path / "b" / ".rsilab" / "ledger.db") as ledger:
        assert ledger.get_setting("proposers") == ["tuner"]


def test_a_baseline_still_the_incumbent_is_not_given_a_gain_over_itself(tmp_path: Path) -> None:
    from rsilab.report.progress import tsv_ledger

    out = subprocess.run([sys.executable, "-m", "rsilab.cli", "init", "ws", "--task", "toy",
                          "--tag", "t"], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    ws = open_workspace(tmp_path / "ws")
    led = tsv_ledger([Point(1, 1.0, "keep", "baseline")], ws.ledger_path, metric="val_loss",
                     direction="min")  # fmt: skip
    led.add_run(1, RunResult(Status.OK, 7, 0.9), kind="recheck")  # a partner or re-check run
    status = subprocess.run([sys.executable, "-m", "rsilab.cli", "status", str(ws.root)],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "incumbent: the baseline, val_loss 0.9500, the mean of 2 runs" in status, status
    assert "gain" not in status
    summary = H.summary_html(H.snapshot(led))
    assert (
        "incumbent: the baseline, 0.9500, the mean of 2 runs" in summary and "gain" not in summary
    )
    led.close()
