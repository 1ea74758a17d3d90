"""OpenVINO Runtime: an exported IR (.xml + .bin) compiled for the CPU."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.optional import import_optional
from compress.runtime.base import Runtime, graph_inputs

PerformanceHint = Literal["latency", "throughput"]
InferencePrecision = Literal["f32", "auto"]


class OpenVinoRuntime(Runtime):
    name = "openvino"
    # The CPU plugin builds kernels for each new input shape on first use: timed on their first pass over SST-2
    # dev, two INT8 students ran 1,093 and 1,337/s at batch 32; warmed, 1,536 and 1,463/s (2 threads, 2026-12-03).
    compiles_per_shape = True

    def __init__(
        self,
        model_path: Path,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        max_length: int | None,
        *,
        threads: int | None = None,
        performance_hint: PerformanceHint = "latency",
        inference_precision: InferencePrecision = "f32",
        precision: str = "float32",
        sparse_weights_decompression_rate: float | None = None,
    ) -> None:
        super().__init__(tokenizer, task, max_length)
        ov = import_optional("openvino", "openvino")
        self.model_path = Path(model_path)
        self.precision = precision
        self.performance_hint = performance_hint
        config: dict[str, object] = {"PERFORMANCE_HINT": performance_hint.upper()}
        if inference_precision == "f32":  # CPUs with AMX/AVX512-BF16 otherwise run FP32 layers in bf16
            config["INFERENCE_PRECISION_HINT"] = "f32"
            # and, for INT8/INT4-weight MatMuls, quantize their activations to INT8 in groups of 32 (the CPU
            # plugin's default DYNAMIC_QUANTIZATION_GROUP_SIZE where its kernels support it): weight-only
            # compression is meant to leave activations float.
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if sparse_weights_decompression_rate is not None:  # pruned INT8 weights stored sparse (AMX CPUs only)
            config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = sparse_weights_decompression_rate
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.model_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        # The throughput hint makes several CPU streams; one request uses one stream, so a batch is split
        # across a queue of requests to use them all.
        streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, streams) if performance_hint == "throughput" else None
        self.streams = streams

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = graph_inputs(batch, self.input_names, self.model_path.name)
        rows = len(feed[self.input_names[0]])
        if self.queue is not None and rows >= 2 * self.streams:
            return self._predict_split(feed, rows)
        self.request.infer(feed)
        # A copy: the output tensor's memory is OpenVINO's, reused by the next batch and freed when a larger
        # one needs more room, and a numpy view of it does not keep it alive (reading one then crashes).
        # Handing OpenVINO an array of our own to write into (set_output_tensor) saved nothing: a causal LM's
        # peak RSS over a 2048-token window was 250 MB higher, not lower, with the CPU plugin of 2026.4.
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)

    def _predict_split(self, feed: dict[str, np.ndarray], rows: int) -> np.ndarray:
        assert self.queue is not None
        bounds = np.linspace(0, rows, self.streams + 1).astype(int)
        parts: list[np.ndarray | None] = [None] * self.streams

        def done(request: object, index: int) -> None:
            parts[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)  # type: ignore[attr-defined]

        self.queue.set_callback(done)
        for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
            self.queue.start_async({k: v[start:stop] for k, v in feed.items()}, userdata=index)
        self.queue.wait_all()
        return np.concatenate([p for p in parts if p is not None])

    def size_bytes(self) -> int:
        return self.model_path.stat().st_size + self.model_path.with_suffix(".bin").stat().st_size

    def close(self) -> None:
        self.queue = None
        self.request = None
        self.compiled = None

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "device": self.device, "precision": self.precision,
                "performance_hint": self.performance_hint}  # fmt: skip
