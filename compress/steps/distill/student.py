"""Build a student from a teacher: a subset of its layers, a smaller configuration, or another model.

Works for BERT-family encoders (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, ...), whose layers live in
`model.base_model.encoder.layer`.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from compress.errors import ConfigError, ModelError
from compress.steps.distill.width_slice import (
    check_sliceable,
    default_layers,
    plan_slices,
    sliced_state_dict,
)

LayerChoice = list[int] | Literal["every_other"]


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a BERT-family model."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelError(
            f"distill cannot find the encoder layers of {type(model).__name__} "
            "(it looks for `model.base_model.encoder.layer`, as in BERT-family models)",
            where="steps.distill.student",
            fix="use a BERT-family teacher, or give a ready student with `student: {source: <model>}`",
        )
    return layers


def resolve_layers(choice: LayerChoice, num_teacher_layers: int) -> list[int]:
    """`every_other` keeps layers 0, 2, 4, ... (DistilBERT's choice); a list is checked and kept as given."""
    if choice == "every_other":
        return list(range(0, num_teacher_layers, 2))
    if not choice:
        raise ConfigError("choose at least one layer", where="steps.distill.student.layers")
    bad = [i for i in choice if not 0 <= i < num_teacher_layers]
    if bad or len(set(choice)) != len(choice):
        raise ConfigError(
            f"layers {choice} must be distinct indices of the teacher's {num_teacher_layers} layers",
            where="steps.distill.student.layers",
            fix=f"pick from 0..{num_teacher_layers - 1}, e.g. every_other",
        )
    return list(choice)


def select_layers(teacher: PreTrainedModel, layers: LayerChoice) -> PreTrainedModel:
    """A copy of the teacher keeping only `layers` of its encoder (embeddings, pooler and head copied too)."""
    chosen = resolve_layers(layers, len(encoder_layers(teacher)))
    student = copy.deepcopy(teacher)
    kept = [encoder_layers(student)[i] for i in chosen]
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # attention modules index their cache slot by layer
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    student.base_model.encoder.layer = torch.nn.ModuleList(kept)
    student.config.num_hidden_layers = len(kept)
    return student


def smaller_student(
    teacher: PreTrainedModel,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    seed: int = 0,
    init: Literal["slice", "random"] = "random",
    layers: list[int] | None = None,
) -> PreTrainedModel:
    """A model of the teacher's architecture with the given dimensions.

    `init="slice"`: every weight is sliced from the teacher (its `layers`, default evenly spaced ending with
    the last, and its most important channels, heads and neurons; see width_slice.py).
    `init="random"`: random weights, except the embeddings, which need the most data to learn: copied when
    the width matches, truncated to the first `hidden_size` features otherwise. Same width: pooler and
    head are copied too.
    """
    teacher_layers = len(encoder_layers(teacher))  # fail early on architectures distill does not know
    if init == "slice":
        check_sliceable(teacher)
        if layers is not None:
            layers = resolve_layers(layers, teacher_layers)
            if num_layers is not None and num_layers != len(layers):
                raise ConfigError(
                    f"num_layers {num_layers} but {len(layers)} layers {layers} chosen",
                    where="steps.distill.student.layers",
                    fix="give as many layers as num_layers, or leave num_layers out",
                )
            num_layers = len(layers)
        num_layers = num_layers or teacher_layers
        if num_layers > teacher_layers:
            raise ConfigError(
                f"num_layers {num_layers} is more than the teacher's {teacher_layers}; slicing can only shrink",
                where="steps.distill.student.num_layers",
                fix=f"choose num_layers ≤ {teacher_layers}, or use `init: random`",
            )
        layers = layers or default_layers(num_layers, teacher_layers)
    config = _student_config(teacher, num_layers, hidden_size, num_heads, intermediate_size)
    torch.manual_seed(seed)
    student = AutoModelForSequenceClassification.from_config(config)
    if init == "slice":
        source = copy.deepcopy(teacher).cpu()  # the teacher may sit on a GPU; the student is built on the CPU
        plan = plan_slices(source, layers, config.hidden_size, config.num_attention_heads, config.intermediate_size)
        student.load_state_dict(sliced_state_dict(source, student, plan), strict=True)
    else:
        _copy_matching(teacher, student, prefix=f"{teacher.base_model_prefix}.embeddings.")
        if config.hidden_size == teacher.config.hidden_size:
            _copy_matching(teacher, student, prefix="", skip=f"{teacher.base_model_prefix}.encoder.")
    return student.to(next(teacher.parameters()).dtype)


def _student_config(
    teacher: PreTrainedModel,
    num_layers: int | None,
    hidden_size: int | None,
    num_heads: int | None,
    intermediate_size: int | None,
) -> PretrainedConfig:
    """The teacher's configuration with the given dimensions (None keeps the teacher's)."""
    config = copy.deepcopy(teacher.config)
    changes = {
        "num_hidden_layers": num_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
    }
    for name, value in changes.items():
        if value is not None:
            setattr(config, name, value)
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"hidden_size {config.hidden_size} is not divisible by num_heads {config.num_attention_heads}",
            where="steps.distill.student",
            fix="choose num_heads dividing hidden_size (e.g. 4 heads of 64 for 256)",
        )
    return config


def _copy_matching(source: torch.nn.Module, target: torch.nn.Module, prefix: str, skip: str | None = None) -> None:
    """Copy tensors under `prefix` into the target, truncating each dimension where the target is smaller."""
    target_state = target.state_dict()
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if not name.startswith(prefix) or (skip and name.startswith(skip)) or name not in target_state:
                continue
            wanted = target_state[name]
            if wanted.ndim == tensor.ndim and all(w <= s for w, s in zip(wanted.shape, tensor.shape, strict=True)):
                wanted.copy_(tensor[tuple(slice(0, w) for w in wanted.shape)])
