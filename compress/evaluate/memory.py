"""Peak memory during an evaluation.

What is reported (in MiB, written "MB" in reports):
- CPU runtimes: the peak resident set size (RSS) of the whole process while the evaluation ran, sampled by a
  background thread every few milliseconds. It includes the loaded model, the runtime's buffers and Python
  itself, so it is what a server running this stage would need, not only the activations.
- CUDA runtimes (`runtime.device == "cuda"`): `torch.cuda.max_memory_allocated()` after resetting the peak
  counter, i.e. the peak of tensors PyTorch allocated on the GPU (weights plus activations), not host RSS.
  Where NVML is importable (nvidia-ml-py), this process's GPU memory as the driver sees it is sampled too, and the
  larger of the two is reported (`source` "nvml_process"): ONNX Runtime's and TensorRT's allocations, which torch
  cannot see, count, as do the CUDA context and allocator caches.
"""

from __future__ import annotations

import contextlib
import os
import threading
from types import TracebackType
from typing import Any

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

        self._nvml: _NvmlProcess | None = _NvmlProcess.open() if device == "cuda" else None

    @property
    def source(self) -> str:
        if self.device != "cuda":
            return "process_rss"
        return "nvml_process" if self._nvml is not None else "cuda_max_allocated"

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            if self._nvml is None:
                return self
        self._sample()
        self._thread = threading.Thread(target=self._watch, name="compress-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        torch_peak = 0
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch_peak = torch.cuda.max_memory_allocated()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.device != "cuda" or self._nvml is not None:
            self._sample()
        if self._nvml is not None:
            self._nvml.close()
        self.peak_mb = max(self._peak_bytes, torch_peak) / MIB

    def _sample(self) -> None:
        try:
            used = self._nvml.used_bytes() if self._nvml is not None else self._process.memory_info().rss
        except Exception:  # psutil or NVML errors: the sampler must never fail an evaluation
            return
        self._peak_bytes = max(self._peak_bytes, used)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()


class _NvmlProcess:
    """This process's memory on the current CUDA device, as NVML (the driver) counts it."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml, self._handle, self._pid = nvml, handle, os.getpid()

    @classmethod
    def open(cls) -> _NvmlProcess | None:
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            # NVML numbers devices physically; CUDA_VISIBLE_DEVICES may renumber them: match by UUID.
            for physical in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
                found = pynvml.nvmlDeviceGetUUID(handle)
                found = found.decode() if isinstance(found, bytes) else found
                if found.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
                    return cls(pynvml, handle)
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception:  # no NVML, no driver, no GPU: torch's allocator figure stands alone
            return None

    def used_bytes(self) -> int:
        processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        return sum(p.usedGpuMemory or 0 for p in processes if p.pid == self._pid)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # shutting NVML down must not fail an evaluation either
            self._nvml.nvmlShutdown()
