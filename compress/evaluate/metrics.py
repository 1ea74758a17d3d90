"""Task metrics: plain functions of (model outputs, targets) that know which direction is better.

Built-ins are registered in `compress.registry.METRICS` through the `compress.metrics` entry points
(pyproject.toml), the same path third-party metrics take. Their signatures:

- text classification: `fn(logits (N, C) float, labels (N,) int) -> float`
- causal LM: `fn(window_mean_nll (W,) float, window_token_counts (W,) int) -> float`

A metric declares the task whose outputs it reads (`@metric(task=...)`); it applies to every task whose adapter
names that task as its `metric_task`. One that declares none is taken as a text-classification metric. A name
that is not registered falls back to Hugging Face `evaluate.load(name)` for tasks whose adapter allows it
(`TaskAdapter.hub_metrics`: text classification), which needs the hub or a local metric script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import numpy as np

from compress.config import Task
from compress.errors import ConfigError
from compress.registry import METRICS
from compress.tasks import get_task

MetricFn = Callable[[np.ndarray, np.ndarray], float]
F = TypeVar("F", bound=Callable[..., float])

# The task of metrics that do not declare one (third-party metrics written before tasks were declared).
UNDECLARED_TASK = "text-classification"
# Hub metrics whose smaller values are better; every other hub metric is taken as higher-is-better.
_LOWER_IS_BETTER_HUB_METRICS = frozenset({"mse", "mae", "wer", "cer", "ter", "perplexity", "brier_score"})


def metric(*, higher_is_better: bool, task: Task) -> Callable[[F], F]:
    """Mark a function as a metric: which way is better, and which task's outputs it reads."""

    def mark(fn: F) -> F:
        fn.higher_is_better = higher_is_better  # type: ignore[attr-defined]
        fn.task = task  # type: ignore[attr-defined]
        return fn

    return mark


def _confusion(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confusion matrix, rows = true label, columns = predicted label."""
    predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(labels, dtype=np.int64)
    classes = max(np.asarray(logits).shape[-1], int(labels.max(initial=0)) + 1)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


@metric(higher_is_better=True, task="text-classification")
def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose argmax equals the label."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0.0
    return float(np.mean(np.asarray(logits).argmax(axis=-1) == labels))


@metric(higher_is_better=True, task="text-classification")
def f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of class 1 for two-label models, else macro F1 over the labels in data or predictions."""
    matrix = _confusion(logits, labels)
    true_pos = np.diag(matrix).astype(np.float64)
    false_pos = matrix.sum(axis=0) - true_pos
    false_neg = matrix.sum(axis=1) - true_pos
    denominators = 2 * true_pos + false_pos + false_neg
    per_class = np.divide(2 * true_pos, denominators, out=np.zeros_like(true_pos), where=denominators > 0)
    if np.asarray(logits).shape[-1] == 2:
        return float(per_class[1])
    # As scikit-learn: classes absent from both labels and predictions are left out of the mean.
    present = denominators > 0
    return float(per_class[present].mean()) if present.any() else 0.0


@metric(higher_is_better=True, task="text-classification")
def matthews_correlation(logits: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (Gorodkin's multi-class form, the usual one for two classes); 0 if undefined."""
    matrix = _confusion(logits, labels).astype(np.float64)
    samples = matrix.sum()
    correct = np.trace(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    covariance = correct * samples - predicted @ actual
    denominator = np.sqrt((samples**2 - predicted @ predicted) * (samples**2 - actual @ actual))
    return float(covariance / denominator) if denominator > 0 else 0.0


@metric(higher_is_better=False, task="causal-lm")
def perplexity(window_mean_nll: np.ndarray, window_token_counts: np.ndarray) -> float:
    """exp of the mean negative log-likelihood over every scored token (windows weighted by their tokens)."""
    counts = np.asarray(window_token_counts, dtype=np.float64)
    if counts.sum() == 0:
        return float("nan")
    return float(np.exp(np.sum(np.asarray(window_mean_nll, dtype=np.float64) * counts) / counts.sum()))


@dataclass(frozen=True)
class ResolvedMetric:
    name: str
    fn: MetricFn
    higher_is_better: bool
    task: Task

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        return float(self.fn(outputs, targets))


def resolve_metric(name: str, task: Task, *, where: str = "evaluate.metric") -> ResolvedMetric:
    """The registered metric `name`, or a Hugging Face `evaluate` one; ConfigError if neither fits `task`."""
    adapter = get_task(task)
    if name in METRICS.names():
        fn = METRICS.get(name, where=where)
        metric_task = getattr(fn, "task", UNDECLARED_TASK)
        if metric_task != adapter.metric_task:
            suitable = [n for n, f in METRICS if getattr(f, "task", UNDECLARED_TASK) == adapter.metric_task]
            raise ConfigError(
                f"metric '{name}' is for {metric_task} models, but this model is {task}",
                where=where,
                fix=f"use one of: {', '.join(suitable)}",
            )
        return ResolvedMetric(name, fn, bool(getattr(fn, "higher_is_better", True)), metric_task)
    if not adapter.hub_metrics:
        raise ConfigError(
            f"unknown metric '{name}' for {task} models",
            where=where,
            fix=f"use one of the built-in metrics: {', '.join(METRICS.names())}",
        )
    return ResolvedMetric(name, _hub_metric(name, where), name not in _LOWER_IS_BETTER_HUB_METRICS, task)


def _hub_metric(name: str, where: str) -> MetricFn:
    module = _load_hub_module(name, where)

    def compute(logits: np.ndarray, labels: np.ndarray) -> float:
        result: dict[str, Any] = module.compute(
            predictions=np.asarray(logits).argmax(axis=-1).tolist(), references=np.asarray(labels).tolist()
        )
        if name in result:
            return float(result[name])
        if len(result) == 1:
            return float(next(iter(result.values())))
        raise ConfigError(
            f"metric '{name}' returned several values ({', '.join(result)}), not one score",
            where=where,
            fix="use a metric that returns a single number",
        )

    return compute


@cache
def _load_hub_module_cached(name: str) -> Any:
    import evaluate  # heavy (pulls in datasets): only imported for metrics that are not built in

    return evaluate.load(name)


def _load_hub_module(name: str, where: str) -> Any:
    try:
        return _load_hub_module_cached(name)
    except Exception as exc:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, …
        raise ConfigError(
            f"unknown metric '{name}': not built in, and Hugging Face evaluate.load('{name}') failed ({exc})",
            where=where,
            fix=f"use a built-in metric ({', '.join(METRICS.names())}), or a hub metric name with network "
            "access (or the path of a local evaluate metric script)",
        ) from exc
