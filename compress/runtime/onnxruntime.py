"""ONNX Runtime: an exported .onnx graph on CPU, or on CUDA when the GPU build of onnxruntime is installed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.optional import import_optional
from compress.runtime.base import Runtime, graph_inputs


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        max_length: int | None,
        *,
        threads: int | None = None,
        device: str = "cpu",
        precision: str = "float32",
    ) -> None:
        super().__init__(tokenizer, task, max_length)
        ort = import_optional("onnxruntime", "onnx")
        self.model_path = Path(model_path)
        self.precision = precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = graph_inputs(batch, self.input_names, self.model_path.name)
        (logits,) = self.session.run([self.output_name], feed)
        return np.asarray(logits, dtype=np.float32)

    def size_bytes(self) -> int:
        return onnx_size_bytes(self.model_path)

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "device": self.device, "precision": self.precision}


def onnx_size_bytes(model_path: Path) -> int:
    """The graph file plus the external-data files it references (models over 2 GB keep weights outside)."""
    onnx = import_optional("onnx", "onnx")
    model_path = Path(model_path)
    graph = onnx.load(str(model_path), load_external_data=False)
    external = {
        entry.value
        for tensor in graph.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return model_path.stat().st_size + sum((model_path.parent / name).stat().st_size for name in external)
