"""One pass of a runtime over batches: untimed warm-up, per-batch timing, and the outputs kept for metrics.

Only `runtime.predict` plus `runtime.synchronize` is inside the clock; tokenization and the task's reduction
of the outputs (e.g. NLL from logits, on the device the model ran on) happen outside it, and tokenization
is reported on its own. `synchronize` matters since predict returns device tensors without waiting for them.
For PyTorch causal LMs whose head alone gives the logits, the runtime stops at the final hidden states and
the LM head runs inside the (untimed) reduction, so their latency covers the transformer without the
vocabulary projection.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from compress.evaluate.batching import Batch
from compress.result import LatencyStats
from compress.runtime.base import Runtime, RuntimeOutput

# The task's reduction: one batch's outputs → what the metric needs, as host numpy (see TaskAdapter.reduce).
Reduce = Callable[[RuntimeOutput, Batch], np.ndarray]


@dataclass
class PassResult:
    outputs: list[np.ndarray] = field(default_factory=list)
    stats: LatencyStats | None = None


def warm_up(runtime: Runtime, make_batches: Callable[[], Iterator[Batch]], count: int) -> None:
    """Run `count` untimed batches from the start of the split, cycling if the split is shorter."""
    done = 0
    while done < count:
        ran_any = False
        for batch in make_batches():
            runtime.predict(batch.inputs)
            ran_any = True
            done += 1
            if done >= count:
                break
        if not ran_any:
            break
    runtime.synchronize()


def run_pass(
    runtime: Runtime,
    make_batches: Callable[[], Iterator[Batch]],
    *,
    batch_size: int,
    total_batches: int,
    timed_batches: int | None,
    warmup: int = 0,
    reduce: Reduce | None = None,
    progress: bool = True,
    desc: str = "",
) -> PassResult:
    """Predict batches in order; time the first `timed_batches` of them (None: time none).

    With `reduce`, every batch of the split is predicted and its reduced outputs kept; without it the pass
    stops after the timed batches.
    """
    timing = timed_batches is not None and timed_batches > 0
    if timing and runtime.compiles_per_shape:
        warmup = max(warmup, timed_batches or 0)
    if timing and warmup > 0:
        warm_up(runtime, make_batches, warmup)
    last = total_batches if reduce is not None else min(total_batches, timed_batches or 0)
    result = PassResult()
    times_s: list[float] = []
    samples = real_tokens = 0
    tokenize_s = 0.0
    bar = tqdm(total=last, desc=desc, disable=not progress, leave=False, unit="batch")
    for index, batch in enumerate(itertools.islice(make_batches(), last)):
        if timing and index < (timed_batches or 0):
            began = time.perf_counter()
            outputs = runtime.predict(batch.inputs)
            runtime.synchronize()
            times_s.append(time.perf_counter() - began)
            samples += batch.size
            real_tokens += batch.real_tokens
            tokenize_s += batch.tokenize_s
        else:
            outputs = runtime.predict(batch.inputs)
        if reduce is not None:
            result.outputs.append(reduce(outputs, batch))
        bar.update(1)
    bar.close()
    if timing:
        result.stats = latency_stats(batch_size, times_s, samples, tokenize_s, real_tokens)
    return result


def latency_stats(
    batch_size: int, times_s: list[float], samples: int, tokenize_s: float, real_tokens: int
) -> LatencyStats:
    """P50/P95/P99/mean over batches in ms (linear interpolation) and samples per second."""
    times_ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(times_ms, [50, 95, 99])) if times_ms.size else (0.0,) * 3
    total_s = float(np.sum(times_s))
    batches = len(times_s)
    return LatencyStats(
        batch_size=batch_size,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(times_ms.mean()) if batches else 0.0,
        batches=batches,
        samples=samples,
        throughput_per_s=samples / total_s if total_s > 0 else 0.0,
        tokenize_ms_per_batch=tokenize_s * 1000.0 / batches if batches else 0.0,
        mean_tokens_per_sample=real_tokens / samples if samples else 0.0,
    )
