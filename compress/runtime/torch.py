"""PyTorch eager runtime: the model a step produced, on CPU or CUDA.

`predict` returns what the task adapter's forward gives (`TaskAdapter.torch_forward`), left on the device:
the task's reduction runs there, so e.g. a causal LM's per-token NLL never brings logits to the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.models.handle import ModelHandle
from compress.models.placement import spread_over_devices
from compress.models.serialize import state_tensors
from compress.models.size import count_parameters, saved_weight_bytes
from compress.runtime.base import Runtime, RuntimeOptions, RuntimeOutput
from compress.runtime.semi_structured import (
    LayerChoice,
    accelerate_semi_structured,
    cusparselt_available,
    restore_dense,
)
from compress.tasks import get_task


class TorchRuntime(Runtime):
    name = "pytorch"

    def __init__(
        self, handle: ModelHandle, device: torch.device | str = "cpu", *, semi_structured_tokens: int | None = None
    ) -> None:
        """`semi_structured_tokens`: on CUDA, run 2:4 Linears through cuSPARSELt where measured faster than dense at
        this many input rows (`compress.runtime.semi_structured`); `close` puts the dense path back."""
        super().__init__(handle.tokenizer, handle.task, handle.max_length)
        self.handle = handle
        quantized = any(t["name"] == "dynamic_int8" for t in handle.transforms)
        self.torch_device = torch.device("cpu" if quantized else device)  # quantized kernels are CPU-only
        self.device = self.torch_device.type
        # A model spread over devices at load runs through accelerate's hooks where it lies.
        self.model = (handle.model if spread_over_devices(handle.model) else handle.model.to(self.torch_device)).eval()
        self._input_names = set(self._forward_inputs())
        self._forward = get_task(handle.task).torch_forward(self.model)
        self.semi_structured: list[LayerChoice] = []
        if semi_structured_tokens and self.torch_device.type == "cuda" and cusparselt_available():
            self.semi_structured = accelerate_semi_structured(self.model, semi_structured_tokens)

    def _forward_inputs(self) -> list[str]:
        import inspect

        return [
            n
            for n in ("input_ids", "attention_mask", "token_type_ids")
            if n in inspect.signature(self.model.forward).parameters
        ]

    @torch.inference_mode()
    def predict(self, batch: Mapping[str, np.ndarray]) -> RuntimeOutput:
        inputs = {
            k: torch.from_numpy(np.asarray(v)).to(self.torch_device) for k, v in batch.items() if k in self._input_names
        }
        return self._forward(inputs)

    def generation_speed(self, prompt_ids: np.ndarray, new_tokens: int) -> dict[str, float] | None:
        from compress.evaluate.decode import measure_decode

        if not hasattr(self.model, "generate"):  # not a generative model
            return None
        prompt = torch.from_numpy(np.asarray(prompt_ids, dtype=np.int64)).to(self.torch_device)
        return measure_decode(self.model, prompt, new_tokens)

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def size_bytes(self) -> int:
        """The saved weight files when the runner saved this model; else the tensors' bytes in memory."""
        if self.handle.saved_dir is not None:
            on_disk = saved_weight_bytes(self.handle.saved_dir)
            if on_disk:
                return on_disk
        return sum(t.numel() * t.element_size() for t in state_tensors(self.model).values())

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def sparsity(self) -> dict[str, float] | None:
        from compress.prune.sparsity import measure_sparsity

        return measure_sparsity(self.model)

    def close(self) -> None:
        if self.semi_structured:
            restore_dense(self.model)

    def describe(self) -> dict[str, str]:
        dtype = (
            "int8-dynamic"
            if any(t["name"] == "dynamic_int8" for t in self.handle.transforms)
            else str(next(self.model.parameters()).dtype).replace("torch.", "")
        )
        return {"runtime": self.name, "device": self.device, "precision": dtype}

    def details(self) -> dict[str, Any]:
        if not self.semi_structured:
            return {}
        return {
            "semi_structured_kernels": {
                "sparse_layers": sum(choice.sparse for choice in self.semi_structured),
                "candidate_layers": len(self.semi_structured),
                "layers": [choice.as_dict() for choice in self.semi_structured],
            }
        }


def open_saved_model(directory: Path, options: RuntimeOptions) -> TorchRuntime:
    """A stage folder compress saved (`compress-model.json` beside the weights), with its transforms replayed."""
    from compress.models.serialize import load_handle

    handle = load_handle(directory, options.device)
    handle.saved_dir = directory
    return TorchRuntime(handle, options.device)


def open_pretrained_folder(directory: Path, options: RuntimeOptions) -> TorchRuntime:
    """A plain transformers folder (config.json + weights); the task from `options.task` or the architecture."""
    from transformers import AutoConfig

    from compress.config import ModelSpec
    from compress.models.load import load_model

    task = options.task or task_of_architecture(AutoConfig.from_pretrained(directory), directory)
    return TorchRuntime(load_model(ModelSpec(str(directory), task=task)), options.device)


def task_of_architecture(config: Any, directory: Path) -> str:
    """The registered task whose auto class maps this config to the architecture the folder was saved as."""
    from compress.errors import ModelError
    from compress.tasks import task_names

    saved = (getattr(config, "architectures", None) or [None])[0]
    for name in task_names():
        mapping = getattr(get_task(name).auto_class, "_model_mapping", {})
        try:
            if mapping[type(config)].__name__ == saved:
                return name
        except KeyError:
            continue
    raise ModelError(
        f"cannot tell the task of {directory} (architecture {saved or 'not recorded'})",
        where="--task",
        fix=f"pass --task, one of: {', '.join(task_names())}",
    )
