"""Served load: requests arriving at random (Poisson) at a given rate, batched dynamically, latency per request.

One server worker, simulated on a virtual clock with real service times: requests arrive with exponential gaps;
when the worker is free it takes the oldest waiting request and waits for more until the batching window after
that request's arrival closes or `max_batch` requests are in; the batch is tokenized and run for real, and the
clock advances by the measured time. A request's latency is its batch's finish time minus its arrival (queueing,
waiting for the window, tokenization and inference). The clock is virtual so a slow machine measures the same
load it would face, without sleeping through idle time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from compress.data.text_data import TextData
from compress.runtime.base import Runtime


class ServedPoint(BaseModel):
    artifact: str
    runtime: str
    offered_per_s: float = Field(description="Requests per second offered (the Poisson rate).")
    achieved_per_s: float = Field(description="Requests served per second of virtual time.")
    window_ms: float
    max_batch: int
    requests: int
    mean_batch: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    saturated: bool = Field(
        description="The server could not keep up: busy for ≥ 95 % of the time the requests arrived over."
    )


def serve(
    runtime: Runtime,
    data: TextData,
    *,
    rate_per_s: float,
    window_ms: float,
    max_batch: int,
    requests: int,
    seed: int = 0,
    artifact: str = "",
) -> ServedPoint:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, requests))
    window = window_ms / 1000.0
    clock, busy, first, latencies, sizes = 0.0, 0.0, 0, np.empty(requests), []
    max_length = runtime.max_length or 512
    _run_batch(runtime, data, range(min(max_batch, len(data))), max_length)  # warm-up: first calls pay set-up costs
    while first < requests:
        ready = max(clock, arrivals[first])
        dispatch = max(ready, min(arrivals[first] + window, _arrival_of(arrivals, first + max_batch - 1)))
        last = min(int(np.searchsorted(arrivals, dispatch, side="right")), first + max_batch, requests)
        began = time.perf_counter()
        _run_batch(runtime, data, [(first + i) % len(data) for i in range(last - first)], max_length)
        service = time.perf_counter() - began
        busy += service
        finish = dispatch + service
        latencies[first:last] = finish - arrivals[first:last]
        sizes.append(last - first)
        clock, first = finish, last
    latencies_ms = latencies * 1000.0
    # Saturation: the worker was busy (nearly) all the time the requests kept arriving, so the queue had no
    # moment to drain and grew with the run's length: utilisation ≥ 95 % of the arrival span.
    saturated = bool(busy >= 0.95 * (arrivals[-1] - arrivals[0]))
    p50, p95, p99 = (float(v) for v in np.percentile(latencies_ms, [50, 95, 99]))
    return ServedPoint(
        artifact=artifact,
        runtime=runtime.name,
        offered_per_s=rate_per_s,
        achieved_per_s=requests / clock,
        window_ms=window_ms,
        max_batch=max_batch,
        requests=requests,
        mean_batch=float(np.mean(sizes)),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        saturated=saturated,
    )


def _run_batch(runtime: Runtime, data: TextData, rows: Sequence[int], max_length: int) -> None:
    texts = [data.texts[r] for r in rows]
    pairs = [data.pairs[r] for r in rows] if data.pairs is not None else None
    encoded = runtime.tokenizer(
        texts, pairs, truncation=True, max_length=max_length, padding="longest", return_tensors="np"
    )
    runtime.predict({k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()})
    runtime.synchronize()


def _arrival_of(arrivals: np.ndarray, index: int) -> float:
    """When the request at `index` arrives (never, for one past the last: the window decides)."""
    return float(arrivals[index]) if index < len(arrivals) else float("inf")
