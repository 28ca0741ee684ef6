"""Page templates. Owns: the CSS and the small scripts shared by the HTML report and the dashboard.

Constants only: no logic, nothing from outside (no fonts, no CDN), so a report opens offline.
The table script sorts by a column (click its header) and filters by status, proposer and
text; it uses event delegation, so it keeps working when the dashboard swaps the rows in.
"""

from __future__ import annotations

CSS = """
:root { --fg:#1d232a; --muted:#6b7785; --line:#dde3ea; --bg:#f6f8fa; --card:#fff;
  --keep:#1f9d55; --keep-bg:#e3f6ea; --discard:#8a949e; --fail:#d64541; --fail-bg:#fdecea;
  --run:#2f6fde; --run-bg:#e7effc; --warn:#b7791f; --warn-bg:#fdf3e1; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header.top { background:#14202e; color:#fff; padding:14px 24px; display:flex; gap:24px;
  align-items:baseline; flex-wrap:wrap; }
header.top h1 { font-size:18px; margin:0; }
header.top .sub { color:#aab6c4; font-size:13px; }
main { max-width:1280px; margin:0 auto; padding:16px 24px 48px; }
section.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:14px 18px; margin:14px 0; }
section.card > h2 { font-size:15px; margin:0 0 10px; }
.counts { font-size:16px; margin:0; }
.counts b { font-size:18px; }
.muted { color:var(--muted); fill:var(--muted); }
.grid2 { display:grid; grid-template-columns: minmax(0,2fr) minmax(0,1fr); gap:14px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } }
@media (max-width: 1100px) { table.experiments .opt { display:none; } }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f0f3f6; position:sticky; top:0; font-weight:600; white-space:nowrap; }
th[data-type] { cursor:pointer; user-select:none; }
th[data-dir="asc"]::after { content:" ▲"; } th[data-dir="desc"]::after { content:" ▼"; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.desc { max-width:520px; overflow-wrap:anywhere; }
tr.exp { cursor:pointer; } tr.exp:hover { background:#f3f7fb; }
tr.selected { background:#e7effc !important; }
.tablewrap { max-height:560px; overflow:auto; border:1px solid var(--line); border-radius:6px; }
.filters { display:flex; gap:10px; margin:0 0 8px; flex-wrap:wrap; align-items:center; }
.filters select, .filters input { font:inherit; padding:3px 6px; border:1px solid var(--line);
  border-radius:4px; }
.badge { display:inline-block; padding:0 7px; border-radius:10px; font-size:12px; font-weight:600;
  background:#eef1f4; color:var(--discard); }
.badge.keep { background:var(--keep-bg); color:var(--keep); }
.badge.crash, .badge.invalid, .badge.timeout { background:var(--fail-bg); color:var(--fail); }
.badge.interrupted, .badge.human { background:var(--warn-bg); color:var(--warn); }
.badge.running, .badge.more { background:var(--run-bg); color:var(--run); }
pre { margin:0; font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
  white-space:pre-wrap; overflow-wrap:anywhere; }
pre.diff { background:#fbfcfd; border:1px solid var(--line); border-radius:6px; padding:8px;
  max-height:520px; overflow:auto; }
pre.diff .add { background:#e6ffec; color:#116329; display:block; }
pre.diff .del { background:#ffebe9; color:#a40e26; display:block; }
pre.diff .hunk { color:#6639ba; display:block; }
pre.diff .file { color:var(--muted); font-weight:600; display:block; }
pre.log { background:#0f1720; color:#d7e0ea; padding:8px; border-radius:6px; max-height:320px;
  overflow:auto; }
details > summary { cursor:pointer; }
.kept-change { border-top:1px solid var(--line); padding:10px 0; }
.kept-change h3 { font-size:14px; margin:0 0 4px; overflow-wrap:anywhere; }
.facts { display:flex; gap:18px; flex-wrap:wrap; color:var(--muted); margin:2px 0 6px; }
.facts b { color:var(--fg); font-weight:600; }
ul.lineage { list-style:none; margin:0; padding-left:4px; }
ul.lineage li { margin:3px 0; padding-left:8px; border-left:2px solid #c5ced8; overflow-wrap:anywhere; }
.notes li { margin:4px 0; overflow-wrap:anywhere; }
.note { background:var(--warn-bg); border-left:3px solid var(--warn); padding:6px 10px;
  border-radius:4px; margin:6px 0; overflow-wrap:anywhere; }
svg.chart { width:100%; height:auto; display:block; font-size:11px; }
svg.chart .frame { fill:#fff; stroke:var(--line); }
svg.chart .grid { stroke:#eef1f4; } svg.chart .axis { stroke:#98a4b0; }
svg.chart .tick { fill:#5c6773; font-size:11px; } svg.chart .label { fill:#37414b; font-size:12px; }
svg.chart .pt-discard { fill:#bbbbbb; fill-opacity:.7; }
svg.chart .pt-keep { fill:#2ecc71; stroke:#000; stroke-width:.6; }
svg.chart .pt-label { fill:#1a7a3a; font-size:10px; }
svg.chart .pt-fail { stroke:#e74c3c; stroke-width:1.8; fill:none; }
svg.chart .best { stroke:#27ae60; stroke-width:2.2; fill:none; opacity:.85; }
svg.chart .band { fill:#2ecc71; fill-opacity:.16; stroke:none; }
svg.chart .legend-box { fill:#fff; fill-opacity:.9; stroke:var(--line); }
"""

# Sorting and filtering of `table.experiments`; rows carry data-status / data-proposer and
# each cell a data-v sort key. Delegated listeners, re-applied after an htmx swap.
TABLE_JS = """
(function () {
  function cellKey(row, i, type) {
    var c = row.cells[i]; if (!c) return null;
    var v = c.getAttribute('data-v'); if (v === null) v = c.textContent;
    if (type === 'num') { var n = parseFloat(v); return isNaN(n) ? null : n; }
    return v.toLowerCase();
  }
  function sortTable(table) {
    var th = table.querySelector('th[data-dir]'); if (!th) return;
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute('data-type'), dir = th.getAttribute('data-dir') === 'asc' ? 1 : -1;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, i, type), y = cellKey(b, i, type);
      if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;  // no value: last
      return x < y ? -dir : x > y ? dir : 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function filterTable(table) {
    var box = document.getElementById(table.getAttribute('data-filters')); if (!box) return;
    var st = box.querySelector('[name=status]').value, pr = box.querySelector('[name=proposer]').value;
    var q = box.querySelector('[name=q]').value.toLowerCase(), shown = 0, all = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var s = r.getAttribute('data-status'); all++;
      var ok = (!st || s === st || (st === 'failed' && r.getAttribute('data-failed') === '1')) &&
               (!pr || r.getAttribute('data-proposer') === pr) &&
               (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.style.display = ok ? '' : 'none'; if (ok) shown++;
    });
    var n = box.querySelector('.shown'); if (n) n.textContent = shown + ' of ' + all + ' shown';
  }
  function refresh() {
    document.querySelectorAll('table.experiments').forEach(function (t) { sortTable(t); filterTable(t); });
  }
  document.addEventListener('click', function (ev) {
    var th = ev.target.closest && ev.target.closest('table.experiments th[data-type]');
    if (!th) return;
    var dir = th.getAttribute('data-dir') === 'asc' ? 'desc' : 'asc';
    th.parentNode.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', dir); sortTable(th.closest('table'));
  });
  document.addEventListener('input', function (ev) {
    if (ev.target.closest && ev.target.closest('.filters')) refresh();
  });
  document.addEventListener('change', function (ev) {
    if (ev.target.closest && ev.target.closest('.filters')) refresh();
  });
  document.addEventListener('htmx:afterSwap', refresh);
  document.addEventListener('htmx:sseMessage', refresh);
  document.addEventListener('DOMContentLoaded', refresh);
  window.rsilabRefreshTable = refresh;
})();
"""

REPORT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="rsilab">
<title>{title}</title>
<style>{css}</style></head>
<body>
<header class="top"><h1>{title}</h1><span class="sub">{subtitle}</span></header>
<main>
{body}
</main>
<script>{js}</script>
</body></html>
"""

# The live dashboard: each `sse-swap` element is replaced by the stream's event of that name.
# Every request after the first carries the token (when there is one) in a cookie.
DASHBOARD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<meta name="htmx-config" content='{{"responseHandling":[{{"code":".*","swap":true}}]}}'>
<title>{title}</title>
<style>{css}
.live {{ display:inline-block; width:9px; height:9px; border-radius:50%; background:#888; margin-right:6px; }}
body.connected .live {{ background:#2ecc71; }}
.controls form {{ margin:8px 0; display:flex; gap:6px; flex-wrap:wrap; align-items:center; }}
.controls textarea {{ width:100%; min-height:70px; font:12px ui-monospace,monospace; }}
.controls input[type=text], .controls input[type=number] {{ font:inherit; padding:3px 6px; }}
button {{ font:inherit; padding:4px 12px; border-radius:5px; border:1px solid #b8c2cc; background:#fff; cursor:pointer; }}
button.primary {{ background:#2f6fde; color:#fff; border-color:#2f6fde; }}
button.danger {{ background:#d64541; color:#fff; border-color:#d64541; }}
#flash .ok {{ color:var(--keep); }} #flash .err {{ color:var(--fail); }}
.state {{ font-weight:600; }} .state.paused {{ color:var(--warn); }} .state.stopping {{ color:var(--fail); }}
.state.stopped {{ color:#5c6773; }}
.top-row {{ align-items:start; }} .stack {{ display:flex; flex-direction:column; gap:14px; min-width:0; }}
.stack section.card {{ margin:0; }}
</style>
<script src="/static/htmx.min.js"></script>
<script src="/static/sse.min.js"></script>
</head>
<body hx-ext="sse" sse-connect="/events">
<header class="top"><h1><span class="live" title="live updates"></span>{title}</h1>
<span class="sub">{subtitle}</span></header>
<main>
<section class="card" id="summary" sse-swap="summary">{summary}</section>
<div class="grid2 top-row">
  <div class="stack">
  <section class="card"><h2>Progress</h2><div id="chart" sse-swap="chart">{chart}</div></section>
  <section class="card"><h2>Running</h2><div id="running" sse-swap="running">{running}</div></section>
  </div>
  <section class="card controls"><h2>Controls</h2>
    <div id="state" sse-swap="state">{state}</div>
    <div id="flash" aria-live="polite"></div>
    <form hx-post="/control/pause" hx-target="#flash"><button class="primary" id="btn-pause">Pause</button>
      <input type="text" name="reason" placeholder="why (optional)" size="18"></form>
    <form hx-post="/control/resume" hx-target="#flash"><button id="btn-resume">Resume</button></form>
    <form hx-post="/control/stop" hx-target="#flash" hx-confirm="Stop after the current experiment?">
      <button class="danger" id="btn-stop">Stop after current experiment</button></form>
    <details open><summary>Queue an idea</summary>
    <form hx-post="/control/queue_idea" hx-target="#flash" id="form-idea">
      <select name="kind">{idea_kinds}</select>
      <input type="text" name="description" placeholder="one-line description" size="28">
      <textarea name="idea" placeholder="e.g. try a cosine schedule with warmup; or LR=0.002 WARMUP=10; or a diff"></textarea>
      <button class="primary" id="btn-idea">Queue</button></form>{idea_note}</details>
    <details><summary>Veto a kept change</summary>
    <form hx-post="/control/veto" hx-target="#flash" id="form-veto" hx-confirm="Revert this kept change?">
      <input type="number" name="experiment" placeholder="#" min="1" style="width:6em">
      <input type="text" name="reason" placeholder="why" size="24"><button class="danger" id="btn-veto">Veto</button></form></details>
    <details open><summary>Pin a note</summary>
    <form hx-post="/control/note" hx-target="#flash" id="form-note">
      <input type="text" name="text" placeholder="a note for everyone watching" size="34">
      <button id="btn-note">Pin</button></form></details>
  </section>
</div>
<section class="card"><h2>Experiments</h2>{table}</section>
<section class="card"><h2>Change</h2><div id="detail"><p class="muted">click an experiment to see its diff</p></div></section>
<section class="card"><h2>Human actions</h2><div id="human" sse-swap="human">{human}</div></section>
</main>
<script>{js}
document.body.addEventListener('htmx:sseOpen', function () {{ document.body.classList.add('connected'); }});
document.body.addEventListener('htmx:sseError', function () {{ document.body.classList.remove('connected'); }});
document.body.addEventListener('htmx:afterRequest', function (ev) {{
  var f = ev.detail.elt; if (f.tagName === 'FORM' && ev.detail.successful && f.id !== 'form-veto') f.reset();
}});
</script>
</body></html>
"""
