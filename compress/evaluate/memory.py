"""Peak memory during an evaluation.

What is reported (in MiB, written "MB" in reports):
- CPU runtimes: the peak resident set size (RSS) of the whole process while the evaluation ran, sampled by a
  background thread every few milliseconds. It includes the loaded model, the runtime's buffers and Python
  itself, so it is what a server running this stage would need, not only the activations.
- CUDA runtimes (`runtime.device == "cuda"`): `torch.cuda.max_memory_allocated()` after resetting the peak
  counter, i.e. the peak of tensors PyTorch allocated on the GPU (weights plus activations), not host RSS.
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil

MIB = 2**20


class PeakMemory:
    """Context manager; `peak_mb` holds the peak once the block has exited."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    @property
    def source(self) -> str:
        return "cuda_max_allocated" if self.device == "cuda" else "process_rss"

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._sample()
        self._thread = threading.Thread(target=self._watch, name="compress-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / MIB
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.peak_mb = self._peak_bytes / MIB

    def _sample(self) -> None:
        try:
            rss = self._process.memory_info().rss
        except psutil.Error:  # the sampler must never fail an evaluation
            return
        self._peak_bytes = max(self._peak_bytes, rss)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()
