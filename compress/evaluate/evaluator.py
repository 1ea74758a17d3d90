"""Measure one runtime on one split: task metrics, latency per batch size, throughput, size, peak memory.

`evaluate` is what the runner records for every stage; `score` is the fast path (metrics only, one pass at
the scoring batch size) that searches such as truncate's length search call many times.

The metric comes from predictions over the whole split at `spec.scoring_batch_size`. When that size is also a
latency batch size, its timed pass is the scoring pass (no second run); if `latency_samples` cuts timing
short, that pass goes on untimed to the end of the split so the metric still covers every row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from compress.config import EvalSpec, Task
from compress.data.text_data import TextData
from compress.errors import ModelError
from compress.evaluate.batching import Batch, batch_count
from compress.evaluate.latency import Reduce, run_pass
from compress.evaluate.memory import MIB, PeakMemory
from compress.evaluate.metrics import ResolvedMetric, resolve_metric
from compress.result import Evaluation, LatencyStats
from compress.runtime.base import Runtime
from compress.tasks import get_task


@dataclass
class _Measured:
    outputs: np.ndarray  # the task's reduced outputs: e.g. logits (N, C), or per-window mean NLL (W,)
    targets: np.ndarray  # what the metrics compare them with: e.g. labels (N,), or scored tokens per window
    latency: dict[str, LatencyStats]
    samples: int  # rows, or windows


def evaluate(
    runtime: Runtime, data: TextData, spec: EvalSpec, *, progress: bool = True
) -> tuple[Evaluation, np.ndarray]:
    """Every measurement of one stage, plus the outputs the runner compares between stages.

    Returns the task's reduced outputs in data order: the logits (N, num_labels) for text classification,
    the per-window mean NLL for causal LM. Peak memory: see `compress.evaluate.memory` (process RSS on CPU,
    CUDA allocator peak).
    """
    began = time.perf_counter()
    threads = _configure_threads(spec)
    metrics = resolve_metrics(spec, runtime.task)
    task = get_task(runtime.task)
    with PeakMemory(runtime.device) as memory:
        measured = _measure(runtime, data, spec, latency_sizes=spec.batch_sizes, progress=progress)
        check_finite(measured.outputs, runtime.name)
        generation = task.generation_metrics(runtime, data, spec)
    values = _compute(metrics, measured)
    values.update(task.throughput_metrics(measured.latency[str(max(spec.batch_sizes))]))
    values.update(generation)
    primary = metrics[0]
    evaluation = Evaluation(
        metrics=values,
        primary_metric=primary.name,
        higher_is_better=primary.higher_is_better,
        latency=measured.latency,
        peak_memory_mb=memory.peak_mb,
        size_mb=runtime.size_bytes() / MIB,
        num_parameters=runtime.num_parameters(),
        sparsity=runtime.sparsity(),
        runtime=runtime.name,
        device=runtime.device,
        threads=threads,
        eval_samples=measured.samples,
        duration_s=time.perf_counter() - began,
    )
    return evaluation, measured.outputs


def check_finite(outputs: np.ndarray, runtime: str) -> None:
    """A model whose outputs are NaN or infinite is broken, whatever its metric says (argmax of NaN logits is
    class 0: a plausible-looking accuracy). Fail loudly instead."""
    finite = np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1) if outputs.size else np.ones(0, dtype=bool)
    if not finite.all():
        raise ModelError(
            f"{int((~finite).sum())} of {len(finite)} outputs in {runtime} are NaN or infinite",
            fix="the step that made this model diverged or overflowed: lower its learning_rate, or use a wider "
            "dtype (cast to float32/bfloat16 rather than float16)",
        )


def score(runtime: Runtime, data: TextData, spec: EvalSpec, *, progress: bool = False) -> dict[str, float]:
    """The primary and extra metrics only, from one untimed pass at `spec.scoring_batch_size`."""
    _configure_threads(spec)
    metrics = resolve_metrics(spec, runtime.task)
    measured = _measure(runtime, data, spec, latency_sizes=[], progress=progress)
    return _compute(metrics, measured)


def resolve_metrics(spec: EvalSpec, task: Task) -> list[ResolvedMetric]:
    """Primary metric first (`evaluate.metric`, else the task's default), then the extra metrics (duplicates
    dropped); ConfigError for unknown names."""
    primary = get_task(task).primary_metric(spec)
    resolved = [resolve_metric(primary, task, where="evaluate.metric")]
    for index, name in enumerate(spec.extra_metrics):
        if name not in (m.name for m in resolved):
            resolved.append(resolve_metric(name, task, where=f"evaluate.extra_metrics[{index}]"))
    return resolved


def _configure_threads(spec: EvalSpec) -> int:
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    return torch.get_num_threads()


def _compute(metrics: list[ResolvedMetric], measured: _Measured) -> dict[str, float]:
    return {metric.name: metric(measured.outputs, measured.targets) for metric in metrics}


def _measure(
    runtime: Runtime, data: TextData, spec: EvalSpec, *, latency_sizes: list[int], progress: bool
) -> _Measured:
    scoring = spec.scoring_batch_size
    task = get_task(runtime.task)
    batches = task.eval_batches(runtime.tokenizer, data, spec, runtime.max_length, [*latency_sizes, scoring])
    latency, outputs = _timed_passes(runtime, batches.make, batches.items, spec, latency_sizes, task.reduce, progress)
    if outputs is None:
        outputs = run_pass(
            runtime,
            lambda: batches.make(scoring),
            batch_size=scoring,
            total_batches=batch_count(batches.items, scoring),
            timed_batches=None,
            reduce=task.reduce,
            progress=progress,
            desc=f"{runtime.name} scoring, batch {scoring}",
        ).outputs
    return _Measured(np.concatenate(outputs, axis=0), batches.targets, latency, batches.items)


def _timed_passes(
    runtime: Runtime,
    make_batches: Callable[[int], Iterator[Batch]],
    items: int,
    spec: EvalSpec,
    latency_sizes: list[int],
    reduce: Reduce,
    progress: bool,
) -> tuple[dict[str, LatencyStats], list[np.ndarray] | None]:
    """One timed pass per batch size; the pass at the scoring batch size also keeps the outputs."""
    latency: dict[str, LatencyStats] = {}
    outputs: list[np.ndarray] | None = None
    for batch_size in latency_sizes:
        total = batch_count(items, batch_size)
        # Timing covers whole batches: the first ceil(latency_samples / batch_size) of them.
        timed = total if spec.latency_samples is None else min(total, batch_count(spec.latency_samples, batch_size))
        scoring_here = batch_size == spec.scoring_batch_size
        result = run_pass(
            runtime,
            lambda batch_size=batch_size: make_batches(batch_size),
            batch_size=batch_size,
            total_batches=total,
            timed_batches=timed,
            warmup=spec.warmup_batches,
            reduce=reduce if scoring_here else None,
            progress=progress,
            desc=f"{runtime.name} latency, batch {batch_size}",
        )
        assert result.stats is not None  # timed > 0: every split has at least one batch
        latency[str(batch_size)] = result.stats
        if scoring_here:
            outputs = result.outputs
    return latency, outputs
