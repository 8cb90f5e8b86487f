"""An eval run as a terminal table (rich) and as one self-contained HTML file (inline CSS, no script,
no external link: it opens offline and can be mailed). Every value from the data or a model is escaped."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, select_autoescape
from rich.table import Table
from rich.text import Text

JSON = dict[str, Any]


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _cell(stats: JSON | None) -> Text:
    if not stats:
        return Text("—")
    line = Text(fmt(stats.get("mean")), style="bold")
    if stats.get("pass_rate") is not None:
        line.append(f"  pass {stats['passed']}/{stats['n']}")
    if stats.get("errors"):
        line.append(f"  ({stats['errors']} not graded)", style="red")
    return line


def table(doc: JSON) -> Table:
    models = doc["models"]
    out = Table("grader", *(f"{m['label']}: {m['model']}" + (" (recorded)" if m["source"] == "recorded" else "")
                            for m in models),
                *(["Δ B−A"] if len(models) == 2 else []),
                title=f"{doc['id']} · {doc['data']['items']} item(s) · {doc['data']['path']}", title_justify="left")
    names = [g.get("name") or g.get("type") for g in doc["graders"]]
    for name in names:
        row = [doc["summary"][m["label"]]["graders"].get(name) for m in models]
        cells: list[Any] = [str(name), *(_cell(s) for s in row)]
        if len(models) == 2:
            a, b = (s.get("mean") if s else None for s in row)
            delta = b - a if a is not None and b is not None else None
            cells.append(Text(fmt(delta) if delta is None else f"{delta:+.3f}",
                              style="" if delta is None or abs(delta) < 1e-9 else "green" if delta > 0 else "red"))
        out.add_row(*cells)
    failed = [f"{m['label']}: {doc['summary'][m['label']]['answers']['failed']} without an answer"
              for m in models if doc["summary"][m["label"]]["answers"]["failed"]]
    if failed:
        out.caption = "; ".join(failed)
    return out


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunegate eval {{ doc.id }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { border: 1px solid #d5d9e0; padding: 4px 8px;
  text-align: left; vertical-align: top; } th { background: #f3f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .muted { color: #6b7385; }
.up { color: #137333; } .down { color: #b3261e; } .err { color: #b3261e; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 12px ui-monospace, Menlo, monospace; }
</style></head><body>
<h1>Eval <code>{{ doc.id }}</code></h1>
<p class="muted">{{ doc.data['items'] }} item(s) from <code>{{ doc.data.path }}</code>{% if doc.data.sha256 %}
 (sha256 {{ doc.data.sha256[:12] }}…){% endif %} · created {{ created }} · parameters {{ params }}</p>
<table><thead><tr><th>label</th><th>model</th><th>answers from</th></tr></thead><tbody>
{% for m in doc.models %}<tr><td>{{ m.label }}</td><td><code>{{ m.model }}</code></td>
<td>{% if m.source == 'recorded' %}recorded: {{ m.answers }}{% else %}the gateway{% if m.connection %}
 ({{ m.connection }}){% endif %}{% endif %}</td></tr>{% endfor %}</tbody></table>
<h2>Scores</h2>
<table id="summary"><thead><tr><th>grader</th>{% for m in doc.models %}<th>{{ m.label }}: mean</th>
<th>{{ m.label }}: pass</th><th>{{ m.label }}: not graded</th>{% endfor %}{% if doc.models|length == 2 %}
<th>Δ B−A</th>{% endif %}</tr></thead><tbody>
{% for row in rows %}<tr><td>{{ row.name }} <span class="muted">({{ row.type }})</span></td>
{% for s in row.stats %}<td class="num">{{ fmt(s.mean if s else none) }}</td>
<td class="num">{% if s and s.pass_rate is not none %}{{ s.passed }}/{{ s.n }}{% else %}—{% endif %}</td>
<td class="num">{{ s.errors if s else '—' }}</td>{% endfor %}
{% if row.delta is defined %}<td class="num {{ 'up' if row.delta and row.delta > 0 else 'down' if row.delta and row.delta < 0 else '' }}">
{{ '—' if row.delta is none else '%+.3f'|format(row.delta) }}</td>{% endif %}</tr>{% endfor %}
</tbody></table>
<h2>Graders</h2>
<pre>{{ graders }}</pre>
<h2>Items</h2>
<table id="items"><thead><tr><th>#</th><th>prompt</th><th>reference</th>
{% for m in doc.models %}<th>{{ m.label }}</th>{% endfor %}</tr></thead><tbody>
{% for it in doc['items'] %}<tr><td>{{ it.line }}</td><td><pre>{{ prompt(it.prompt) }}</pre></td>
<td><pre>{{ it.reference if it.reference is not none else '—' }}</pre></td>
{% for m in doc.models %}{% set s = it.samples[m.label] %}<td>
{% if s.error %}<p class="err">{{ s.error }}</p>{% endif %}
{% if s.output_text is not none %}<pre>{{ s.output_text }}</pre>{% endif %}
<p class="muted">{% for name, g in s.scores.items() %}{{ name }}: {% if g.error %}<span class="err">{{ g.error }}</span>
{% else %}{{ fmt(g.score) }}{% if g.detail %} ({{ g.detail }}){% endif %}{% endif %}{% if not loop.last %} · {% endif %}
{% endfor %}</p></td>{% endfor %}</tr>{% endfor %}
</tbody></table>
</body></html>
"""


def _prompt(messages: list[JSON]) -> str:
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", f"[{p.get('type')}]") for p in content if isinstance(p, dict))
        lines.append(f"{m.get('role')}: {content if content is not None else ''}")
    return "\n".join(lines)


def html(doc: JSON) -> str:
    import json
    from datetime import UTC, datetime

    rows = []
    labels = [m["label"] for m in doc["models"]]
    for g in doc["graders"]:
        name = g.get("name") or g.get("type")
        stats = [doc["summary"][label]["graders"].get(name) for label in labels]
        row: JSON = {"name": name, "type": g.get("type"), "stats": stats}
        if len(labels) == 2:
            a, b = (s.get("mean") if s else None for s in stats)
            row["delta"] = b - a if a is not None and b is not None else None
        rows.append(row)
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(_HTML).render(
        doc=doc, rows=rows, fmt=fmt, prompt=_prompt,
        created=datetime.fromtimestamp(doc["created_at"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        params=json.dumps(doc.get("params") or {}), graders=json.dumps(doc["graders"], indent=2))
