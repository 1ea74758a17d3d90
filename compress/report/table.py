"""The stage table shared by report.md and report.html: which stage is the reference, and each cell's text.

Speedups are throughput ratios against the *reference stage*: the first non-export stage whose
`metric_delta` is exactly 0.0 (the runner measures every delta against the reference, so the reference's own
delta is 0.0 — after a finetune step that is the finetuned model, otherwise the baseline). When no stage has a
delta, the first baseline stage is the reference; failing that, the first stage that has latency figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.result import LatencyStats, StageResult

STATUS_TEXT = {"ok": "ok", "gate_failed": "gate failed", "failed": "failed", "not_evaluated": "not evaluated"}
STEP_MEMORY_NOTE = (
    "Step peak mem is the process RSS while the step or export ran (with, in brackets, the peak memory PyTorch "
    "allocated on the GPU), apart from peak mem, which is the evaluation's."
)


def reference_stage(stages: list[StageResult]) -> StageResult | None:
    """The stage speedups are measured against (rule in the module docstring)."""
    for stage in stages:
        if stage.kind != "export" and stage.metric_delta == 0.0:
            return stage
    for stage in stages:
        if stage.kind == "baseline":
            return stage
    return next((s for s in stages if s.latency), None)


def batch_sizes_of(stages: list[StageResult]) -> list[int]:
    return sorted({int(bs) for stage in stages for bs in stage.latency})


def latency_at(stage: StageResult, batch_size: int) -> LatencyStats | None:
    return stage.latency.get(str(batch_size))


def speedup(stage: StageResult, reference: StageResult | None, batch_size: int) -> float | None:
    """Throughput of `stage` over the reference's at one batch size; None where either was not timed."""
    mine = latency_at(stage, batch_size)
    theirs = latency_at(reference, batch_size) if reference is not None else None
    if mine is None or theirs is None or theirs.throughput_per_s <= 0:
        return None
    return mine.throughput_per_s / theirs.throughput_per_s


def fmt_number(value: float | None, digits: int = 3) -> str:
    """Three significant figures without exponent noise for the magnitudes a report shows."""
    if value is None:
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10**digits:
        return f"{value:,.0f}"
    if magnitude >= 1e-3:
        decimals = max(0, digits - 1 - int(_floor_log10(magnitude)))
        return f"{value:.{decimals}f}"
    return f"{value:.1e}"


def _floor_log10(value: float) -> int:
    import math

    return math.floor(math.log10(value))


def fmt_metric(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def fmt_delta(value: float | None, metric: float) -> str:
    """A change with the decimals its metric is shown with (accuracy 4, perplexity 2)."""
    if value is None:
        return ""
    return f"{value:+.4f}" if abs(metric) < 10 else f"{value:+.2f}"


def status_text(stage: StageResult) -> str:
    text = STATUS_TEXT.get(stage.status, stage.status)
    return f"{text} (cached)" if stage.cached else text


@dataclass
class Cell:
    text: str
    numeric: bool = False


def has_step_memory(stages: list[StageResult]) -> bool:
    """Whether the table gets a step-memory column (runs recorded before it was measured have none)."""
    return any(stage.step_peak_memory_mb is not None for stage in stages)


def has_sparsity(stages: list[StageResult]) -> bool:
    """Whether the table gets a sparsity column: some stage is pruned (≥ 1 % of its Linear weights are zero)."""
    return any(stage.sparsity and stage.sparsity.get("overall", 0) >= 0.01 for stage in stages)


def extra_metric_names(stages: list[StageResult]) -> list[str]:
    """Every metric a stage has besides its primary one (`evaluate.extra_metrics`, the task's throughput
    figures), in the order they first appear: one table column each."""
    names: dict[str, None] = {}
    for stage in stages:
        for name in stage.metrics:
            if name != stage.primary_metric:
                names.setdefault(name)
    return list(names)


def table_headers(
    batch_sizes: list[int],
    *,
    step_memory: bool = False,
    sparsity: bool = False,
    extra_metrics: list[str] | None = None,
) -> list[str]:
    per_batch: list[str] = []
    for bs in batch_sizes:
        per_batch += [f"bs{bs} P50 / P95 / P99 ms", f"bs{bs} samples/s (speedup)"]
    return [
        "Stage",
        "Kind",
        "Status",
        "Runtime / device",
        "Primary metric (Δ vs ref)",
        *(extra_metrics or []),
        *per_batch,
        "Size MB",
        *(["Sparsity"] if sparsity else []),
        "Peak mem MB",
        *(["Step peak mem MB"] if step_memory else []),
        "Agreement / max |Δlogit|",
        "Step time s",
    ]


def stage_headers(stages: list[StageResult], batch_sizes: list[int]) -> list[str]:
    """The headers of the table `table_rows(stages, batch_sizes)` fills."""
    return table_headers(
        batch_sizes,
        step_memory=has_step_memory(stages),
        sparsity=has_sparsity(stages),
        extra_metrics=extra_metric_names(stages),
    )


def table_rows(stages: list[StageResult], batch_sizes: list[int] | None = None) -> list[list[Cell]]:
    """One row of cell texts per stage, in the order of `stage_headers(stages, sizes)`."""
    sizes = batch_sizes if batch_sizes is not None else batch_sizes_of(stages)
    step_memory = has_step_memory(stages)
    sparsity = has_sparsity(stages)
    extras = extra_metric_names(stages)
    reference = reference_stage(stages)
    rows = []
    for stage in stages:
        row = [
            Cell(stage.name + (" (reference)" if stage is reference else "")),
            Cell(stage.kind),
            Cell(status_text(stage)),
            Cell(_runtime_text(stage)),
            Cell(_metric_text(stage), numeric=True),
            *(Cell(_extra_metric_text(stage.metrics.get(name)), numeric=True) for name in extras),
        ]
        for bs in sizes:
            row += _latency_cells(stage, reference, bs)
        row += [
            Cell(fmt_number(stage.size_mb), numeric=True),
            *([Cell(_sparsity_text(stage), numeric=True)] if sparsity else []),
            Cell(fmt_number(stage.peak_memory_mb), numeric=True),
            *([Cell(_step_memory_text(stage), numeric=True)] if step_memory else []),
            Cell(_fidelity_text(stage), numeric=True),
            Cell(fmt_number(stage.duration_s) if stage.kind != "baseline" else "–", numeric=True),
        ]
        rows.append(row)
    return rows


def _extra_metric_text(value: float | None) -> str:
    # Quality metrics (f1, mcc) keep the primary metric's four decimals; throughput figures read best as such.
    if value is None:
        return "–"
    return fmt_metric(value) if abs(value) < 10 else fmt_number(value)


def _sparsity_text(stage: StageResult) -> str:
    overall = stage.sparsity.get("overall") if stage.sparsity else None
    return "–" if overall is None else f"{overall:.1%}"


def _runtime_text(stage: StageResult) -> str:
    parts = [p for p in (stage.runtime, stage.device) if p]
    text = " / ".join(parts) or "–"
    return f"{text} ×{stage.threads} thr" if stage.threads else text


def _metric_text(stage: StageResult) -> str:
    if stage.primary is None:
        return "–"
    text = f"{stage.primary_metric} {fmt_metric(stage.primary)}"
    if stage.metric_delta is not None:
        text += f" ({fmt_delta(stage.metric_delta, stage.primary)})"
    return text


def _latency_cells(stage: StageResult, reference: StageResult | None, batch_size: int) -> list[Cell]:
    stats = latency_at(stage, batch_size)
    if stats is None:
        return [Cell("–", numeric=True), Cell("–", numeric=True)]
    spread = " / ".join(fmt_number(v) for v in (stats.p50_ms, stats.p95_ms, stats.p99_ms))
    ratio = speedup(stage, reference, batch_size)
    throughput = fmt_number(stats.throughput_per_s)
    if ratio is not None:
        throughput += f" (×{ratio:.2f})"
    return [Cell(spread, numeric=True), Cell(throughput, numeric=True)]


def _step_memory_text(stage: StageResult) -> str:
    text = fmt_number(stage.step_peak_memory_mb)
    if stage.step_peak_cuda_memory_mb is not None:
        text += f" (GPU {fmt_number(stage.step_peak_cuda_memory_mb)})"
    return text


def _fidelity_text(stage: StageResult) -> str:
    parts = []
    if stage.prediction_agreement is not None:
        parts.append(f"{stage.prediction_agreement:.1%}")
    if stage.max_abs_diff is not None:
        parts.append(f"{stage.max_abs_diff:.2g}")
    return " / ".join(parts) or "–"


def problem_stages(stages: list[StageResult]) -> list[StageResult]:
    """Stages a reader must look at: failed gates, failed exports, stages that could not be evaluated."""
    return [s for s in stages if s.status != "ok"]
