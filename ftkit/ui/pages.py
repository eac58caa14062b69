"""The dashboard's HTML, rendered on the server (charts are SVG from ``svg``); a small script of ours sorts and
filters tables and refreshes what is still changing. Every value shown is escaped."""

from __future__ import annotations

import json
import shlex
import time
from html import escape
from urllib.parse import quote

import yaml

from ftkit.config import flatten
from ftkit.rundir import layout
from ftkit.ui.runs import Run, Sweep, curves
from ftkit.ui.svg import line_chart

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:20px;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header b{font-size:16px}
main{padding:18px 24px;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:8px 0 18px}th,td{padding:5px 10px;border-bottom:1px solid #e3e6eb;
text-align:left;vertical-align:top}th{background:#eef1f5;cursor:pointer;user-select:none}td.num{text-align:right;
font-variant-numeric:tabular-nums}
.status{padding:1px 7px;border-radius:9px;font-size:12px}.finished{background:#d9f2dd}.running{background:#dbe9ff}
.interrupted{background:#fff1c9}.failed{background:#ffd9d9}
pre{background:#fff;border:1px solid #e3e6eb;padding:10px;overflow:auto;max-height:420px}
.chart{background:#fff;border:1px solid #e3e6eb;margin:4px 12px 12px 0}.chart .plot{fill:#fbfcfd;stroke:#ccd}
.chart .grid{stroke:#e6e8ec}.chart .tick,.chart .legend{font-size:11px;fill:#555}.chart .chart-title{font-weight:600}
.charts{display:flex;flex-wrap:wrap}.error{color:#b00020;font-size:13px}.diff td:first-child{font-family:monospace}
input[type=text],textarea,select{font:13px monospace;padding:4px;min-width:360px}label{display:block;margin-top:10px}
button{margin-top:10px;padding:5px 14px}code{background:#eef1f5;padding:1px 4px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var rows = Array.from(t.tBodies[0].rows), asc = th.dataset.asc !== '1';
      rows.sort(function (a, b) {
        var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      th.dataset.asc = asc ? '1' : '0';
      rows.forEach(function (r) { t.tBodies[0].appendChild(r); });
    });
  });
});
var filter = document.getElementById('filter');
if (filter) filter.addEventListener('input', function () {
  var q = filter.value.toLowerCase();
  document.querySelectorAll('#runs tbody tr').forEach(function (r) {
    r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
  });
});
document.querySelectorAll('[data-refresh]').forEach(function (el) {
  setInterval(function () {
    fetch(el.dataset.refresh).then(function (r) { return r.text(); }).then(function (h) { el.innerHTML = h; });
  }, 2000);
});
var log = document.getElementById('log');
if (log) {
  var offset = 0;
  var poll = function () {
    fetch(log.dataset.src + '?offset=' + offset).then(function (r) { return r.json(); }).then(function (d) {
      log.textContent += d.text; offset = d.offset; log.scrollTop = log.scrollHeight;
      document.getElementById('job-status').textContent = d.status;
      if (d.run) document.getElementById('job-run').innerHTML = '<a href="' + d.run + '">open the run</a>';
      document.getElementById('stop').style.display = d.status === 'running' ? '' : 'none';
      if (d.status === 'running') setTimeout(poll, 1000);
    });
  };
  poll();
}
"""


def page(title: str, body: str, allow_launch: bool = False) -> str:
    launch = '<a href="/launch">launch a run</a>' if allow_launch else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · ftkit</title>'
            f'<link rel="stylesheet" href="/static/ui.css"></head><body><header><b>ftkit</b><a href="/">runs</a>'
            f'{launch}</header><main><h2>{escape(title)}</h2>{body}</main>'
            f'<script src="/static/ui.js"></script></body></html>')


def _num(v, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def _status(run: Run) -> str:
    title = f' title="{escape(run.detail)}"' if run.detail else ""
    return f'<span class="status {run.status}"{title}>{run.status}</span>'


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def run_link(run: Run) -> str:
    return f'<a href="/run/{quote(run.key)}">{escape(run.path.name)}</a>'


def runs_list(runs: list[Run], sweeps: list[Sweep], allow_launch: bool) -> str:
    rows = []
    for r in runs:
        rows.append(
            f'<tr><td><input type="checkbox" name="run" value="{escape(r.key)}" form="compare"></td>'
            f'<td data-v="{escape(r.key)}">{run_link(r)}<br><small>{escape(r.key)}</small></td>'
            f"<td>{escape(r.task)}</td><td>{escape(r.method)}</td><td>{escape(r.model)}</td><td>{escape(r.data)}</td>"
            f"<td>{escape(r.main_metric or '')}</td><td class=num>{_num(r.best)}</td>"
            f'<td data-v="{r.status}">{_status(r)} <small>{escape(r.detail)}</small></td>'
            f'<td class=num>{_num(r.steps)}</td><td class=num>{_num(r.seconds, 1)}</td>'
            f'<td data-v="{r.started}">{_when(r.started)}</td></tr>')
    table = ('<p><input id="filter" type="text" placeholder="filter: task, method, model, data, status..."> '
             '<form id="compare" action="/compare" method="get" style="display:inline">'
             '<button type="submit">compare selected</button></form></p>'
             '<table id="runs" class="sortable"><thead><tr><th></th><th>run</th><th>task</th><th>method</th>'
             '<th>model</th><th>data</th><th>metric</th><th>best</th><th>status</th><th>steps</th><th>seconds</th>'
             f'<th>started</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    if not runs:
        table = "<p>No run dirs under these folders yet (a run dir holds ftkit.yaml).</p>"
    if sweeps:
        table += "<h3>Sweeps</h3><ul>" + "".join(
            f'<li><a href="/sweep/{quote(s.key)}">{escape(s.path.name)}</a> — {len(s.leaderboard)} trials, '
            f'{sum(r.get("status") == "done" for r in s.leaderboard)} done</li>' for s in sweeps) + "</ul>"
    return page("Runs", table, allow_launch)


def charts_html(run_curves: dict) -> str:
    loss, evals = run_curves["loss"], run_curves["evaluation"]
    return line_chart("loss", loss) + "".join(line_chart(name, {name: pts}) for name, pts in evals.items())


def commands(run: Run) -> list[tuple[str, str]]:
    path = shlex.quote(str(run.path))
    data = (run.config.get("data") or {}).get("eval") or (run.config.get("data") or {}).get("train") or "DATA"
    out = [("reproduce", f"ftkit train {path}/ftkit.yaml --output {path}-again")]
    if run.status in ("interrupted", "running"):
        out.append(("resume", f"ftkit train {path}/ftkit.yaml --resume"))
    if run.status == "finished":
        out += [("evaluate", f"ftkit eval {path} --data {shlex.quote(str(data))}"),
                ("export", f"ftkit export {path} --output {path}-export"),
                ("serve", f"ftkit serve {path}")]
    return out


def run_page(run: Run, files: list[tuple[str, int]], allow_launch: bool) -> str:
    live = f' data-refresh="/api/charts/{quote(run.key)}"' if run.status == "running" else ""
    body = [f"<p>{_status(run)} {escape(run.detail)} · {escape(run.task)} / {escape(run.method)} on "
            f"{escape(run.model)} · data {escape(run.data)} · started {_when(run.started)}</p>"]
    if allow_launch and run.status == "interrupted":
        body.append(f'<form method="post" action="/resume/{quote(run.key)}"><button>resume from the last checkpoint'
                    "</button></form>")
    body.append("<h3>Curves</h3>" + f'<div class="charts" id="charts"{live}>{charts_html(curves(run))}</div>')
    ev = run.summary.get("eval") or {}
    if ev:
        scalars = {k: v for k, v in ev.items() if isinstance(v, (int, float))}
        base = run.summary.get("baseline") or {}  # a cls run's TF-IDF baseline on the same split (data/baseline.py)
        baseline_row = (f"<tr id=baseline><td>{escape(str(base.get('method', 'baseline')))}</td>" + "".join(
            f"<td class=num>{_num(base.get(k))}</td>" for k in scalars) + "</tr>") if base else ""
        body.append("<h3>Held-out evaluation</h3><table id=metrics><tr><th></th>" + "".join(
            f"<th>{escape(k)}</th>" for k in scalars) + "</tr><tr><td>this run</td>" +
            "".join(f"<td class=num>{_num(v)}</td>" for v in scalars.values()) + f"</tr>{baseline_row}</table>")
        per_class = {k: v for k, v in (ev.get("per_class") or {}).items() if isinstance(v, dict)}
        if per_class:
            cols = sorted({k for v in per_class.values() for k in v})
            head = "".join(f"<th>{escape(c)}</th>" for c in cols)
            rows = "".join(f"<tr><td>{escape(name)}</td>"
                           + "".join(f"<td class=num>{_num(v.get(c))}</td>" for c in cols) + "</tr>"
                           for name, v in per_class.items())
            body.append(f"<table class=sortable id=per-class><thead><tr><th>class</th>{head}</tr></thead><tbody>{rows}"
                        "</tbody></table>")
        cm = ev.get("confusion_matrix")
        if isinstance(cm, dict) and cm.get("labels"):
            labels = cm["labels"]
            body.append("<p>confusion matrix (rows: gold, columns: predicted)</p><table><tr><th></th>" + "".join(
                f"<th>{escape(str(x))}</th>" for x in labels) + "</tr>" + "".join(
                f"<tr><th>{escape(str(labels[i]))}</th>" + "".join(f"<td class=num>{v}</td>" for v in row) + "</tr>"
                for i, row in enumerate(cm.get("matrix") or [])) + "</table>")
    body.append("<h3>Commands</h3><table>" + "".join(
        f"<tr><td>{escape(k)}</td><td><code>{escape(v)}</code></td></tr>" for k, v in commands(run)) + "</table>")
    body.append(f"<h3>Config (ftkit.yaml)</h3><pre id=config>{escape(yaml.safe_dump(run.config, sort_keys=False))}"
                "</pre>")
    card = run.path / layout.CARD
    if card.is_file():
        body.append(f"<h3>Model card</h3><pre>{escape(card.read_text(encoding='utf-8', errors='replace'))}</pre>")
    body.append("<h3>Files</h3><table>" + "".join(f"<tr><td>{escape(n)}</td><td class=num>{size:,}</td></tr>"
                                                   for n, size in files) + "</table>")
    return page(f"Run {run.path.name}", "".join(body), allow_launch)


def compare_page(runs: list[Run], allow_launch: bool) -> str:
    names = [f"{r.path.name} ({r.key})" if sum(x.path.name == r.path.name for x in runs) > 1 else r.path.name
             for r in runs]
    per = [curves(r) for r in runs]
    charts = [line_chart("train loss", {n: c["loss"].get("train loss", []) for n, c in zip(names, per)}),
              line_chart("eval loss", {n: c["loss"].get("eval loss", []) for n, c in zip(names, per)})]
    metrics = sorted({m for c in per for m in c["evaluation"]})
    charts += [line_chart(m, {n: c["evaluation"].get(m, []) for n, c in zip(names, per)}) for m in metrics]
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f if k != "output"})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    head = "<tr><th>key</th>" + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    diff = "".join(f"<tr><td>{escape(k)}</td>" + "".join(f"<td>{escape(json.dumps(f.get(k)))}</td>" for f in flat)
                   + "</tr>" for k in differ) or f'<tr><td colspan="{len(runs) + 1}">the configs are the same</td></tr>'
    scal = sorted({k for r in runs for k, v in (r.summary.get("eval") or {}).items() if isinstance(v, (int, float))})
    rows = [("status", [r.status for r in runs]), ("steps", [r.steps for r in runs]),
            ("seconds", [r.seconds for r in runs])] + \
        [(k, [(r.summary.get("eval") or {}).get(k) for r in runs]) for k in scal] + \
        [("trainable params", [(r.summary.get("train") or {}).get("trainable_params") for r in runs])]
    side = "".join(f"<tr><td>{escape(k)}</td>" + "".join(f"<td class=num>{_num(v)}</td>" for v in vs) + "</tr>"
                   for k, vs in rows)
    body = (f"<p>{' · '.join(run_link(r) for r in runs)}</p><h3>Curves</h3><div class=charts>{''.join(charts)}</div>"
            f"<h3>Config: the keys that differ</h3><table class=diff id=diff>{head}{diff}</table>"
            f"<h3>Metrics</h3><table id=side>{head}{side}</table>")
    return page(f"Compare {len(runs)} runs", body, allow_launch)


def sweep_page(sweep: Sweep, trial_keys: dict[str, str], allow_launch: bool) -> str:
    params = list((sweep.plan.get("params") or {}).keys()) or sorted(
        {k for r in sweep.leaderboard for k in (r.get("params") or {})})
    head = "<tr><th>rank</th><th>trial</th>" + "".join(f"<th>{escape(p)}</th>" for p in params) + \
        "<th>metric</th><th>value</th><th>trainable params</th><th>seconds</th><th>status</th></tr>"
    rows = []
    for i, r in enumerate(sweep.leaderboard, 1):
        trial = str(r.get("trial", ""))
        link = f'<a href="/run/{quote(trial_keys[trial])}">{escape(trial)}</a>' if trial in trial_keys else \
            escape(trial)
        done = r.get("status") == "done"
        rows.append(f"<tr><td>{i if done else ''}</td><td>{link}</td>" + "".join(
            f"<td>{escape(str((r.get('params') or {}).get(p, '')))}</td>" for p in params) +
            f"<td>{escape(str(r.get('metric', '')))}</td><td class=num>{_num(r.get('value'))}</td>"
            f"<td class=num>{_num(r.get('trainable_params'))}</td><td class=num>{_num(r.get('seconds'), 1)}</td>"
            f"<td>{escape(str(r.get('status')))}</td></tr>")
    compare = "&".join(f"run={quote(k)}" for k in trial_keys.values())
    body = (f'<p><a href="/compare?{compare}">compare all trials</a></p><table class=sortable id=leaderboard>'
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    return page(f"Sweep {sweep.path.name}", body, allow_launch)


def launch_form(recipes: list[str], values: dict, errors: dict) -> str:
    def err(field: str) -> str:
        return f'<div class="error" id="error-{field}">{escape(errors[field])}</div>' if field in errors else ""

    options = "".join(f'<option{" selected" if r == values.get("recipe") else ""}>{escape(r)}</option>'
                      for r in recipes)
    body = ('<form method="post" action="/launch">'
            f'<label>recipe <select name="recipe" id="recipe">{options}</select></label>{err("recipe")}'
            f'<label>run name (a new dir in the first folder) <input type="text" name="output" id="output" '
            f'value="{escape(values.get("output", ""))}"></label>{err("output")}'
            '<label>overrides, one <code>key=value</code> a line (as <code>--set</code>): '
            f'<br><textarea name="overrides" id="overrides" rows="8">{escape(values.get("overrides", ""))}</textarea>'
            f'</label>{err("overrides")}<button type="submit" id="start">start</button></form>')
    return page("Launch a run", body, allow_launch=True)


def job_page(job_id: str, command: list[str]) -> str:
    body = (f"<p>status: <b id=job-status>…</b> <span id=job-run></span></p><p><code>{escape(shlex.join(command))}"
            f"</code></p><form method=post action=\"/jobs/{escape(job_id)}/stop\"><button id=stop>stop (SIGTERM: "
            f"checkpoint, resumable)</button></form><pre id=log data-src=\"/api/jobs/{escape(job_id)}/log\"></pre>")
    return page(f"Job {job_id}", body, allow_launch=True)
