"""report.md: the run's header, the stage table and the stages that need attention, as GitHub Markdown."""

from __future__ import annotations

import json
from typing import Any

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


def md_escape(text: str) -> str:
    """Keep user text (stage names, error messages) literal inside a table cell or list item."""
    text = " ".join(str(text).split())  # a newline would end the table row
    # Only what changes the rendering of a cell; `_` inside words (dynamic_int8) is literal in GFM anyway.
    for char in ("\\", "|", "<", "`", "*"):
        text = text.replace(char, "\\" + char)
    return text


def stage_table(stages: list[StageResult], batch_sizes: list[int] | None = None) -> str:
    """A Markdown table with one row per stage (columns: see `compress.report.table.table_headers`)."""
    sizes = batch_sizes if batch_sizes is not None else batch_sizes_of(stages)
    headers = stage_headers(stages, sizes)
    rows = [[cell.text for cell in row] for row in table_rows(stages, sizes)]
    return md_table(headers, rows, numeric_from=4)


def md_table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """A GitHub Markdown table; columns from `numeric_from` on are right-aligned (figures)."""
    lines = [
        "| " + " | ".join(md_escape(h) for h in headers) + " |",  # "max |Δlogit|" must not split a column
        "|" + "|".join("---:" if i >= numeric_from else "---" for i in range(len(headers))) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(md_escape(cell) for cell in row) + " |")
    return "\n".join(lines)


def environment_lines(environment: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in environment.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        lines.append(f"- **{md_escape(key)}**: {md_escape(shown)}")
    return lines


def render_markdown(report: RunReport) -> str:
    reference = reference_stage(report.stages)
    lines = [
        f"# compress report: {md_escape(report.recipe)}",
        "",
        f"- **Date**: {md_escape(report.created)}",
        f"- **Output**: {md_escape(report.output_dir)}",
    ]
    items = [*timing_items(report), *filter(None, [load_item(report)])]
    lines += [f"- **{label}**: {md_escape(text)}" for label, text in items]
    if report.stopped:
        lines.append(f"- **Stopped early**: {md_escape(report.stopped)}")
    lines += ["", "## Environment", "", *environment_lines(report.environment)]
    if report.dataset is not None:
        lines += ["", "## Data", ""]
        lines += [f"- **{label}**: {md_escape(text)}" for label, text in dataset_items(report.dataset)]
    lines += ["", "## Stages", "", stage_table(report.stages)]
    lines += ["", _reading_guide(reference) + (f" {STEP_MEMORY_NOTE}" if has_step_memory(report.stages) else "")]
    note = contention_note(report)
    if note:
        lines += ["", f"> **Measured under contention.** {md_escape(note)}"]
    problems = problem_stages(report.stages)
    if problems:
        lines += ["", "## Needs attention", ""]
        for stage in problems:
            message = md_escape(stage.message) if stage.message else "no message recorded"
            lines.append(f"- **{md_escape(stage.name)}** ({stage.kind}, {status_text(stage)}): {message}")
    if report.classification is not None:
        lines += ["", *_classification_lines(report)]
    return "\n".join(lines) + "\n"


def _classification_lines(report: RunReport) -> list[str]:
    assert report.classification is not None
    labels = ", ".join(md_escape(name) for name in report.classification.label_names)
    lines = ["## Per-class figures", "", f"Labels (in id order): {labels}. Computed from each stage's predictions."]
    tables: list[TextTable] = classification_tables(report.classification, detail_stages(report))
    for table in tables:
        lines += ["", f"### {md_escape(table.title)}", "", md_table(table.headers, table.rows, table.numeric_from)]
    omitted = confusion_omitted(report.classification)
    if omitted:
        lines += ["", md_escape(omitted)]
    return lines


def _reading_guide(reference: StageResult | None) -> str:
    ref = f"**{md_escape(reference.name)}**" if reference is not None else "none (no stage was timed)"
    return (
        f"Reference stage: {ref}. Δ is the primary metric minus the reference's; speedup is throughput over "
        "the reference's at the same batch size. Agreement is the share of predictions equal to the source "
        "stage's; step time is how long the step or export took (cached stages: the original time)."
    )
