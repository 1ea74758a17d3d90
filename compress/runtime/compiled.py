"""PyTorch's fast path: a stage in bf16/fp16 with SDPA attention, `torch.compile`d over bucketed static shapes.

`torch.compile(mode="reduce-overhead")` replays CUDA graphs, but only for shapes it has seen: under dynamic padding
every new (batch, length) recompiles, and after a handful it gives up and runs eagerly. So each batch is padded up
to the next length bucket (mask 0 on the padding, which attention ignores) and the next batch bucket (whole padding
rows, cut off the outputs): a few static shapes, each compiled once and then replayed. Padding costs some
compute; the buckets bound it (≤ 2x on the length at worst, usually far less).

Outputs must be one row per input (classification logits); tasks whose outputs carry the sequence axis (causal
LMs) run on the plain PyTorch runtime.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from compress.errors import NotEvaluable
from compress.models.handle import ModelHandle
from compress.runtime.base import RuntimeOptions, RuntimeOutput
from compress.runtime.graph_replay import ShapeGraphs
from compress.runtime.torch import TorchRuntime
from compress.tasks import get_task

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEFAULT_LENGTHS = (16, 32, 64, 128, 256, 512)
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
CudaGraphs = Literal["torch", "static"]


def bucket(value: int, buckets: list[int]) -> int:
    """The smallest bucket ≥ `value` (`value` itself past the largest: a shape compiled on its own)."""
    index = bisect.bisect_left(buckets, value)
    return buckets[index] if index < len(buckets) else value


def batch_buckets(largest: int) -> list[int]:
    """Powers of two up to `largest`: at most one doubling of padding rows, log2 shapes to compile."""
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, largest]


def pad_to(inputs: Mapping[str, np.ndarray], rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Inputs padded to (rows, length): `input_ids` with the pad token, every other input (mask, types) with 0."""
    padded = {}
    for name, array in inputs.items():
        out = np.full((rows, length), pad_id if name == "input_ids" else 0, dtype=np.int64)
        out[: array.shape[0], : array.shape[1]] = array
        padded[name] = out
    return padded


def allow_recompiles(shapes: int) -> None:
    """Raise torch.compile's recompile limits by the `shapes` one more runtime may compile.

    Dynamo counts compiled shapes per code object, and every runtime in a process compiles the same
    `TorchRuntime._forward`: past the limit (8 by default) a new shape silently runs eagerly. On the H200 the
    flagship's teacher, compiled after its student in one process, ran at its eager speed that way.
    """
    config = torch._dynamo.config
    for limit in ("recompile_limit", "accumulated_recompile_limit"):
        name = limit if hasattr(config, limit) else limit.replace("recompile", "cache_size")  # torch < 2.6's name
        setattr(config, name, getattr(config, name) + shapes)


class CompiledTorchRuntime(TorchRuntime):
    name = "pytorch-compiled"
    compiles_per_shape = True

    def __init__(
        self,
        handle: ModelHandle,
        device: str = "cuda",
        *,
        dtype: str = "bfloat16",
        mode: str = "reduce-overhead",
        length_buckets: list[int] | None = None,
        max_batch: int = 256,
        compile: bool = True,
        cuda_graphs: CudaGraphs = "torch",
    ) -> None:
        """`cuda_graphs` (with `mode="reduce-overhead"` on CUDA): `torch`, the graph trees torch.compile replays;
        `static`, one graph per bucket captured here (`compress.runtime.graph_replay`), less host work per call."""
        if 1 in get_task(handle.task).logits_axes:
            raise NotEvaluable(
                f"the bucketed compile path pads sequences, and {handle.task} outputs carry the sequence axis",
                fix="evaluate this stage on the plain PyTorch runtime (no export needed)",
            )
        setter = getattr(handle.model, "set_attn_implementation", None)
        if setter is not None:
            with contextlib.suppress(ValueError, ImportError):  # an architecture without SDPA keeps what it had
                setter("sdpa")
        handle.model.to(DTYPES[dtype])
        super().__init__(handle, device)
        self.dtype, self.mode = dtype, mode
        limit = self.max_length or 512
        self.length_buckets = sorted({min(b, limit) for b in (length_buckets or DEFAULT_LENGTHS)} | {limit})
        self.batch_buckets = batch_buckets(max_batch)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.cuda_graphs = cuda_graphs
        self._graphs: ShapeGraphs | None = None
        static = cuda_graphs == "static" and mode == "reduce-overhead" and self.torch_device.type == "cuda"
        if compile:
            # dynamic=False: one graph per bucket, which is what lets CUDA graphs replay. Capturing them ourselves,
            # torch.compile only compiles the kernels (its own graphs off).
            compile_mode = "default" if static else mode
            allow_recompiles(len(self.length_buckets) * len(self.batch_buckets))
            self._forward = torch.compile(self._forward, mode=compile_mode, dynamic=False)
        self._names = [n for n in INPUT_ORDER if n in self._input_names]  # the order inputs are stacked in
        if static:
            self._graphs = ShapeGraphs(self._forward, self._names, self.torch_device)

    @torch.inference_mode()
    def predict(self, batch: Mapping[str, np.ndarray]) -> RuntimeOutput:
        rows, length = np.shape(batch["input_ids"])
        shaped = pad_to(
            {k: batch[k] for k in self._names if k in batch},
            bucket(rows, self.batch_buckets),
            bucket(length, self.length_buckets),
            self.pad_id,
        )
        names = list(shaped)  # in `_names` order: what the tokenizer gave of the model's inputs
        host = np.stack([shaped[n] for n in names])
        if self._graphs is not None:
            outputs = self._graphs(host)
        else:  # one host-to-device copy for all inputs: at a fraction of a millisecond per replay, each copy counts
            stacked = torch.from_numpy(host).to(self.torch_device)
            outputs = self._forward(dict(zip(names, stacked.unbind(0), strict=True)))
        # A CUDA-graph replay reuses its output buffer: what the caller keeps past the next call is a copy.
        return outputs[:rows].to(torch.float32, copy=True)

    def describe(self) -> dict[str, str]:
        described = {"runtime": self.name, "device": self.device, "precision": self.dtype, "mode": self.mode}
        return described | ({"cuda_graphs": self.cuda_graphs} if self.mode == "reduce-overhead" else {})


def open_compiled(artifact_dir: Path, options: RuntimeOptions) -> CompiledTorchRuntime:
    """A `torch_compile` export: the saved stage plus the settings it is compiled with."""
    from compress.export.base import read_metadata
    from compress.models.serialize import load_handle

    meta = read_metadata(artifact_dir)
    handle = load_handle(artifact_dir / meta["model_dir"], options.device)
    handle.saved_dir = artifact_dir / meta["model_dir"]
    return CompiledTorchRuntime(
        handle,
        options.device,
        dtype=meta["dtype"],
        mode=meta["mode"],
        length_buckets=meta["length_buckets"],
        max_batch=meta["max_batch"],
        cuda_graphs=meta.get("cuda_graphs", "torch"),
    )
