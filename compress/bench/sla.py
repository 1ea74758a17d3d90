"""The batch size an SLA allows: the highest-throughput batch whose P99 latency stays within the limit.

"Raise the batch until P99 exceeds your SLA" as a search: double the batch from 1 while P99 holds, then bisect
between the last batch that held and the first that did not. Latency grows with the batch on every runtime
we measure, so the boundary is found in O(log n) measured points; every probe is kept in the result. A P99
from a few hundred batches is noisy (on an H200 one stray 12 ms batch failed a 10 ms SLA at batch 2 while
batches 8 and 32 held at 6 ms), so growth ends at the second miss in a row, not the first.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from compress.bench.measure import Point


class SlaResult(BaseModel):
    artifact: str
    runtime: str
    length: str
    sla_p99_ms: float
    best: Point | None = Field(description="Highest throughput within the SLA; None: even batch 1 misses it.")
    probes: list[Point] = Field(description="Every point measured on the way, in order.")
    limited_by_max_batch: bool = Field(description="The largest allowed batch still met the SLA.")


def search_sla_batch(measure: Callable[[int], Point], sla_p99_ms: float, *, max_batch: int = 1024) -> SlaResult:
    probes: dict[int, Point] = {}

    def within(batch: int) -> bool:
        if batch not in probes:
            probes[batch] = measure(batch)
        return probes[batch].p99_ms <= sla_p99_ms

    good, bad = 0, None  # bad: the first miss after the last batch that held
    batch = 1
    while batch <= max_batch:
        if within(batch):
            good, bad = batch, None
        elif bad is None:
            bad = batch
        else:
            break  # two misses in a row
        batch *= 2
    if bad is None and good < max_batch:  # doubling stepped past the limit: probe the limit itself
        if within(max_batch):
            good = max_batch
        else:
            bad = max_batch
    while bad is not None and good and bad - good > 1:
        middle = (good + bad) // 2
        if within(middle):
            good = middle
        else:
            bad = middle
    passing = [p for p in probes.values() if p.p99_ms <= sla_p99_ms]
    first = next(iter(probes.values()))
    return SlaResult(
        artifact=first.artifact,
        runtime=first.runtime,
        length=first.length,
        sla_p99_ms=sla_p99_ms,
        best=max(passing, key=lambda p: p.throughput_per_s) if passing else None,
        probes=list(probes.values()),
        limited_by_max_batch=bad is None,
    )
