"""The eval report on its own: one self-contained HTML file where everything from the data or a model is
escaped, and the terminal table's deltas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from tunegate.migration import eval as ev
from tunegate.migration import graders as gr
from tunegate.migration.report import html, table

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def doc(tmp_path: Path) -> dict[str, Any]:
    data = tmp_path / "golden.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    items, skipped = ev.read_items(data)
    graders = gr.defaults(None)
    samples = {}
    for label, text in (("A", "yo"), ("B", HOSTILE)):
        s = ev.Sample(text)
        ns = {"item": items[0].variables, "sample": s.namespace()}
        s.scores = {g.name: g.grade(ns, None) for g in graders}
        samples[label] = [s]
    contenders = [ev.Contender("A", "old-model"), ev.Contender("B", HOSTILE)]
    return ev.document("eval_1", data, items, skipped, contenders, graders, samples, {"temperature": 0}, None)


def test_html_report_escapes_and_needs_nothing_else(tmp_path: Path) -> None:
    page = html(doc(tmp_path))
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    assert "<link" not in page and "href=" not in page  # nothing loaded from anywhere else
    assert "1 item(s)" in page and "exact" in page and "old-model" in page


def test_terminal_table_has_the_delta(tmp_path: Path) -> None:
    console = Console(width=200, record=True)
    console.print(table(doc(tmp_path)))
    text = console.export_text()
    assert "Δ B−A" in text and "-1.000" in text and "pass 1/1" in text and "pass 0/1" in text
