"""One runtime at one batch size and sequence length: warm-up, repeated timed passes, percentiles with their
sample counts, throughput and its spread over passes, tokenization timed apart, peak memory.

Lengths are `real` (the texts as they are, each batch padded to its longest row — what a server sees) or a fixed
token count (every row truncated or padded to exactly that many tokens — a shape sweep). A percentile needs enough
samples to mean anything: MLPerf's LoadGen asks for ~1,000 for a P99 (with fewer, the P99 is essentially the
maximum); rows below that are flagged `p99_from_few_samples`.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from compress.data.text_data import TextData
from compress.evaluate.batching import Batch, tokenize_batches
from compress.evaluate.memory import PeakMemory
from compress.runtime.base import Runtime

P99_MIN_SAMPLES = 1000  # MLPerf LoadGen's minimum query count for a 99th-percentile latency
REAL = "real"


@dataclass(frozen=True)
class Plan:
    """How long to measure each point: `passes` timed passes of at least `min_batches` batches and
    `min_seconds` each, after `warmup` untimed batches; a point never runs past `max_seconds` in all."""

    passes: int = 3
    warmup: int = 3
    min_batches: int = 10
    min_seconds: float = 1.0
    max_seconds: float = 30.0


class Point(BaseModel):
    """One measured (runtime, batch size, length) point of a bench results file."""

    artifact: str
    runtime: str
    device: str
    precision: str | None = None
    threads: int | None = Field(None, description="CPU threads the runtime was opened with; None: its default.")
    batch_size: int
    length: str = Field(description="`real`, or the fixed token count every row was padded/truncated to.")
    batches: int = Field(description="Timed batches over all passes: the latency percentiles' sample count.")
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float = Field(description="Samples per second over all timed passes.")
    pass_throughputs: list[float] = Field(description="Samples per second of each pass.")
    throughput_spread: float = Field(description="(max − min) / median of the passes' throughputs.")
    tokenize_ms_per_batch: float
    mean_tokens_per_sample: float
    peak_memory_mb: float | None = None
    memory_source: str | None = None
    p99_from_few_samples: bool = Field(description=f"P99 from fewer than {P99_MIN_SAMPLES} batches.")


def fixed_length_batches(runtime: Runtime, data: TextData, batch_size: int, length: int) -> Iterator[Batch]:
    """Batches whose every row is exactly `length` tokens (truncated or padded)."""
    for start in range(0, len(data), batch_size):
        texts = data.texts[start : start + batch_size]
        pairs = data.pairs[start : start + batch_size] if data.pairs is not None else None
        began = time.perf_counter()
        encoded = runtime.tokenizer(
            texts, pairs, truncation=True, max_length=length, padding="max_length", return_tensors="np"
        )
        inputs = {name: np.asarray(array, dtype=np.int64) for name, array in encoded.items()}
        yield Batch(inputs, len(texts), int(inputs["input_ids"].size), time.perf_counter() - began)


def batches_for(runtime: Runtime, data: TextData, batch_size: int, length: str) -> list[Batch]:
    """Every batch of `data` at this shape, tokenized once (tokenization is timed per batch and reported apart)."""
    if length == REAL:
        return list(tokenize_batches(runtime.tokenizer, data, batch_size, runtime.max_length or 512))
    return list(fixed_length_batches(runtime, data, batch_size, int(length)))


def measure_point(
    runtime: Runtime,
    data: TextData,
    batch_size: int,
    length: str,
    plan: Plan,
    *,
    artifact: str,
    threads: int | None = None,
) -> Point:
    """`threads`: the CPU threads the runtime was opened with (None: its default), recorded with the point."""
    batches = batches_for(runtime, data, batch_size, length)
    cycle = itertools.cycle(batches)
    # A runtime that compiles per shape sees every shape it will be timed on first (see Runtime).
    for _ in range(max(plan.warmup, len(batches)) if runtime.compiles_per_shape else plan.warmup):
        runtime.predict(next(cycle).inputs)
    runtime.synchronize()
    times_s: list[float] = []
    pass_throughputs: list[float] = []
    samples = tokens = 0
    tokenize_s = 0.0
    began_all = time.perf_counter()
    with PeakMemory(runtime.device) as memory:
        for _ in range(plan.passes):
            pass_samples, pass_seconds, count = 0, 0.0, 0
            while count < plan.min_batches or pass_seconds < plan.min_seconds:
                batch = next(cycle)
                began = time.perf_counter()
                runtime.predict(batch.inputs)
                runtime.synchronize()
                elapsed = time.perf_counter() - began
                times_s.append(elapsed)
                pass_seconds += elapsed
                pass_samples += batch.size
                samples += batch.size
                tokens += batch.real_tokens
                tokenize_s += batch.tokenize_s
                count += 1
                if time.perf_counter() - began_all > plan.max_seconds / plan.passes * (len(pass_throughputs) + 1):
                    break  # this pass's share of the point's time budget is spent
            pass_throughputs.append(pass_samples / pass_seconds)
    times_ms = np.asarray(times_s) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(times_ms, [50, 95, 99]))
    described = runtime.describe()
    median = statistics.median(pass_throughputs)
    return Point(
        artifact=artifact,
        runtime=runtime.name,
        device=runtime.device,
        precision=described.get("precision"),
        threads=threads,
        batch_size=batch_size,
        length=length,
        batches=len(times_s),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=float(times_ms.mean()),
        throughput_per_s=samples / float(np.sum(times_s)),
        pass_throughputs=pass_throughputs,
        throughput_spread=(max(pass_throughputs) - min(pass_throughputs)) / median if median else 0.0,
        # Tokenized once per distinct batch; the mean over the timed batches is what a server would pay.
        tokenize_ms_per_batch=tokenize_s * 1000.0 / len(times_s),
        mean_tokens_per_sample=tokens / samples,
        peak_memory_mb=memory.peak_mb or None,
        memory_source=memory.source,
        p99_from_few_samples=len(times_s) < P99_MIN_SAMPLES,
    )
