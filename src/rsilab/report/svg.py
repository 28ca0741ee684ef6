"""The progress chart as inline SVG. Owns: drawing `Point`s without matplotlib.

The HTML report and the live dashboard embed this chart in the page itself (no image file,
no script, no network), so it redraws as cheaply as a table row. It shows what
`progress.plot_progress` shows: discarded experiments grey, kept ones green and labelled,
the running best as a step line, the incumbent's noise band (mean ± sd) shaded, failed
experiments as red crosses along the bottom. Every text is escaped: descriptions come
from models. Each mark has a <title> tooltip. Not covered: the PNG (progress.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from rsilab.report.progress import Point
from rsilab.results import Metric, Verdict

WIDTH, HEIGHT = 960, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 24, 24, 48
LABEL_CHARS = 38


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round values spanning [lo, hi] (1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def chart_svg(points: Sequence[Point], *, metric: str = "val_bpb", direction: str = "min",
              width: int = WIDTH, height: int = HEIGHT) -> str:  # fmt: skip
    """The chart as an `<svg>` element (a string of trusted markup, all data escaped)."""
    m = Metric(metric, "max" if direction == "max" else "min")
    scored = [p for p in points if p.metric is not None]
    kept = [p for p in scored if p.status == Verdict.KEEP]
    failed = [p for p in points if p.metric is None]
    n_kept = sum(p.status == Verdict.KEEP for p in points)
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'role="img" data-points="{len(points)}" data-kept="{n_kept}" '
            f'aria-label="progress: {len(points)} experiments, {n_kept} kept">')  # fmt: skip
    if not points:
        return (head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                'class="muted">no experiments yet</text></svg>')  # fmt: skip
    x0 = min(p.index for p in points) - 1
    x1 = max(p.index for p in points) + 1
    focus = [p.metric for p in kept or scored if p.metric is not None]
    # Discards no worse than the worst kept value (the baseline, usually) are in view too;
    # far-worse ones would squash the interesting region and are drawn as edge arrows.
    worst = max(focus) if m.direction == "min" else min(focus)
    focus += [p.metric for p in scored if p.metric is not None and not m.better(worst, p.metric)]
    y0, y1 = _span(focus, points)
    pw, ph = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return _TOP + (1 - (y - y0) / (y1 - y0)) * ph

    clip = f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}"/>'
    out = [head, f'<defs><clipPath id="plot">{clip}</clipPath></defs>']
    out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" class="frame"/>')
    for t in nice_ticks(y0, y1):
        y = sy(t)
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>'
        )
    for t in nice_ticks(max(x0, 0), x1, 10):
        if t != int(t):
            continue
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP + ph}" y2="{_TOP + ph + 4}" class="axis"/>'
            f'<text x="{x:.1f}" y="{_TOP + ph + 17}" text-anchor="middle" class="tick">{int(t)}</text>'
        )
    better = "lower" if m.direction == "min" else "higher"
    out.append(
        f'<text x="{_LEFT + pw / 2}" y="{height - 8}" text-anchor="middle" class="label">Experiment #</text>'
        f'<text transform="translate(16 {_TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'class="label">{escape(metric)} ({better} is better)</text>'
    )
    out.append('<g clip-path="url(#plot)">')
    out.append(_band(points, sx, sy, x1))
    off = False  # any discard beyond the axis (drawn as a triangle at the edge)
    for p in scored:
        if p.status != Verdict.KEEP:
            assert p.metric is not None
            if y0 <= p.metric <= y1:
                out.append(
                    f'<circle cx="{sx(p.index):.1f}" cy="{sy(p.metric):.1f}" r="4" class="pt-discard" '
                    f'data-id="{p.index}"><title>{_tip(p)}</title></circle>'
                )
            else:  # off the chart (far worse, usually): a small arrow at the edge it is beyond
                off = True
                cx, up = sx(p.index), p.metric > y1
                d = (f"M{cx:.1f},{_TOP + 1} l-4,7 h8 z" if up else
                     f"M{cx:.1f},{_TOP + ph - 1} l-4,-7 h8 z")  # fmt: skip
                out.append(
                    f'<path d="{d}" class="pt-discard pt-out" data-id="{p.index}">'
                    f"<title>{_tip(p)} (off the chart)</title></path>"
                )
    if kept:
        best: list[float] = []
        for p in kept:
            assert p.metric is not None
            best.append(p.metric if not best or m.better(p.metric, best[-1]) else best[-1])
        xs = [sx(p.index) for p in kept] + [sx(x1 - 0.5)]
        d = f"M{xs[0]:.1f},{sy(best[0]):.1f}"
        for i in range(1, len(xs)):
            d += f" H{xs[i]:.1f}" + (f" V{sy(best[i]):.1f}" if i < len(best) else "")
        out.append(f'<path d="{d}" class="best"/>')
        for p in kept:
            assert p.metric is not None
            cx, cy = sx(p.index), sy(p.metric)
            # Labels go up-right; near the right edge up-left, so they stay inside the chart.
            label = (
                f'transform="translate({cx + 7:.1f} {cy - 7:.1f}) rotate(-30)"'
                if cx < _LEFT + pw * 0.7
                else f'transform="translate({cx - 7:.1f} {cy - 7:.1f}) rotate(30)" text-anchor="end"'
            )
            out.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" class="pt-keep" data-id="{p.index}">'
                f"<title>{_tip(p)}</title></circle>"
                f'<text {label} class="pt-label">{escape(_short(p.description))}</text>'
            )
    out.append("</g>")
    for p in failed:
        cx, cy = sx(p.index), _TOP + ph - 8
        out.append(
            f'<path d="M{cx - 4:.1f},{cy - 4:.1f} l8,8 m0,-8 l-8,8" class="pt-fail" data-id="{p.index}">'
            f"<title>{_tip(p)}</title></path>"
        )
    out.append(_legend(width, bool(kept), any(p.band for p in points), bool(failed), metric, off))
    out.append("</svg>")
    return "".join(out)


def _span(focus: list[float], points: Sequence[Point]) -> tuple[float, float]:
    """The y range: the kept values (best to baseline) and the bands, plus a margin, as the
    PNG chart does; far-off discards fall outside it (clipped)."""
    values = focus + [v for p in points if p.band is not None for v in p.band]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    margin = (hi - lo) * 0.15 or abs(hi) * 0.01 or 1.0
    return lo - margin, hi + margin


def _band(points: Sequence[Point], sx: Callable[[float], float], sy: Callable[[float], float],
          x1: float) -> str:  # fmt: skip
    """The incumbent's mean ± sd as a step-shaped shaded area (missing where it is unknown)."""
    pts = sorted(points, key=lambda p: p.index)
    polys: list[list[tuple[float, float, tuple[float, float]]]] = []
    run: list[tuple[float, float, tuple[float, float]]] = []  # consecutive points with a band
    for i, p in enumerate(pts):
        if p.band is None:
            if run:
                polys.append(run)
            run = []
            continue
        end = pts[i + 1].index if i + 1 < len(pts) else x1 - 0.5
        run.append((p.index, end, p.band))
    if run:
        polys.append(run)
    out = []
    for seg in polys:
        top = " ".join(f"{sx(a):.1f},{sy(b[1]):.1f} {sx(e):.1f},{sy(b[1]):.1f}" for a, e, b in seg)
        bottom = " ".join(
            f"{sx(e):.1f},{sy(b[0]):.1f} {sx(a):.1f},{sy(b[0]):.1f}" for a, e, b in reversed(seg)
        )
        out.append(f'<polygon points="{top} {bottom}" class="band"/>')
    return "".join(out)


def _tip(p: Point) -> str:
    value = f"{p.metric:.6g}" if p.metric is not None else "no value"
    return escape(f"#{p.index} {p.status} {value}: {p.description}")


def _legend(width: int, kept: bool, band: bool, failed: bool, metric: str,
            off: bool = False) -> str:  # fmt: skip
    items = [("pt-discard", "Discarded")]
    if off:
        items.append(("pt-out", "Discarded, off the chart"))
    if kept:
        items += [("pt-keep", "Kept"), ("best", "Running best")]
    if band:
        items.append(("band", "Incumbent noise (mean ± sd)"))
    if failed:
        items.append(("pt-fail", f"Crashed / no {metric}"))
    x, y = width - _RIGHT - 210, _TOP + 8
    out = [
        f'<g class="legend"><rect x="{x}" y="{y}" width="204" height="{len(items) * 18 + 8}" class="legend-box"/>'
    ]
    for i, (cls, label) in enumerate(items):
        cy = y + 14 + i * 18
        if cls == "best":
            mark = f'<line x1="{x + 6}" x2="{x + 22}" y1="{cy}" y2="{cy}" class="best"/>'
        elif cls == "band":
            mark = f'<rect x="{x + 6}" y="{cy - 5}" width="16" height="10" class="band"/>'
        elif cls == "pt-out":
            mark = f'<path d="M{x + 14},{cy - 5} l-5,9 h10 z" class="pt-discard pt-out"/>'
        elif cls == "pt-fail":
            mark = f'<path d="M{x + 10},{cy - 4} l8,8 m0,-8 l-8,8" class="pt-fail"/>'
        else:
            mark = f'<circle cx="{x + 14}" cy="{cy}" r="5" class="{cls}"/>'
        out.append(mark + f'<text x="{x + 28}" y="{cy + 4}" class="tick">{escape(label)}</text>')
    out.append("</g>")
    return "".join(out)
