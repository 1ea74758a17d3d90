"""The report's sections beside the stage table, as plain text rows that report.md and report.html both render:
timing, machine load, the dataset, and the per-class classification figures."""

from __future__ import annotations

from dataclasses import dataclass

from compress.report.table import fmt_number, reference_stage
from compress.result import ClassificationReport, DatasetSummary, RunReport, StageClassification

# A confusion matrix wider than this is unreadable in a page; report.json keeps it in full.
CONFUSION_LIMIT = 20


@dataclass
class TextTable:
    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric_from: int = 1  # columns from this index on are figures (right-aligned)
    confusion: bool = False  # a confusion matrix: rows and columns are labels, the diagonal is the correct rows


def timing_items(report: RunReport) -> list[tuple[str, str]]:
    """(label, text) lines for the header: compute time, and this invocation's wall time apart from it."""
    if report.wall_duration_s is None:  # a report from before compute and wall time were told apart
        return [("Total time", f"{fmt_number(report.total_duration_s)} s")]
    cached = sum(1 for stage in report.stages if stage.cached)
    reuse = f", {cached} of {len(report.stages)} stages cached" if cached else ""
    return [
        (
            "Compute time",
            f"{fmt_number(report.total_duration_s)} s (every stage's step and evaluation; cached stages at the time "
            "they originally took)",
        ),
        ("This run's wall time", f"{fmt_number(report.wall_duration_s)} s{reuse}"),
    ]


def load_item(report: RunReport) -> tuple[str, str] | None:
    load = report.machine_load
    if load is None:
        return None
    start, end = (f"{v:.2f}" if v is not None else "unknown" for v in (load.load_1m_start, load.load_1m_end))
    threads = f"{load.threads} evaluation thread{'s' if load.threads != 1 else ''}"
    return "Machine load", f"1-min load average {start} at start, {end} at end; {load.cpu_count} CPUs, {threads}"


def contention_note(report: RunReport) -> str | None:
    """A warning naming the stages whose latencies were measured while other work competed for the CPU."""
    load = report.machine_load
    flagged = []
    for stage in report.stages:
        if not stage.latency:
            continue
        recorded = stage.measured_under_load
        # Stages recorded before the flag existed: this run's verdict, unless they were measured in an earlier run.
        if recorded or (recorded is None and not stage.cached and load is not None and load.contended):
            others = stage.cpu_used_by_others
            flagged.append(stage.name if others is None else f"{stage.name} (others: {others:.1f} cores)")
    if not flagged:
        return None
    return (
        f"The latencies of {', '.join(flagged)} were measured while other processes kept busy more than the cores "
        "this run left free. Their timings and speedups may be slower and noisier than on an idle machine; re-run "
        "with --fresh there to trust them."
    )


def dataset_items(summary: DatasetSummary) -> list[tuple[str, str]]:
    if isinstance(summary.path, dict):
        path = ", ".join(f"{split}: {p}" for split, p in summary.path.items())
    else:
        path = summary.path
    columns = f"text: {summary.text}"
    if summary.text_pair:
        columns += f", text pair: {summary.text_pair}"
    if summary.label:
        columns += f", label: {summary.label}"
    eval_rows = f"{summary.eval_rows:,}" if summary.eval_rows is not None else "unknown"
    if summary.train_rows is not None:
        train_rows = f"{summary.train_rows:,} (split {summary.train_split})"
    else:
        train_rows = f"none (no stage read split {summary.train_split})"
    items = [
        ("Path", path + (f" (configuration {summary.name})" if summary.name else "")),
        ("Columns", columns),
        ("Evaluation rows", f"{eval_rows} (split {summary.eval_split})"),
        ("Training rows", train_rows),
    ]
    if summary.calibration_split:
        items.append(("Calibration split", summary.calibration_split))
    return items


def detail_stages(report: RunReport) -> list[StageClassification]:
    """The stages whose per-class figures are shown in full: the baseline, the reference (after a finetune,
    the trained model), and the final one; report.json has every stage."""
    figures = report.classification.stages if report.classification else []
    by_name = {entry.stage: entry for entry in figures}
    reference = reference_stage(report.stages)
    wanted = ["baseline", reference.name if reference is not None else None, figures[-1].stage if figures else None]
    chosen: list[StageClassification] = []
    for name in wanted:
        if name in by_name and by_name[name] not in chosen:
            chosen.append(by_name[name])
    return chosen


def classification_tables(classification: ClassificationReport, shown: list[StageClassification]) -> list[TextTable]:
    """Per-class precision / recall / F1 of the shown stages, F1 per class of every stage (when there are more),
    and the shown stages' confusion matrices (up to CONFUSION_LIMIT classes)."""
    labels = classification.label_names
    tables = []
    headers = ["Label", "Support", *(f"{entry.stage} P / R / F1" for entry in shown)]
    rows = []
    for i, label in enumerate(labels):
        row = [label, f"{shown[0].per_class[i].support:,}" if shown else "–"]
        for entry in shown:
            figures = entry.per_class[i]
            row.append(f"{figures.precision:.3f} / {figures.recall:.3f} / {figures.f1:.3f}")
        rows.append(row)
    tables.append(TextTable("Per-class precision / recall / F1", headers, rows))
    if len(classification.stages) > len(shown):
        headers = ["Label", *(entry.stage for entry in classification.stages)]
        rows = [
            [label, *(f"{entry.per_class[i].f1:.3f}" for entry in classification.stages)]
            for i, label in enumerate(labels)
        ]
        tables.append(TextTable("F1 per class, every stage", headers, rows))
    if len(labels) <= CONFUSION_LIMIT:
        for entry in shown:
            headers = ["true \\ predicted", *labels]
            rows = [[label, *(f"{n:,}" for n in entry.confusion_matrix[i])] for i, label in enumerate(labels)]
            tables.append(TextTable(f"Confusion matrix: {entry.stage}", headers, rows, confusion=True))
    return tables


def confusion_omitted(classification: ClassificationReport) -> str | None:
    if len(classification.label_names) <= CONFUSION_LIMIT:
        return None
    return (
        f"{len(classification.label_names)} classes: the confusion matrices are in report.json "
        f"(`classification.stages[].confusion_matrix`), too wide to show here."
    )
