"""The progress chart. Owns: `progress.png` and reading autoresearch-format `results.tsv`.

Points come from a ledger (`points_from_ledger`, with the incumbent's noise band) or from
any results.tsv, ours or autoresearch's (`read_results_tsv`). `plot_progress` draws them
the way autoresearch's analysis notebook does (discarded grey, kept green and labelled, the
running best as a step line) plus what a noise-aware judge adds: the incumbent's mean ± sd
as a shaded band, crashes as red marks along the bottom (interrupted experiments, never
judged, as grey rings), and discards beyond the axis as triangles at its edge. matplotlib (Agg, no pyplot
state) is imported inside `plot_progress` only. The HTML report and dashboard live elsewhere.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab.errors import RsilabError
from rsilab.fsio import atomic_write
from rsilab.record.ledger import Ledger
from rsilab.results import Metric, RunResult, Status, Verdict

LABEL_CHARS = 45  # kept points are labelled with their description cut to this length
_SCORED = ("keep", "discard")  # statuses whose 0.000000 in a results.tsv is a real value


@dataclass(frozen=True)
class Point:
    """One decided experiment on the chart; `metric` is None when it has none (a crash)."""

    index: int
    metric: float | None
    status: str
    description: str
    band: tuple[float, float] | None = None  # incumbent's mean - sd, mean + sd at that time


def read_results_tsv(path: Path) -> tuple[str, list[Point]]:
    """Read a results.tsv: (the metric name from its header, one point per row)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RsilabError(f"{path}: cannot read results: {e}") from None
    header = lines[0].split("\t") if lines else []
    if len(header) < 4 or header[0] != "commit" or not {"status", "description"} <= set(header):
        raise RsilabError(
            f"{path}:1: expected a header 'commit<TAB>metric<TAB>memory_gb<TAB>status<TAB>description'"
        )
    metric, i_status, i_desc = header[1], header.index("status"), header.index("description")
    points: list[Point] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) > len(header) and i_desc == len(header) - 1:  # a tab in the description
            cells = cells[:i_desc] + [" ".join(cells[i_desc:])]
        if len(cells) != len(header):
            raise RsilabError(
                f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(cells)}"
            )
        status = cells[i_status].strip().lower()
        if not status:
            raise RsilabError(f"{path}:{lineno}: empty status")
        try:
            value: float | None = float(cells[1])
        except ValueError:
            raise RsilabError(f"{path}:{lineno}: {metric} is not a number: {cells[1]!r}") from None
        if value is not None and (
            not math.isfinite(value) or (value == 0.0 and status not in _SCORED)
        ):
            value = None  # autoresearch writes 0.000000 for a crash
        points.append(Point(len(points) + 1, value, status, cells[i_desc].strip()))
    return metric, points


def tsv_direction(points: Sequence[Point]) -> str:
    """A results.tsv does not say which way its metric improves: its kept rows do (each
    improves on the one before), so "max" when they rise, else "min"."""
    kept = [p.metric for p in points if p.status == Verdict.KEEP and p.metric is not None]
    return "max" if len(kept) >= 2 and kept[-1] > kept[0] else "min"


def tsv_ledger(points: Sequence[Point], path: Path, *, metric: str, direction: str) -> Ledger:
    """A ledger at `path` (a new file) holding a results.tsv's rows, one experiment each with
    its one metric, so the HTML report can be drawn for it as for a workspace."""
    verdicts = {v.value for v in Verdict} - {Verdict.MORE.value}
    ledger = Ledger(path)
    ledger.set_setting("metric", metric)
    ledger.set_setting("comparable", {"metric.direction": direction})
    for i, p in enumerate(points):
        status = p.status if p.status in verdicts else Verdict.DISCARD.value
        eid = ledger.add_experiment(parent=None, commit=f"{i:040x}", proposer="results.tsv",
                                    description=p.description, diff="",
                                    kind="baseline" if i == 0 else "candidate")  # fmt: skip
        ok = p.metric is not None
        ledger.add_run(eid, RunResult(Status.OK if ok else Status.CRASH, 0, p.metric))
        ledger.add_decision(eid, verdict=status, reason=f"{status} (from results.tsv)",
                            metric=p.metric)  # fmt: skip
    return ledger


def points_from_ledger(ledger: Ledger) -> tuple[str, list[Point]]:
    """Decided experiments in id order (index = experiment id), each with the noise band of
    the incumbent at that point (mean ± sd of its ok runs; needs two or more)."""
    metric = ledger.get_setting("metric", "val_bpb")
    name = str(metric.get("name", "val_bpb")) if isinstance(metric, dict) else str(metric)
    values: dict[int, list[float]] = {}
    for run in ledger.runs():
        if run.ok and run.metric is not None:
            values.setdefault(run.experiment_id, []).append(run.metric)
    points: list[Point] = []
    band: tuple[float, float] | None = None
    for e in ledger.experiments():
        if not e.decided:
            continue
        if e.status == Verdict.KEEP:
            band = _band(values.get(e.id, []))
        metric = e.metric if e.status != Verdict.CRASH else None
        metric = metric if metric is not None and math.isfinite(metric) else None
        points.append(Point(e.id, metric, e.status, e.description, band))
    return name, points


def plot_progress(
    points: Sequence[Point], out: Path, *, metric: str = "val_bpb", direction: str = "min",
    title: str | None = None,
) -> Path:  # fmt: skip
    """Draw the progress chart to `out` (PNG, written atomically) and return `out`."""
    fig = progress_figure(points, metric=metric, direction=direction, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    atomic_write(Path(out), buf.getvalue())
    return Path(out)


def progress_figure(
    points: Sequence[Point], *, metric: str = "val_bpb", direction: str = "min",
    title: str | None = None,
) -> Any:  # fmt: skip
    """The chart as a matplotlib Figure (Agg canvas), for `plot_progress` to save."""
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', not {direction!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    m = Metric(metric, "min" if direction == "min" else "max")
    fig = Figure(figsize=(16, 8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scored = [(p, p.metric) for p in points
              if p.metric is not None and p.status != Verdict.INTERRUPTED]  # fmt: skip
    kept = [(p, v) for p, v in scored if p.status == Verdict.KEEP]
    other = [(p, v) for p, v in scored if p.status != Verdict.KEEP]
    # An interrupted experiment was never judged (a stop cut it short): not a crash.
    failed = [p for p in points if p.metric is None and p.status != Verdict.INTERRUPTED]
    cut = [p for p in points if p.status == Verdict.INTERRUPTED]
    last = max((p.index for p in points), default=0)
    first = min((p.index for p in points), default=0)
    ylim = _ylim([v for _, v in kept or scored], points)
    if ylim is not None:  # discards beyond the axis get a triangle at its edge, not nothing
        off = [(p, v) for p, v in other if not ylim[0] <= v <= ylim[1]]
        other = [(p, v) for p, v in other if ylim[0] <= v <= ylim[1]]
    else:
        off = []

    if any(p.band is not None for p in points):
        xs = [p.index for p in points] + [last + 0.5]
        lo = [p.band[0] if p.band else math.nan for p in points]
        hi = [p.band[1] if p.band else math.nan for p in points]
        ax.fill_between(xs, lo + lo[-1:], hi + hi[-1:], step="post", color="#2ecc71", alpha=0.15,
                        linewidth=0, zorder=1, label="Incumbent noise (mean ± sd)")  # fmt: skip
    if other:
        ax.scatter([p.index for p, _ in other], [v for _, v in other], c="#bbbbbb", s=14,
                   alpha=0.6, zorder=2, label="Discarded")  # fmt: skip
    if kept:
        best: list[float] = []
        for _, v in kept:
            best.append(v if not best or m.better(v, best[-1]) else best[-1])
        xs = [p.index for p, _ in kept] + [last + 0.5]
        ax.step(xs, best + best[-1:], where="post", color="#27ae60", linewidth=2, alpha=0.8,
                zorder=3, label="Running best")  # fmt: skip
        ax.scatter([p.index for p, _ in kept], [v for _, v in kept], c="#2ecc71", s=50,
                   edgecolors="black", linewidths=0.5, zorder=4, label="Kept")  # fmt: skip
        span = max(last - first, 1)
        for p, v in kept:  # up-right; in the right third up-left, so labels stay in the frame
            right = (p.index - first) / span > 0.66
            ax.annotate(_label(p.description), (p.index, v), textcoords="offset points",
                        xytext=(-6 if right else 6, 6), fontsize=8, color="#1a7a3a",
                        rotation=-30 if right else 30, ha="right" if right else "left",
                        va="bottom", annotation_clip=True, clip_on=True)  # fmt: skip
    if off and ylim is not None:  # x in data units, y in axes units: at the edge they are beyond
        worse_up = [p.index for p, v in off if v > ylim[1]]
        worse_down = [p.index for p, v in off if v < ylim[0]]
        label: str | None = f"Discarded, off the chart ({len(off)})"
        for at, y, marker in ((worse_up, 0.985, "^"), (worse_down, 0.015, "v")):
            if at:
                ax.plot(at, [y] * len(at), linestyle="none", marker=marker, color="#999999",
                        markersize=6, transform=ax.get_xaxis_transform(), zorder=5,
                        clip_on=False, label=label)  # fmt: skip
                label = None  # one legend entry for both edges
    if failed:  # x in data units, y in axes units: a row of marks along the bottom
        ax.plot([p.index for p in failed], [0.02] * len(failed), linestyle="none", marker="x",
                color="#e74c3c", markersize=5, transform=ax.get_xaxis_transform(),
                zorder=5, label=f"Crashed / no {metric}")  # fmt: skip
    if cut:
        ax.plot([p.index for p in cut], [0.02] * len(cut), linestyle="none", marker="o",
                markerfacecolor="none", color="#888888", markersize=5,
                transform=ax.get_xaxis_transform(), zorder=5,
                label="Interrupted (not judged)")  # fmt: skip

    ax.set_xlim(first - 1, last + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # experiment numbers, never 2.5
    if ylim is not None:
        ax.set_ylim(*ylim)
    n_kept = len(kept)
    ax.set_title(title or f"rsilab progress: {len(points)} experiments, {n_kept} kept", fontsize=14)
    ax.set_xlabel("Experiment #", fontsize=12)
    better = "lower" if direction == "min" else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)", fontsize=12)
    ax.grid(True, alpha=0.2)
    if not points:
        ax.text(0.5, 0.5, "no experiments yet", transform=ax.transAxes, ha="center", color="grey")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right" if direction == "min" else "lower right", fontsize=9)
    return fig


def _band(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    return mean - sd, mean + sd


def _label(description: str) -> str:
    text = " ".join(description.split())
    if len(text) > LABEL_CHARS:
        text = text[: LABEL_CHARS - 3] + "..."
    return text.replace("$", r"\$")  # a bare $ would start matplotlib mathtext


def _ylim(focus: list[float], points: Sequence[Point]) -> tuple[float, float] | None:
    """The span of the kept values (best to baseline), bands included, plus a margin:
    autoresearch's "interesting region"; far-off discards fall outside it."""
    values = focus + [v for p in points if p.band is not None for v in p.band]
    if not values:
        return None
    lo, hi = min(values), max(values)
    margin = (hi - lo) * 0.15 or abs(hi) * 0.01 or 1.0
    return lo - margin, hi + margin
