"""report.html: one self-contained file (inline CSS and SVG, no scripts, nothing fetched) for a browser."""

from __future__ import annotations

import json
from collections.abc import Iterable
from html import escape

from compress.report.plots import all_plots
from compress.report.sections import (
    TextTable,
    classification_tables,
    confusion_omitted,
    contention_note,
    dataset_items,
    detail_stages,
    load_item,
    timing_items,
)
from compress.report.table import (
    STEP_MEMORY_NOTE,
    batch_sizes_of,
    has_step_memory,
    problem_stages,
    reference_stage,
    stage_headers,
    status_text,
    table_rows,
)
from compress.result import RunReport, StageResult

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1.5rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #dde2ea; padding-bottom: .2rem; }
.meta { color: #4d5566; margin: 0; } .meta b { color: #1d2330; }
.stopped { background: #fff4e5; border-left: 4px solid #e67e22; padding: .5rem .8rem; margin: 1rem 0; }
.contention { background: #fdf6d8; border-left: 4px solid #c9a200; padding: .5rem .8rem; margin: 1rem 0;
              font-size: .9rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
table.compact { width: auto; } table.compact td.num { min-width: 3.5rem; }
td.diagonal { background: #e3f4ea; font-weight: 600; }
dl.env { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; font-size: .9rem; }
dl.env dt { font-weight: 600; }
dl.env dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85rem; width: 100%; }
th, td { padding: .35rem .55rem; border-bottom: 1px solid #e5e8ee; text-align: left; vertical-align: top; }
th { background: #f3f5f9; position: sticky; top: 0; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.status-gate_failed td { background: #fff7e6; } tr.status-failed td { background: #fdecea; }
tr.status-not_evaluated td { background: #f4f4f4; color: #666; }
tr.reference td:first-child { font-weight: 600; }
.badge { display: inline-block; white-space: nowrap; padding: 0 .45rem; border-radius: .6rem;
         font-size: .75rem; }
.badge.ok { background: #e3f4ea; color: #1e6b3c; }
.badge.gate_failed { background: #ffe9c2; color: #8a5300; }
.badge.failed { background: #fbd5d0; color: #8e1c10; }
.badge.not_evaluated { background: #e6e6e6; color: #444; }
details { margin: .8rem 0; font-size: .9rem; } summary { cursor: pointer; color: #4d5566; }
ul.problems li { margin-bottom: .35rem; } .note { color: #4d5566; font-size: .85rem; }
figure { margin: 1.2rem 0 2rem; } figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #4d5566; font-size: .85rem; margin-top: .3rem; }
"""


def html_table(stages: list[StageResult]) -> str:
    sizes = batch_sizes_of(stages)
    reference = reference_stage(stages)
    headers = stage_headers(stages, sizes)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for stage, row in zip(stages, table_rows(stages, sizes), strict=True):
        classes = [f"status-{stage.status}"] + (["reference"] if stage is reference else [])
        cells = []
        for index, cell in enumerate(row):
            text = escape(cell.text)
            if index == 2:
                text = f'<span class="badge {escape(stage.status)}">{text}</span>'
            cells.append(f'<td class="num">{text}</td>' if cell.numeric else f"<td>{text}</td>")
        body.append(f'<tr class="{" ".join(classes)}">{"".join(cells)}</tr>')
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def render_html(report: RunReport) -> str:
    reference = reference_stage(report.stages)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>compress report: {escape(report.recipe)}</title><style>{STYLE}</style></head><body>",
        f"<h1>compress report: {escape(report.recipe)}</h1>",
        f'<p class="meta"><b>Date</b> {escape(report.created)} · <b>Output</b> {escape(report.output_dir)}</p>',
    ]
    items = [*timing_items(report), *filter(None, [load_item(report)])]
    parts.append('<p class="meta">' + " · ".join(f"<b>{escape(k)}</b> {escape(v)}" for k, v in items) + "</p>")
    parts.append(f"<details><summary>Environment</summary>{_definitions(report.environment.items())}</details>")
    if report.dataset is not None:
        parts.append(f"<details open><summary>Data</summary>{_definitions(dataset_items(report.dataset))}</details>")
    if report.stopped:
        parts.append(f'<div class="stopped"><b>Stopped early:</b> {escape(report.stopped)}</div>')
    note = contention_note(report)
    if note:
        parts.append(f'<div class="contention"><b>Measured under contention.</b> {escape(note)}</div>')
    parts += ["<h2>Stages</h2>", html_table(report.stages)]
    ref_name = escape(reference.name) if reference is not None else "none (no stage was timed)"
    parts.append(
        f'<p class="note">Reference stage: <b>{ref_name}</b>. '
        "Δ is the primary metric minus the reference's; speedup is throughput over the reference's "
        "at the same batch size. Agreement is the share of "
        "predictions equal to the source stage's; step time is how long the step or export took."
        + (f" {escape(STEP_MEMORY_NOTE)}" if has_step_memory(report.stages) else "")
        + "</p>"
    )
    problems = problem_stages(report.stages)
    if problems:
        parts.append('<h2>Needs attention</h2><ul class="problems">')
        for stage in problems:
            message = escape(stage.message) if stage.message else "no message recorded"
            parts.append(
                f"<li><b>{escape(stage.name)}</b> ({escape(stage.kind)}, {escape(status_text(stage))}): {message}</li>"
            )
        parts.append("</ul>")
    if report.classification is not None:
        parts += _classification(report)
    charts = all_plots(report.stages)
    if charts:
        parts.append("<h2>Charts</h2>")
    for title, caption, svg in charts:
        # The SVG comes from matplotlib, which XML-escapes every text it draws (stage names included).
        parts.append(f"<figure><h3>{escape(title)}</h3>{svg}<figcaption>{escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _definitions(items: Iterable[tuple[str, object]]) -> str:
    rows = []
    for key, value in items:
        shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        rows.append(f"<dt>{escape(str(key))}</dt><dd>{escape(shown)}</dd>")
    return f'<dl class="env">{"".join(rows)}</dl>'


def _classification(report: RunReport) -> list[str]:
    assert report.classification is not None
    labels = ", ".join(report.classification.label_names)
    parts = [
        "<h2>Per-class figures</h2>",
        f'<p class="note">Labels (in id order): {escape(labels)}. Computed from each stage\'s predictions.</p>',
    ]
    for table in classification_tables(report.classification, detail_stages(report)):
        parts += [f"<h3>{escape(table.title)}</h3>", _text_table(table)]
    omitted = confusion_omitted(report.classification)
    if omitted:
        parts.append(f'<p class="note">{escape(omitted)}</p>')
    return parts


def _text_table(table: TextTable) -> str:
    confusion = table.confusion
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = []
    for r, row in enumerate(table.rows):
        cells = []
        for c, text in enumerate(row):
            if c < table.numeric_from:
                cells.append(f"<th>{escape(text)}</th>" if confusion else f"<td>{escape(text)}</td>")
                continue
            # The diagonal of a confusion matrix is the correctly classified rows.
            kind = "num diagonal" if confusion and c - table.numeric_from == r else "num"
            cells.append(f'<td class="{kind}">{escape(text)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    inner = f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
    return f'<div class="table-wrap"><table class="compact">{inner}</table></div>'
