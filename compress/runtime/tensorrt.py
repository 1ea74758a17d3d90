"""TensorRT: a serialized engine run through the tensorrt Python API, with PyTorch CUDA tensors as buffers.

Needs TensorRT ≥ 8.6 (the named-tensor API) and a CUDA build of PyTorch; no pycuda or cuda-python.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.errors import DataError, NotEvaluable
from compress.optional import import_optional
from compress.runtime.base import Runtime, graph_inputs


def tensorrt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built or run on this machine, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the `tensorrt` Python package is not installed (pip install tensorrt; it needs an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch (TensorRT engines run only on NVIDIA GPUs)"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # a wheel that does not match the driver fails here, not at find_spec
        return f"`import tensorrt` failed: {exc}"
    return None


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        engine_path: Path,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        max_length: int | None,
        *,
        precision: str,
    ) -> None:
        super().__init__(tokenizer, task, max_length)
        trt = import_optional("tensorrt", "tensorrt")
        self.engine_path = Path(engine_path)
        self.precision = precision
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise NotEvaluable(
                f"TensorRT could not load {self.engine_path.name} (built by other TensorRT or GPU?)",
                fix="rebuild it on this machine with the trtexec command in deploy.md",
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._max_shapes = {n: tuple(self.engine.get_tensor_profile_shape(n, 0)[2]) for n in self.input_names}
        self.stream = torch.cuda.Stream()

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        # Buffers must stay alive until the stream finishes, hence the list.
        buffers: list[torch.Tensor] = []
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                array = self._input(batch, name)
                tensor = torch.from_numpy(array).to("cuda", self._dtypes[name], non_blocking=False)
                buffers.append(tensor)
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            shape = tuple(self.context.get_tensor_shape(self.output_name))
            output = torch.empty(shape, dtype=self._dtypes[self.output_name], device="cuda")
            self.context.set_tensor_address(self.output_name, output.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.engine_path.name} on shapes {shape}")
            logits = output.float().cpu()  # .cpu() waits for the stream
        return logits.numpy()

    def _input(self, batch: Mapping[str, np.ndarray], name: str) -> np.ndarray:
        array = graph_inputs(batch, [name], self.engine_path.name)[name]
        limit = self._max_shapes[name]
        if any(got > most for got, most in zip(array.shape, limit, strict=True)):
            raise DataError(
                f"input '{name}' has shape {array.shape}, beyond the engine's largest {limit}",
                where="exports.tensorrt",
                fix="raise `max_batch` / `max_sequence` in the tensorrt exporter's config and export again",
            )
        return array

    def synchronize(self) -> None:
        self.stream.synchronize()

    def size_bytes(self) -> int:
        return self.engine_path.stat().st_size

    def close(self) -> None:
        self.context = None
        self.engine = None

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "device": self.device, "precision": self.precision}


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "int64"):  # TensorRT 10 keeps int64 inputs; 8.x casts them to int32
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]
