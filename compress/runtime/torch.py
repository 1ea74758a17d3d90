"""PyTorch eager runtime: the model a step produced, on CPU or CUDA."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from compress.models.handle import ModelHandle
from compress.models.serialize import state_tensors
from compress.models.size import count_parameters
from compress.runtime.base import Runtime


class TorchRuntime(Runtime):
    name = "pytorch"

    def __init__(self, handle: ModelHandle, device: torch.device | str = "cpu") -> None:
        super().__init__(handle.tokenizer, handle.task, handle.max_length)
        self.handle = handle
        quantized = any(t["name"] == "dynamic_int8" for t in handle.transforms)
        self.torch_device = torch.device("cpu" if quantized else device)  # quantized kernels are CPU-only
        self.device = self.torch_device.type
        self.model = handle.model.to(self.torch_device).eval()
        self._input_names = set(self._forward_inputs())

    def _forward_inputs(self) -> list[str]:
        import inspect

        return [
            n
            for n in ("input_ids", "attention_mask", "token_type_ids")
            if n in inspect.signature(self.model.forward).parameters
        ]

    @torch.inference_mode()
    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        inputs = {
            k: torch.from_numpy(np.asarray(v)).to(self.torch_device) for k, v in batch.items() if k in self._input_names
        }
        logits = self.model(**inputs).logits
        return logits.float().cpu().numpy()

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in state_tensors(self.model).values())

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def describe(self) -> dict[str, str]:
        dtype = (
            "int8-dynamic"
            if any(t["name"] == "dynamic_int8" for t in self.handle.transforms)
            else str(next(self.model.parameters()).dtype).replace("torch.", "")
        )
        return {"runtime": self.name, "device": self.device, "precision": dtype}
