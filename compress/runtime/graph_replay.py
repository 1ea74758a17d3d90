"""One CUDA graph per input shape, captured by us: replaying it costs one host-to-device copy and one launch.

`torch.compile(mode="reduce-overhead")` replays CUDA graphs too, but every call still passes through its guards and
its graph-tree bookkeeping on the host — a fixed cost of a fraction of a millisecond, which is most of a small
encoder's batch on a fast GPU. Here each shape gets static device inputs, a pinned host buffer and a graph captured
once; a call writes the batch into the pinned buffer, copies it in asynchronously and replays.

A forward that cannot be captured (one that reads values back to the host mid-forward) runs uncaptured for that
shape, with a warning: slower, never wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class _Captured:
    host: torch.Tensor  # pinned (inputs, rows, length) int64: the batch is written here, then copied in
    inputs: torch.Tensor  # the same on the device: the graph reads these addresses
    graph: torch.cuda.CUDAGraph | None  # None: this shape runs uncaptured
    output: torch.Tensor | None
    copied: torch.cuda.Event  # the last copy out of `host` has finished (so `host` may be overwritten)


class ShapeGraphs:
    """Run `forward` on stacked inputs through one captured CUDA graph per input shape."""

    def __init__(self, forward: Forward, names: list[str], device: torch.device, *, warmup: int = 2) -> None:
        self.forward, self.names, self.device, self.warmup = forward, names, device, warmup
        self._captured: dict[tuple[int, ...], _Captured] = {}

    @property
    def captured_shapes(self) -> int:
        return sum(entry.graph is not None for entry in self._captured.values())

    def __call__(self, stacked: np.ndarray) -> torch.Tensor:
        """`stacked`: (len(names), rows, length) int64. The result is the graph's output buffer, valid until the
        next call: copy what must outlive it (a stream-ordered copy is enough)."""
        entry = self._captured.get(stacked.shape) or self._capture(stacked)
        entry.copied.synchronize()  # the previous call's copy has left the pinned buffer
        entry.host.numpy()[...] = stacked
        entry.inputs.copy_(entry.host, non_blocking=True)
        entry.copied.record()
        if entry.graph is None:
            return self.forward(self._named(entry.inputs))
        entry.graph.replay()
        assert entry.output is not None
        return entry.output

    def _named(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, inputs.unbind(0), strict=True))

    def _capture(self, stacked: np.ndarray) -> _Captured:
        host = torch.from_numpy(np.ascontiguousarray(stacked)).pin_memory()
        inputs = host.to(self.device)
        named = self._named(inputs)
        # Compile and autotune outside the capture, on a side stream as capture requires.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.forward(named)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph: torch.cuda.CUDAGraph | None = torch.cuda.CUDAGraph()
        output = None
        try:
            with torch.cuda.graph(graph):
                output = self.forward(named)
        except RuntimeError as exc:  # e.g. "operation not permitted when stream is capturing"
            log.warning("shape %s runs without a CUDA graph: its forward cannot be captured (%s)", stacked.shape, exc)
            torch.cuda.synchronize(self.device)
            graph, output = None, None
        entry = _Captured(host, inputs, graph, output, torch.cuda.Event())
        entry.copied.record()
        self._captured[stacked.shape] = entry
        return entry
