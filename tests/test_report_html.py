"""Tests for the self-contained HTML report (rsilab.report.html), in a real headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner
from report_helpers import ARTIFACTS, DIFF, EVIL, chromium, save_artifact, synthetic_ledger

from rsilab.cli import main
from rsilab.record.ledger import Ledger
from rsilab.report.html import lineage_needed, render_report, snapshot, write_report
from rsilab.report.progress import Point
from rsilab.report.svg import chart_svg, nice_ticks
from rsilab.results import RunResult, Status


def fake_workspace(tmp_path: Path) -> Path:
    """A folder `rsilab report` accepts (workspace.json + ledger), filled synthetically."""
    root = tmp_path / "ws"
    (root / ".rsilab").mkdir(parents=True)
    (root / ".rsilab" / "workspace.json").write_text(json.dumps({"tag": "t"}))
    synthetic_ledger(root / ".rsilab" / "ledger.db").close()
    return root


def test_report_shows_counts_sections_and_escapes_everything(tmp_path: Path) -> None:
    led = synthetic_ledger(tmp_path / "ledger.db")
    page = render_report(snapshot(led, "lab"))
    assert "5 experiments, 2 kept</b>, 2 discarded, 1 failed" in page
    assert "baseline 1.0000 → incumbent #3 0.9902 (gain +0.0098)" in page  # trials and the recheck
    for section in (
        "Progress",
        "Experiments",
        "Kept changes",
        "Noise floor over time",
        "Proposers",
        "Costs",
        "Human actions",
    ):
        assert f"<h2>{section}</h2>" in page
    # Model-written text never becomes markup.
    assert EVIL not in page and "window.pwned" in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt; &amp; wider MLP" in page
    assert "<b>width</b>" not in page and "MLP_RATIO = 6  # &lt;b&gt;width&lt;/b&gt;" in page
    assert "the &lt;i&gt;LR&lt;/i&gt; sweep is done" in page
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    # Proposer comparison and costs.
    assert re.search(
        r"<td>llm</td><td class=num>2</td><td class=num>1</td><td class=num>50%</td>"
        r"<td class=num>1</td><td class=num>\+0.0095</td>",
        page,
    )
    assert "tokens in <b>2,400</b>" in page and "money <b>$0.0250</b>" in page
    # Effect and CI of the kept change; the serial history needs no lineage section.
    assert "+0.0095 [0.0040, 0.0150]" in page
    assert "<h2>Lineage</h2>" not in page and not lineage_needed(snapshot(led))


def test_lineage_appears_when_experiments_ran_in_parallel(tmp_path: Path) -> None:
    led = synthetic_ledger(tmp_path / "ledger.db")
    base = led.experiments()[0]
    # Started after #3 was kept, but on the baseline: it ran in parallel with #3.
    eid = led.add_experiment(parent=base.commit, commit="a" * 40, proposer="llm", description="rope",
                             diff=DIFF)  # fmt: skip
    led.add_run(eid, RunResult(Status.OK, 0, 0.985))
    led.add_decision(eid, verdict="discard", reason="re-applied: confirming it as #7", metric=0.985)
    assert lineage_needed(snapshot(led))
    # The supervisor re-applied #6 onto the incumbent #3 as #7 (the ledger's lineage table).
    again = led.add_experiment(parent="3" * 40, commit="b" * 40, proposer="llm", description="rope (merged)",
                               diff=DIFF, meta={"merged_onto": 3, "reapply_of": eid})  # fmt: skip
    led.add_lineage(again, parent=eid, merged_onto=3)
    led.add_run(again, RunResult(Status.OK, 0, 0.984))
    led.add_decision(again, verdict="keep", reason="kept", metric=0.984, effect=0.006)
    page = render_report(snapshot(led))
    assert "<h2>Lineage</h2>" in page and "re-applied onto <b>#3</b>" in page
    lineage = page.split("<h2>Lineage</h2>")[1].split("</section>")[0]
    items = re.findall(r'<li style="margin-left:(\d+)px">#(\d+) ', lineage)
    # #1 forks into #3 (kept) and #6 (the winner that was re-applied), each a branch; #7 follows #6.
    assert items == [("0", "1"), ("18", "3"), ("18", "6"), ("18", "7")]
    assert "+ 1 tried: #2 discard" in lineage and "+ 2 tried: #4 crash, #5 discard" in lineage
    assert "re-applied from #6 onto #3" in lineage


def test_chart_svg_marks_and_ticks() -> None:
    assert "no experiments yet" in chart_svg([])
    svg = chart_svg([Point(1, 1.0, "keep", "base", band=(0.99, 1.01)), Point(2, 0.98, "keep", "a & b"),
                     Point(3, 7.5, "discard", "far off"), Point(4, None, "crash", "oom")],
                    metric="val_loss", direction="min")  # fmt: skip
    assert 'data-points="4" data-kept="2"' in svg and svg.count('class="band"') >= 1
    assert 'class="pt-discard pt-out" data-id="3"' in svg  # beyond the range: an arrow at the edge
    assert 'class="pt-fail" data-id="4"' in svg and ">a &amp; b</text>" in svg
    assert "val_loss (lower is better)" in svg
    assert nice_ticks(0.98, 1.02) == [0.98, 0.99, 1.0, 1.01, 1.02]
    assert nice_ticks(1.0, 1.0) == [1.0]


def test_cli_report_html_in_chromium(tmp_path: Path) -> None:
    root = fake_workspace(tmp_path)
    out = CliRunner().invoke(main, ["report", str(root), "--html"])
    assert out.exit_code == 0, out.output
    assert "report.html" in out.output
    report = root / "report.html"
    svg = report.read_text().split('<svg class="chart"')[1].split(">")[0]
    assert 'data-points="5" data-kept="2"' in svg
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(report.as_uri())
        assert page.inner_text(".n-experiments") == "5 experiments, 2 kept"
        assert page.evaluate("window.pwned") is None  # the description's script never ran
        assert page.locator("table.experiments tbody tr").count() == 5
        assert page.locator("svg.chart circle.pt-keep[data-id]").count() == 2
        assert page.locator("svg.chart .pt-discard[data-id]").count() == 2  # one is off the chart
        assert page.locator("svg.chart path.pt-fail[data-id]").count() == 1
        # Filter by status, then by proposer; sort by the metric.
        page.select_option("#filters select[name=status]", "keep")
        assert page.locator("table.experiments tbody tr:visible").count() == 2
        assert page.inner_text("#filters .shown") == "2 of 5 shown"
        page.select_option("#filters select[name=status]", "")
        page.select_option("#filters select[name=proposer]", "llm")
        assert page.locator("table.experiments tbody tr:visible").count() == 2
        page.select_option("#filters select[name=proposer]", "")
        page.click("table.experiments th:nth-child(5)")  # val_bpb, ascending
        first = page.locator("table.experiments tbody tr").first.get_attribute("data-id")
        assert first == "3"
        # A kept change's row jumps to its diff.
        page.click("#row-3")
        assert page.evaluate("location.hash") == "#exp-3"
        assert "MLP_RATIO = 6  # <b>width</b>" in page.inner_text("#exp-3 pre.diff")
        ARTIFACTS.mkdir(exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    save_artifact(report, "report.html")


def test_report_html_of_an_empty_ledger(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.db")
    path = write_report(led, tmp_path / "report.html")
    text = path.read_text()
    assert "0 experiments, 0 kept" in text and "no experiments yet" in text
