"""Results of a collapse study. Owns: aggregation over seeds, the table, CSV/JSON, the plot.

Every finished cell's latest ok row counts. Generation 0 (policy "real") is shared, so it
is shown as generation 0 of every policy. For each (policy, generation) and metric: the
mean over seeds and a 95% confidence band, mean +- t(0.975, n-1) * sd / sqrt(n) (Student
t; no band with one seed; with two seeds t is 12.7, so bands are wide on purpose).
Reference rows measure real text with the same sample-side metrics: R itself (the corpus
generation 0 trains on) and a same-size slice of the real validation split (what an
independent real sample of that size scores; e.g. its tail_types is below 1).

Writes `collapse_cells.csv` (one row per cell), `collapse_summary.csv` (one row per
policy, generation and metric), `collapse.json` (settings, reference, summary, cells) and
`collapse.png` (each metric against generation, one line per policy, with bands), all
atomically. matplotlib is imported only by `plot`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsilab.fsio import atomic_write, json_safe
from rsilab.studies.collapse.metrics import DISTINCT_NS
from rsilab.studies.collapse.study import OK, SHARED

METRICS = (
    "val_bpb",
    "byte_entropy",
    "word_entropy",
    *(f"distinct_{n}" for n in DISTINCT_NS),
    "rep8",
    "tail_types",
    "tail_mass",
    "tail_bytes_mass",
    "nonwords",
)
# (metric, column title) of the printed table; the files hold every metric.
TABLE = (
    ("val_bpb", "val_bpb"),
    ("byte_entropy", "H_byte"),
    ("word_entropy", "H_word"),
    ("distinct_2", "distinct2"),
    ("tail_types", "tail_types"),
    ("tail_mass", "tail_mass"),
    ("nonwords", "nonwords"),
    ("rep8", "rep8"),
)
PLOTTED = (
    "val_bpb",
    "byte_entropy",
    "word_entropy",
    "distinct_2",
    "tail_types",
    "tail_mass",
    "nonwords",
    "rep8",
)


def ci95(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a Student-t 95% interval for the mean; no band when n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    from scipy.stats import t  # scipy is a dependency; imported here to keep import light

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def latest_ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest ok row of each (policy, seed, generation), in cell order."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:
        if r["status"] == OK:
            best[(r["policy"], r["seed"], r["generation"])] = r
    return [best[k] for k in sorted(best, key=lambda k: (k[2], k[0], k[1]))]


def _values(row: dict[str, Any]) -> dict[str, float]:
    return {"val_bpb": row["val_bpb"], **row["metrics"]}


def summarize(rows: Sequence[dict[str, Any]], policies: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per (policy, generation): n, seeds, and mean/low/high of every metric."""
    cells = latest_ok(rows)
    labels = list(policies) or []
    for r in cells:
        if r["policy"] != SHARED and r["policy"] not in labels:
            labels.append(r["policy"])
    shared = [r for r in cells if r["policy"] == SHARED]
    out = []
    for label in labels or [SHARED]:
        mine = shared + [r for r in cells if r["policy"] == label]
        for g in sorted({r["generation"] for r in mine}):
            group = [r for r in mine if r["generation"] == g]
            entry: dict[str, Any] = {
                "policy": label,
                "generation": g,
                "n": len(group),
                "seeds": sorted(r["seed"] for r in group),
            }
            for m in METRICS:
                vals = [float(_values(r)[m]) for r in group if _values(r).get(m) is not None]
                mean, lo, hi = ci95(vals)
                entry[m] = {"mean": mean, "low": lo, "high": hi}
            out.append(entry)
    return out


def _fmt(stat: dict[str, Any]) -> str:
    mean, lo, hi = stat["mean"], stat["low"], stat["high"]
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.3f}" if lo is None else f"{mean:.3f}±{(hi - lo) / 2:.3f}"


def table(summary: Sequence[dict[str, Any]], reference: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: mean ± half-width of the 95% band, one line per (policy, gen)."""
    head = ["policy", "gen", "n", *(title for _, title in TABLE)]
    lines = [
        [e["policy"], str(e["generation"]), str(e["n"]), *(_fmt(e[m]) for m, _ in TABLE)]
        for e in summary
    ]
    for name, values in reference.items():
        lines.append(
            [name, "-", "-", *(f"{values[m]:.3f}" if m in values else "-" for m, _ in TABLE)]
        )
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    text = [
        " ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *lines]
    ]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def write_all(
    out: Path,
    rows: Sequence[dict[str, Any]],
    summary: Sequence[dict[str, Any]],
    reference: dict[str, dict[str, float]],
    settings: dict[str, Any],
) -> list[Path]:
    """Write the CSVs, the JSON and the plot into `out`; returns their paths."""
    cells = latest_ok(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "policy",
            "seed",
            "generation",
            *METRICS,
            "train_kind",
            "train_bytes",
            "real_bytes",
            "generated_bytes",
            "samples_sha256",
        ]
    )
    for r in cells:
        v, t = _values(r), r["data"].get("train", {})
        w.writerow(
            [
                r["policy"],
                r["seed"],
                r["generation"],
                *(v.get(m) for m in METRICS),
                t.get("kind"),
                t.get("size"),
                t.get("real_bytes"),
                t.get("generated_bytes"),
                r["samples"].get("sha256"),
            ]
        )
    atomic_write(out / "collapse_cells.csv", buf.getvalue())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["policy", "generation", "n", "metric", "mean", "ci95_low", "ci95_high"])
    for e in summary:
        for m in METRICS:
            w.writerow(
                [e["policy"], e["generation"], e["n"], m, e[m]["mean"], e[m]["low"], e[m]["high"]]
            )
    atomic_write(out / "collapse_summary.csv", buf.getvalue())

    dump = {"settings": settings, "reference": reference, "summary": list(summary), "cells": cells}
    atomic_write(
        out / "collapse.json", json.dumps(json_safe(dump), indent=1, allow_nan=False) + "\n"
    )
    paths = [out / "collapse_cells.csv", out / "collapse_summary.csv", out / "collapse.json"]
    if summary:
        plot(
            summary,
            reference,
            out / "collapse.png",
            title=f"rsilab collapse · {settings.get('task', '')}",
        )
        paths.append(out / "collapse.png")
    return paths


def plot(
    summary: Sequence[dict[str, Any]],
    reference: dict[str, dict[str, float]],
    path: Path,
    title: str = "",
) -> None:
    """Each metric against generation, one line per policy with its 95% band; real text as
    dashed (R) and dotted (validation slice) horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = math.ceil(len(PLOTTED) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    policies = list(dict.fromkeys(e["policy"] for e in summary))
    for ax, m in zip(axes.flat, PLOTTED, strict=False):
        for i, label in enumerate(policies):
            mine = [e for e in summary if e["policy"] == label]
            xs = [e["generation"] for e in mine]
            ys = [e[m]["mean"] for e in mine]
            color = f"C{i}"
            ax.plot(xs, ys, marker="o", color=color, label=label)
            band = [
                (x, e[m]["low"], e[m]["high"])
                for x, e in zip(xs, mine, strict=True)
                if e[m]["low"] is not None
            ]
            if band:
                ax.fill_between(
                    [b[0] for b in band],
                    [b[1] for b in band],
                    [b[2] for b in band],
                    color=color,
                    alpha=0.18,
                    linewidth=0,
                )
        for (name, values), style in zip(reference.items(), ("--", ":"), strict=False):
            if m in values:
                ax.axhline(values[m], color="gray", linestyle=style, linewidth=1, label=name)
        ax.set_title(m)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(PLOTTED) :]:
        ax.axis("off")
    shown: dict[str, Any] = {}  # one legend for the figure: policies and reference lines
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            shown.setdefault(name, handle)
    fig.legend(list(shown.values()), list(shown), loc="upper right", ncol=len(shown), fontsize=8)
    if title:
        fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
