"""Gates: stop a recipe when a stage worsens the primary metric past the user's limit, or when a compressed stage
runs slower than the limit allows relative to its source."""

from __future__ import annotations

from compress.result import StageResult


def metric_drop(reference: float, value: float, higher_is_better: bool) -> float:
    """How much worse `value` is than `reference`, in the metric's units (negative: it got better)."""
    return reference - value if higher_is_better else value - reference


def worsening(result: StageResult, reference: StageResult) -> float | None:
    """How much worse `result` is than `reference` on the primary metric (positive = worse)."""
    if result.primary is None or reference.primary is None:
        return None
    return metric_drop(reference.primary, result.primary, result.higher_is_better)


def check_gate(result: StageResult, reference: StageResult, limit: float | None, what: str) -> str | None:
    """A message when the gate fails, else None."""
    if limit is None:
        return None
    drop = worsening(result, reference)
    if drop is None or drop <= limit + 1e-12:
        return None
    metric = result.primary_metric
    return (
        f"gate failed: {what} — '{result.name}' {metric} {result.primary:.4f} vs '{reference.name}' "
        f"{reference.primary:.4f}: worse by {drop:.4f}, limit {limit:.4f}"
    )


def speedup(result: StageResult, source: StageResult) -> tuple[float, int] | None:
    """Throughput of `result` over `source` at the largest batch size both measured, with that batch size."""
    common = sorted(set(result.latency) & set(source.latency), key=int)
    if not common:
        return None
    batch = common[-1]
    before, after = source.latency[batch].throughput_per_s, result.latency[batch].throughput_per_s
    return (after / before, int(batch)) if before > 0 else None


def check_speed(result: StageResult, source: StageResult, minimum: float | None) -> str | None:
    """A message when `result` is below `minimum` times its source's throughput (e.g. OpenVINO INT8 running
    slower than FP32 on a CPU without VNNI), else None."""
    if minimum is None or result.status != "ok":
        return None
    measured = speedup(result, source)
    if measured is None or measured[0] >= minimum:
        return None
    ratio, batch = measured
    return (
        f"speed gate (gates.min_speedup {minimum:g}): '{result.name}' on {result.runtime} runs {ratio:.2f}x "
        f"'{source.name}' at batch {batch}"
    )
