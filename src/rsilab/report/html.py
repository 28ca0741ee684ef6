"""The static HTML report. Owns: `report.html`, and the page fragments the dashboard reuses.

`snapshot(ledger)` reads everything a page shows in one go; the `*_html` functions turn a
snapshot into fragments (summary counts, chart, experiment table, kept changes with their
diffs and statistics, noise floor over time, proposer comparison, costs, lineage, notes
and human actions); `render_report` puts them into one self-contained file: inline CSS,
an inline SVG chart and a few lines of inline script, nothing loaded from elsewhere, so it
opens offline and can be mailed. Everything from the ledger is escaped (descriptions,
diffs and reasons come from models). This module reads the ledger and never writes it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from rsilab.fsio import atomic_write
from rsilab.loop.controls import Action, actions
from rsilab.record.claims import Claim, claim_lines, claims
from rsilab.record.ledger import DecisionRow, Event, Experiment, Ledger, Run
from rsilab.report.progress import Point, points_from_ledger
from rsilab.report.svg import chart_svg
from rsilab.report.templates import CSS, REPORT_PAGE, TABLE_JS
from rsilab.results import Metric, Verdict

FAILED = ("crash", "invalid", "timeout", "interrupted")
STATUSES = ("keep", "discard", *FAILED, "running")


def e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


@dataclass(frozen=True)
class Row:
    """One experiment with its runs and costs."""

    exp: Experiment
    runs: list[Run]
    costs: dict[str, float]
    decisions: list[DecisionRow]

    @property
    def compute_s(self) -> float:
        return self.costs.get("compute", 0.0)

    @property
    def tokens(self) -> float:
        return self.costs.get("tokens_in", 0.0) + self.costs.get("tokens_out", 0.0)

    @property
    def usd(self) -> float:
        return self.costs.get("cost_usd", 0.0)

    @property
    def vetoed(self) -> bool:
        return bool(self.decisions) and self.decisions[-1].source == "human"

    @property
    def ever_kept(self) -> bool:
        return any(d.verdict == Verdict.KEEP for d in self.decisions)


@dataclass(frozen=True)
class Snapshot:
    """Everything the report and the dashboard show, read from the ledger at one moment."""

    title: str
    metric: str
    direction: str
    rows: list[Row]
    points: list[Point]
    events: list[Event]
    controls: list[Action]
    totals: dict[str, float]
    lineage: dict[int, tuple[int | None, int | None]] = field(
        default_factory=dict
    )  # id -> parent, onto
    taken_at: float = field(default_factory=time.time)
    # What thinking of each proposal cost (ledger.proposal_costs: seconds, tokens, rounds,
    # outcome), for the proposers that record it.
    proposals: list[dict[str, Any]] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)  # each keep: claimed and confirmed gain

    @property
    def counts(self) -> dict[str, int]:
        c = {"experiments": len(self.rows), "kept": 0, "discarded": 0, "failed": 0, "running": 0}
        for r in self.rows:
            s = r.exp.status
            key = {"keep": "kept", "discard": "discarded"}.get(s) or (
                "failed" if s in FAILED else "running")  # fmt: skip
            c[key] += 1
        return c

    @property
    def baseline(self) -> Row | None:
        return next((r for r in self.rows if r.exp.kind == "baseline" and r.exp.decided), None)

    @property
    def incumbent(self) -> Row | None:
        kept = [r for r in self.rows if r.exp.status == Verdict.KEEP]
        return max(kept, key=lambda r: r.decisions[-1].id) if kept else None


def snapshot(ledger: Ledger, title: str = "") -> Snapshot:
    """Read a ledger once for a page."""
    metric, points = points_from_ledger(ledger)
    comparable = ledger.get_setting("comparable", {}) or {}
    direction = str(comparable.get("metric.direction", "min"))
    runs: dict[int, list[Run]] = {}
    for r in ledger.runs():
        runs.setdefault(r.experiment_id, []).append(r)
    decisions: dict[int, list[DecisionRow]] = {}
    for d in ledger.decisions():
        decisions.setdefault(d.experiment_id, []).append(d)
    rows = [Row(x, runs.get(x.id, []), ledger.costs(x.id), decisions.get(x.id, []))
            for x in ledger.experiments()]  # fmt: skip
    lineage = {x.experiment_id: (x.parent, x.merged_onto) for x in ledger.lineage()}
    return Snapshot(title or f"rsilab · {ledger.path.parent.parent.name}", metric, direction, rows,
                    points, ledger.events(limit=200), actions(ledger), ledger.costs(), lineage,
                    proposals=ledger.proposal_costs(),
                    claims=claims(ledger, Metric(metric, "max" if direction == "max" else "min")))  # fmt: skip


# -- small formatters ---------------------------------------------------------------------


def num(v: float | None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.3g}"  # a diverged run stays narrow


def badge(status: str, extra: str = "") -> str:
    return f'<span class="badge {e(status)}">{e(status)}{e(extra)}</span>'


def when(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def effect_html(x: Experiment) -> str:
    if x.effect is None:
        return "–"
    ci = f" [{num(x.ci_low)}, {num(x.ci_high)}]" if x.ci_low is not None else ""
    return f"{x.effect:+.4f}{ci}" if abs(x.effect) < 1e5 else f"{x.effect:+.3g}"


def diff_html(diff: str) -> str:
    """A unified diff, escaped, each line classed for colour."""
    if not diff.strip():
        return '<p class="muted">no diff (the baseline, or the change was empty)</p>'
    out = []
    for line in diff.splitlines():
        cls = ("file" if line.startswith(("diff --git", "index ", "--- ", "+++ ")) else
               "hunk" if line.startswith("@@") else "add" if line.startswith("+") else
               "del" if line.startswith("-") else "")  # fmt: skip
        text = e(line) or " "
        out.append(f'<span class="{cls}">{text}</span>' if cls else text + "\n")
    return '<pre class="diff">' + "".join(out) + "</pre>"


# -- fragments ----------------------------------------------------------------------------


def summary_html(s: Snapshot) -> str:
    """The counts line: 'N experiments, K kept' and the gain so far."""
    c = s.counts
    parts = [f'<b class="n-experiments">{c["experiments"]} experiments, {c["kept"]} kept</b>',
             f'{c["discarded"]} discarded', f'{c["failed"]} failed']  # fmt: skip
    if c["running"]:
        parts.append(f"{c['running']} running")
    text = ", ".join(parts)
    base, inc = s.baseline, s.incumbent
    if base is not None and inc is not None and base.exp.metric is not None:
        values = [r.metric for r in inc.runs if r.ok and r.metric is not None]
        best = statistics.fmean(values) if values else inc.exp.metric
        if best is not None and inc.exp.id == base.exp.id:  # no gain: the baseline itself
            text += (f' · {e(s.metric)}: incumbent: the baseline, {num(best)}, the mean of '
                     f'{len(values)} runs')  # fmt: skip
        elif best is not None:
            gain = Metric(s.metric, "max" if s.direction == "max" else "min").gain(
                best, base.exp.metric
            )
            # As `rsilab status` says it: the mean of all its ok runs, re-checks included
            # (its row shows the value it was decided on).
            text += (f' · {e(s.metric)}: baseline {num(base.exp.metric)} → incumbent '
                     f'#{inc.exp.id} {num(best)} (gain {gain:+.4f}), '
                     + ("its one run" if len(values) == 1 else f"the mean of {len(values)} runs"))  # fmt: skip
    t = s.totals
    text += f" · compute {t.get('compute', 0.0) / 3600:.2f} h"
    kept = "".join(f"<li>{e(line)}</li>" for line in claim_lines(s.claims))
    claimed = (  # what each keep was said to gain, and what the runs made since say
        '<details class="claims"><summary>kept changes: gain claimed at the keep, confirmed '
        f"by later runs only</summary><ul>{kept}</ul></details>"
        if kept
        else ""
    )
    return f'<p class="counts">{text}</p>{claimed}'


def chart_html(s: Snapshot) -> str:
    return chart_svg(s.points, metric=s.metric, direction=s.direction)


def table_html(
    s: Snapshot, row_attrs: Callable[[Row], str] | None = None, body_attrs: str = ""
) -> str:
    """The experiment table with its filters; `row_attrs` adds attributes to each row,
    `body_attrs` to the tbody (trusted markup)."""
    proposers = sorted({r.exp.proposer for r in s.rows})
    options = "".join(f'<option value="{e(x)}">{e(x)}</option>' for x in (*STATUSES, "failed"))
    prop_options = "".join(f'<option value="{e(x)}">{e(x)}</option>' for x in proposers)
    # "opt" columns are left out where space is short (the dashboard's CSS hides them).
    cols = [("#", "num"), ("status", "text"), ("proposer", "text"), ("description", "text"),
            (s.metric, "num"), ("effect [95% CI]", "num"), ("p", "num opt"), ("runs", "num"),
            ("compute", "num"), ("tokens", "num opt"), ("started", "num opt")]  # fmt: skip
    head = "".join(
        f'<th data-type="{t.split()[0]}" class="{"num" if t.startswith("num") else ""}'
        f'{" opt" if t.endswith("opt") else ""}"{" data-dir=desc" if i == 0 else ""}>{e(c)}</th>'
        for i, (c, t) in enumerate(cols)
    )
    return (
        '<div class="filters" id="filters">'
        f'<label>status <select name="status"><option value="">all</option>{options}</select></label>'
        f'<label>proposer <select name="proposer"><option value="">all</option>{prop_options}</select></label>'
        '<label>search <input name="q" type="search" placeholder="description, reason"></label>'
        '<span class="shown muted"></span></div>'
        '<div class="tablewrap"><table class="experiments" data-filters="filters">'
        f'<thead><tr>{head}</tr></thead><tbody id="exp-rows"{body_attrs}>{rows_html(s, row_attrs)}</tbody></table></div>'
    )


def rows_html(s: Snapshot, row_attrs: Callable[[Row], str] | None = None) -> str:
    """The table's rows, newest first."""
    out = []
    for r in reversed(s.rows):
        x = r.exp
        trials = sum(run.kind == "trial" for run in r.runs)
        extra = row_attrs(r) if row_attrs else ""
        vetoed = badge("human", " veto") if r.vetoed else ""
        out.append(
            f'<tr class="exp" id="row-{x.id}" data-id="{x.id}" data-status="{e(x.status)}" '
            f'data-failed="{int(x.status in FAILED)}" data-proposer="{e(x.proposer)}"{extra}>'
            f'<td class="num" data-v="{x.id}">{x.id}</td><td data-v="{e(x.status)}">{badge(x.status)}{vetoed}</td>'
            f"<td>{e(x.proposer)}</td>"
            f'<td class="desc" title="{e(x.reason)}">{e(x.description)}</td>'
            f'<td class="num" data-v="{_v(x.metric)}">{num(x.metric)}</td>'
            f'<td class="num" data-v="{_v(x.effect)}">{effect_html(x)}</td>'
            f'<td class="num opt" data-v="{_v(x.p_value)}">{num(x.p_value, 3)}</td>'
            f'<td class="num">{trials}</td>'
            f'<td class="num" data-v="{r.compute_s:.1f}">{duration(r.compute_s)}</td>'
            f'<td class="num opt">{r.tokens:.0f}</td>'
            f'<td class="num opt" data-v="{x.started_at:.3f}" title="{when(x.started_at)}">'
            f"{time.strftime('%H:%M:%S', time.localtime(x.started_at))}</td></tr>"
        )
    return "".join(out)


def _v(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else repr(v)


def runs_table(runs: list[Run]) -> str:
    if not runs:
        return '<p class="muted">no runs</p>'
    body = "".join(
        f"<tr><td>{r.kind}</td><td class=num>{r.seed}</td><td>{badge(r.status)}</td>"
        f"<td class=num>{num(r.metric, 6)}</td><td class=num>{r.train_seconds:.1f} s</td>"
        f"<td>{e(r.reason)}</td></tr>" for r in runs)  # fmt: skip
    return (
        "<table><thead><tr><th>run</th><th class=num>seed</th><th>status</th><th class=num>metric</th>"
        f"<th class=num>train</th><th>reason</th></tr></thead><tbody>{body}</tbody></table>"
    )


def experiment_html(r: Row, *, open_diff: bool = True) -> str:
    """One experiment in full: facts, statistics, runs, reason, diff."""
    x = r.exp
    facts = [f"proposer <b>{e(x.proposer)}</b>", f"commit <b>{e(x.commit[:10])}</b>",
             f"parent <b>{e((x.parent or '–')[:10])}</b>", f"mean <b>{num(x.metric)}</b>",
             f"effect <b>{effect_html(x)}</b>", f"p <b>{num(x.p_value, 4)}</b>",
             f"compute <b>{duration(r.compute_s)}</b>"]  # fmt: skip
    if r.tokens:
        facts.append(f"tokens <b>{r.tokens:.0f}</b> (${r.usd:.4f})")
    if x.meta.get("merged_onto") not in (None, ""):
        onto = x.meta["merged_onto"]
        facts.append(
            f"re-applied onto <b>{e(f'#{onto}' if isinstance(onto, int) else str(onto)[:10])}</b>"
        )
    vetoed = badge("human", " vetoed") if r.vetoed else ""
    return (
        f'<div class="kept-change" id="exp-{x.id}"><h3>#{x.id} {badge(x.status)}{vetoed} {e(x.description)}</h3>'
        f'<div class="facts">{"".join(f"<span>{f}</span>" for f in facts)}</div>'
        f'<p class="muted">{e(x.reason)}</p>{runs_table(r.runs)}'
        f"<details{' open' if open_diff else ''}><summary>diff</summary>{diff_html(x.diff)}</details></div>"
    )


def kept_html(s: Snapshot) -> str:
    kept = [
        r for r in s.rows if r.exp.kind != "baseline" and (r.exp.status == Verdict.KEEP or r.vetoed)
    ]
    if not kept:
        return '<p class="muted">no change kept yet</p>'
    return "".join(experiment_html(r) for r in kept)


def noise_html(s: Snapshot) -> str:
    """Each incumbent in turn: its runs (trials and rechecks), mean and sd: the noise floor."""
    eras = [r for r in s.rows if r.ever_kept]
    if not eras:
        return '<p class="muted">no incumbent yet</p>'
    body = []
    for r in eras:
        ok = [run for run in r.runs if run.ok and run.metric is not None]
        vals = [run.metric for run in ok if run.metric is not None]
        rechecks = [run.metric for run in ok if run.kind == "recheck" and run.metric is not None]
        sd = statistics.stdev(vals) if len(vals) > 1 else None
        mean = statistics.fmean(vals) if vals else None
        since = next((d.created_at for d in r.decisions if d.verdict == Verdict.KEEP), None)
        drift = (statistics.fmean(rechecks) - mean) if rechecks and mean is not None else None
        body.append(
            f"<tr><td>#{r.exp.id} {e(r.exp.description)}</td><td>{when(since)}</td>"
            f"<td class=num>{len(vals) - len(rechecks)}</td><td class=num>{len(rechecks)}</td>"
            f"<td class=num>{num(mean)}</td><td class=num>{num(sd)}</td>"
            f"<td class=num>{'–' if drift is None else f'{drift:+.4f}'}</td>"
            f"<td><pre>{e(' '.join(f'{v:.4f}' for v in vals))}</pre></td></tr>"
        )
    return ("<table><thead><tr><th>incumbent</th><th>since</th><th class=num>trials</th>"
            "<th class=num>rechecks</th><th class=num>mean</th><th class=num>sd (noise)</th>"
            "<th class=num>recheck drift</th><th>values</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")  # fmt: skip


def proposers_html(s: Snapshot) -> str:
    by: dict[str, list[Row]] = {}
    for r in s.rows:
        if r.exp.kind != "baseline":
            by.setdefault(r.exp.proposer, []).append(r)
    if not by:
        return '<p class="muted">no proposals yet</p>'
    body = []
    for name, rows in sorted(by.items()):
        kept = [r for r in rows if r.exp.status == Verdict.KEEP]
        gains = [r.exp.effect for r in kept if r.exp.effect is not None]
        failed = sum(r.exp.status in FAILED for r in rows)
        rate = len(kept) / len(rows) * 100
        body.append(
            f"<tr><td>{e(name)}</td><td class=num>{len(rows)}</td><td class=num>{len(kept)}</td>"
            f"<td class=num>{rate:.0f}%</td><td class=num>{failed}</td>"
            f"<td class=num>{'–' if not gains else f'{max(gains):+.4f}'}</td>"
            f"<td class=num>{'–' if not gains else f'{sum(gains):+.4f}'}</td>"
            f"<td class=num>{sum(r.tokens for r in rows):.0f}</td>"
            f"<td class=num>${sum(r.usd for r in rows):.4f}</td>"
            f"<td class=num>{sum(r.compute_s for r in rows) / 3600:.3f} h</td></tr>"
        )
    return ("<table><thead><tr><th>proposer</th><th class=num>experiments</th><th class=num>kept</th>"
            "<th class=num>keep rate</th><th class=num>failed</th><th class=num>best gain</th>"
            "<th class=num>total gain</th><th class=num>tokens</th><th class=num>cost</th>"
            "<th class=num>compute</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>")  # fmt: skip


def costs_html(s: Snapshot) -> str:
    t = s.totals
    starts = [r.exp.started_at for r in s.rows]
    ends = [r.exp.decided_at for r in s.rows if r.exp.decided_at is not None]
    span = (max(ends) - min(starts)) if starts and ends else 0.0
    items = [("tokens in", f"{t.get('tokens_in', 0.0):,.0f}"), ("tokens out", f"{t.get('tokens_out', 0.0):,.0f}"),
             ("money", f"${t.get('cost_usd', 0.0):.4f}"), ("compute", f"{t.get('compute', 0.0) / 3600:.3f} h"),
             ("wall time", duration(span))]  # fmt: skip
    for kind, amount in sorted(t.items()):
        if kind not in ("tokens_in", "tokens_out", "cost_usd", "compute"):
            items.append((kind, f"{amount:g}"))
    if s.proposals:  # the LLM proposer's thinking: time per proposal and how answers went
        secs = sorted(float(p["seconds"]) for p in s.proposals)
        outcomes = [str(p["outcome"]) for p in s.proposals]
        items += [("proposals", f"{len(secs)}"),
                  ("thinking per proposal (median)", f"{secs[len(secs) // 2]:.1f} s"),
                  ("thinking in all", duration(sum(secs))),
                  ("answers usable first try / after repair / never",
                   " / ".join(str(outcomes.count(o)) for o in ("first try", "after repair", "never"))),
                  ("repair rounds", f"{sum(max(0, int(p['rounds']) - 1) for p in s.proposals)}")]  # fmt: skip
    return (
        '<div class="facts">'
        + "".join(f"<span>{e(k)} <b>{e(v)}</b></span>" for k, v in items)
        + "</div>"
    )


def _parents(s: Snapshot) -> dict[int, int | None]:
    """Each experiment's parent experiment: the ledger's lineage where it was recorded,
    else the experiment (kept, or the baseline) whose commit it was made on."""
    by_commit: dict[str, int] = {}
    for r in s.rows:
        if r.ever_kept or r.exp.kind == "baseline":
            by_commit.setdefault(r.exp.commit, r.exp.id)
    return {r.exp.id: s.lineage[r.exp.id][0] if r.exp.id in s.lineage else
            by_commit.get(r.exp.parent or "") for r in s.rows}  # fmt: skip


def _merged_onto(s: Snapshot, r: Row) -> str:
    """'#N' (or a commit) when the change was re-applied onto a newer incumbent, else ''."""
    onto = s.lineage[r.exp.id][1] if r.exp.id in s.lineage else None
    onto = onto if onto is not None else r.exp.meta.get("merged_onto")
    if onto is None or onto == "":
        return ""
    return f"#{onto}" if isinstance(onto, int) else str(onto)[:10]


def lineage_needed(s: Snapshot) -> bool:
    """True when experiments ran in parallel: a re-applied change, or a candidate whose
    parent was not the incumbent when it started."""
    if any(_merged_onto(s, r) for r in s.rows):
        return True
    keeps = sorted((d.created_at, r.exp.commit) for r in s.rows for d in r.decisions
                   if d.verdict == Verdict.KEEP)  # fmt: skip
    for r in s.rows:
        if r.exp.kind == "baseline" or r.exp.parent is None:
            continue
        before = [c for t, c in keeps if t <= r.exp.started_at]
        if before and before[-1] != r.exp.parent:
            return True
    return False


def lineage_html(s: Snapshot) -> str:
    """The lineage as an indented list: every experiment that was kept or leads to a kept
    one, indented one step more at each fork; the others are counted at their parent."""
    parents = _parents(s)
    kids: dict[int | None, list[Row]] = {}
    for r in s.rows:
        if r.exp.kind != "baseline":
            kids.setdefault(parents[r.exp.id], []).append(r)
    shown: set[int] = set()
    for r in reversed(s.rows):  # children have larger ids than their parents
        if (
            r.ever_kept
            or r.exp.kind == "baseline"
            or any(c.exp.id in shown for c in kids.get(r.exp.id, []))
        ):
            shown.add(r.exp.id)
    roots = [r for r in s.rows if r.exp.kind == "baseline"]
    roots += [r for r in kids.get(None, []) if r.exp.id in shown]
    out, stack = [], [(0, r) for r in reversed(roots)]
    while stack:  # iterative: a long chain of keeps must not hit the recursion limit
        depth, r = stack.pop()
        mine = kids.get(r.exp.id, [])
        branch = [c for c in mine if c.exp.id in shown]
        other = [c for c in mine if c.exp.id not in shown]
        onto = _merged_onto(s, r)
        merged = (f' <span class="muted">re-applied from #{parents[r.exp.id]} onto {e(onto)}</span>'
                  if onto else "")  # fmt: skip
        rest = (f' <span class="muted">+ {len(other)} tried: '
                + ", ".join(f"#{c.exp.id} {e(c.exp.status)}" for c in other[:12])
                + ("…" if len(other) > 12 else "") + "</span>") if other else ""  # fmt: skip
        out.append(
            f'<li style="margin-left:{min(depth, 12) * 18}px">#{r.exp.id} {badge(r.exp.status)} '
            f'{e(r.exp.description)} <span class="muted">{e(r.exp.commit[:7])}</span>{merged}{rest}</li>'
        )
        step = 1 if len(branch) > 1 else 0
        stack += [(depth + step, c) for c in reversed(branch)]
    return '<ul class="lineage">' + "".join(out) + "</ul>"


def notes_html(s: Snapshot) -> str:
    notes = [a for a in s.controls if a.action == "note"]
    if not notes:
        return ""
    return "".join(f'<div class="note">{e(a.payload.get("text", ""))} '
                   f'<span class="muted">— {e(a.source)}, {when(a.created_at)}</span></div>'
                   for a in reversed(notes))  # fmt: skip


def human_html(s: Snapshot) -> str:
    """Every human control action, what the supervisor did about vetoes, and the queued
    files it rejected (with why)."""
    items = [(a.created_at, a.source, a.message) for a in s.controls]
    items += [(ev.created_at, ev.source, ev.message) for ev in s.events
              if ev.kind in ("veto", "rejected")]  # fmt: skip
    if not items:
        return '<p class="muted">no human action recorded</p>'
    return '<ul class="notes">' + "".join(
        f"<li>{when(t)} <b>{e(src)}</b>: {e(msg)}</li>" for t, src, msg in sorted(items, reverse=True)
    ) + "</ul>"  # fmt: skip


def card(title: str, body: str, ident: str = "") -> str:
    attr = f' id="{e(ident)}"' if ident else ""
    return f'<section class="card"{attr}><h2>{e(title)}</h2>{body}</section>'


def render_report(s: Snapshot) -> str:
    """The whole report as one self-contained HTML document."""
    parts = [f'<section class="card" id="summary">{summary_html(s)}{notes_html(s)}</section>',
             card("Progress", chart_html(s), "chart"),
             card("Experiments", table_html(s, _anchor), "experiments"),
             card("Kept changes", kept_html(s), "kept"),
             card("Noise floor over time", noise_html(s), "noise"),
             card("Proposers", proposers_html(s), "proposers"),
             card("Costs", costs_html(s), "costs")]  # fmt: skip
    if lineage_needed(s):
        parts.append(card("Lineage", lineage_html(s), "lineage"))
    parts.append(card("Human actions", human_html(s), "human"))
    subtitle = f"generated {when(s.taken_at)} · metric {s.metric} ({'lower' if s.direction == 'min' else 'higher'} is better)"
    return REPORT_PAGE.format(title=e(s.title), subtitle=e(subtitle), css=CSS, js=TABLE_JS,
                              body="\n".join(parts))  # fmt: skip


def _anchor(r: Row) -> str:
    """Rows of kept changes jump to their section of the report."""
    shown = r.exp.kind != "baseline" and (r.exp.status == Verdict.KEEP or r.vetoed)
    return f" onclick=\"location.hash='exp-{r.exp.id}'\"" if shown else ""


def write_report(ledger: Ledger, path: Path, title: str = "") -> Path:
    """Write report.html (atomically) for a ledger; returns the path."""
    atomic_write(Path(path), render_report(snapshot(ledger, title)))
    return Path(path)
