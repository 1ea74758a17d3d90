"""Accuracy gates: stop a recipe when a stage worsens the primary metric past the user's limit."""

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
