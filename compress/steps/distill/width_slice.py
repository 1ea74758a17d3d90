"""Teacher-sliced initialisation of a narrower, shallower student (Minitron-style width pruning).

The student keeps some of the teacher's layers and, inside them, the teacher's most important hidden
channels, attention heads and feed-forward neurons; every student tensor is a slice of a teacher tensor.
Importance comes from the weights alone (no data, deterministic):

- hidden channel c: sum of |γ_c| over the embedding LayerNorm and both LayerNorms of every kept layer.
  Each block's output is LayerNorm-scaled, so a channel with small γ everywhere carries little signal
  (Minitron ranks channels by LayerNorm activations; γ is their data-free proxy).
- attention head: ‖Q_h‖ + ‖K_h‖ + ‖V_h‖ + ‖O_{:,h}‖ (Frobenius norms of the head's rows in the query, key and
  value projections and its columns in the output projection), per layer.
- feed-forward neuron n: ‖W_in[n, :]‖ · ‖W_out[:, n]‖, a bound on how much it can add to the output.

Kept indices are sorted, so channels, heads and neurons keep the teacher's order. LayerNorm over fewer
channels sees different statistics; distillation recovers from that, as in Minitron.

Heads: with the teacher's head size d and the student's d' = hidden_size / num_heads,
- d' = d: whole heads are kept (the top `num_heads` by importance);
- d' < d: the top `num_heads` heads are kept, each cut to its d' most important query/key dimensions
  (‖q_i‖·‖k_i‖) and, separately, its d' most important value/output dimensions (‖v_i‖·‖o_i‖);
- d' = r·d: each student head is r whole teacher heads side by side (the top num_heads·r, in order);
- anything else is a ConfigError.
When d' ≠ d the query is scaled by √(d'/d) so each kept dot product keeps the teacher's 1/√d temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from compress.architectures.blocks import BLOCKS, Heads
from compress.errors import ConfigError, ModelError
from compress.prune.structured import head_group_scores, neuron_scores, top_indices

WHERE = "steps.distill.student"
FIX_RANDOM = "use `init: random` for this teacher"


@dataclass(frozen=True)
class SlicePlan:
    """Which teacher indices each student tensor keeps."""

    layers: list[int]  # teacher layer of each student layer
    hidden: Tensor  # kept hidden channels
    query_key: list[Tensor]  # per student layer: kept rows of the query/key projections
    value_output: list[Tensor]  # per student layer: kept rows of value / columns of the output projection
    ffn: list[Tensor]  # per student layer: kept feed-forward neurons
    query_scale: float  # √(d'/d), keeps the attention temperature when the head size changes


SLICED_MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)


def check_sliceable(teacher: PreTrainedModel) -> None:
    """A ModelError unless every encoder layer has BERT's modules (query/key/value, output, LayerNorms)."""
    layer = teacher.base_model.encoder.layer[0]
    names = dict(layer.named_modules())
    missing = [name for name in SLICED_MODULES if name not in names]
    if missing:
        raise ModelError(
            f"`init: slice` needs BERT-style encoder layers; {type(teacher).__name__} lacks {', '.join(missing)}",
            where=WHERE,
            fix=FIX_RANDOM,
        )


def default_layers(num_layers: int, teacher_layers: int) -> list[int]:
    """`num_layers` evenly spaced teacher layers ending with the last: 2 of 6 → [2, 5], 3 of 6 → [1, 3, 5].

    The same map as the hidden-state loss uses, so each student layer learns from the layer it came from.
    """
    return [(i + 1) * teacher_layers // num_layers - 1 for i in range(num_layers)]


def hidden_importance(teacher: PreTrainedModel, layers: list[int]) -> Tensor:
    """Sum of |γ| per channel over the embedding LayerNorm and the kept layers' LayerNorms."""
    base = teacher.base_model
    hidden_size = teacher.config.hidden_size
    norms = [base.encoder.layer[i].attention.output.LayerNorm for i in layers]
    norms += [base.encoder.layer[i].output.LayerNorm for i in layers]
    embedding_norm = getattr(base.embeddings, "LayerNorm", None)
    if embedding_norm is not None and embedding_norm.weight.shape[0] == hidden_size:
        norms.append(embedding_norm)
    return torch.stack([norm.weight.detach().abs().float() for norm in norms]).sum(0)


def head_importance(layer: torch.nn.Module, num_heads: int) -> Tensor:
    """‖Q_h‖ + ‖K_h‖ + ‖V_h‖ + ‖O_{:,h}‖ for each head of one layer (the `structured` step's criterion)."""
    head_dim = layer.attention.self.query.weight.shape[0] // num_heads
    return head_group_scores(layer, BLOCKS["bert"], Heads(head_dim, num_heads, num_heads))


def ffn_importance(layer: torch.nn.Module) -> Tensor:
    """‖W_in[n, :]‖ · ‖W_out[:, n]‖ for each feed-forward neuron of one layer (the `structured` step's criterion)."""
    return neuron_scores(layer, BLOCKS["bert"])


def attention_rows(layer: torch.nn.Module, teacher_heads: int, heads: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """Kept query/key rows and value/output rows of one layer (see the module docstring for the rules)."""
    teacher_dim = layer.attention.self.query.weight.shape[0] // teacher_heads
    scores = head_importance(layer, teacher_heads)

    def whole(kept_heads: Tensor) -> Tensor:
        return (kept_heads[:, None] * teacher_dim + torch.arange(teacher_dim)).reshape(-1)

    if head_dim == teacher_dim:
        rows = whole(top_indices(scores, heads))
        return rows, rows
    if head_dim > teacher_dim:
        if head_dim % teacher_dim:
            raise ConfigError(
                f"the student's head size {head_dim} is neither a divisor nor a multiple of the teacher's "
                f"{teacher_dim}, so heads cannot be sliced from the teacher's",
                where=f"{WHERE}.num_heads",
                fix=f"choose num_heads so hidden_size / num_heads is {teacher_dim} (or a multiple), "
                "or use `init: random`",
            )
        rows = whole(top_indices(scores, heads * head_dim // teacher_dim))
        return rows, rows
    attention = layer.attention

    def per_dim(weight: Tensor, dim: int) -> Tensor:
        return weight.detach().float().norm(dim=dim)

    qk = per_dim(attention.self.query.weight, 1) * per_dim(attention.self.key.weight, 1)
    vo = per_dim(attention.self.value.weight, 1) * per_dim(attention.output.dense.weight, 0)
    query_key, value_output = [], []
    for head in top_indices(scores, heads).tolist():
        span = slice(head * teacher_dim, (head + 1) * teacher_dim)
        query_key.append(top_indices(qk[span], head_dim) + head * teacher_dim)
        value_output.append(top_indices(vo[span], head_dim) + head * teacher_dim)
    return torch.cat(query_key), torch.cat(value_output)


def plan_slices(
    teacher: PreTrainedModel, layers: list[int], hidden_size: int, num_heads: int, intermediate_size: int
) -> SlicePlan:
    """Choose what the student keeps of the teacher, from weight-based importance."""
    config = teacher.config
    asked = {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_heads": num_heads}
    has = {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_heads": config.num_attention_heads,
    }
    for name, value in asked.items():
        if value > has[name]:
            raise ConfigError(
                f"{name} {value} is larger than the teacher's {has[name]}; slicing can only shrink",
                where=f"{WHERE}.{name}",
                fix=f"choose {name} ≤ {has[name]}, or use `init: random` for a wider student",
            )
    head_dim = hidden_size // num_heads
    teacher_dim = config.hidden_size // config.num_attention_heads
    rows = [
        attention_rows(teacher.base_model.encoder.layer[i], config.num_attention_heads, num_heads, head_dim)
        for i in layers
    ]
    return SlicePlan(
        layers=layers,
        hidden=top_indices(hidden_importance(teacher, layers), hidden_size),
        query_key=[qk for qk, _ in rows],
        value_output=[vo for _, vo in rows],
        ffn=[top_indices(ffn_importance(teacher.base_model.encoder.layer[i]), intermediate_size) for i in layers],
        query_scale=math.sqrt(head_dim / teacher_dim),
    )


def _layer_slices(plan: SlicePlan, index: int) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """(rows, columns) kept by each tensor of student layer `index`, by its name inside the layer."""
    hidden, qk, vo, ffn = plan.hidden, plan.query_key[index], plan.value_output[index], plan.ffn[index]
    return {
        "attention.self.query.weight": (qk, hidden),
        "attention.self.query.bias": (qk, None),
        "attention.self.key.weight": (qk, hidden),
        "attention.self.key.bias": (qk, None),
        "attention.self.value.weight": (vo, hidden),
        "attention.self.value.bias": (vo, None),
        "attention.output.dense.weight": (hidden, vo),
        "attention.output.dense.bias": (hidden, None),
        "attention.output.LayerNorm.weight": (hidden, None),
        "attention.output.LayerNorm.bias": (hidden, None),
        "intermediate.dense.weight": (ffn, hidden),
        "intermediate.dense.bias": (ffn, None),
        "output.dense.weight": (hidden, ffn),
        "output.dense.bias": (hidden, None),
        "output.LayerNorm.weight": (hidden, None),
        "output.LayerNorm.bias": (hidden, None),
    }


def _take(tensor: Tensor, rows: Tensor | None, cols: Tensor | None) -> Tensor:
    if rows is not None:
        tensor = tensor.index_select(0, rows)
    if cols is not None:
        tensor = tensor.index_select(1, cols)
    return tensor


def sliced_state_dict(teacher: PreTrainedModel, student: PreTrainedModel, plan: SlicePlan) -> dict[str, Tensor]:
    """Every tensor of `student`, sliced from the teacher; a ModelError when one cannot be filled exactly."""
    teacher_state = teacher.state_dict()
    teacher_hidden = teacher.config.hidden_size
    layer_prefix = f"{teacher.base_model_prefix}.encoder.layer."
    embedding_prefix = f"{teacher.base_model_prefix}.embeddings."
    result: dict[str, Tensor] = {}
    for name, wanted in student.state_dict().items():
        scale = 1.0
        if name.startswith(layer_prefix):
            index_text, inner = name[len(layer_prefix) :].split(".", 1)
            index = int(index_text)
            slices = _layer_slices(plan, index)
            if inner not in slices:
                raise ModelError(
                    f"slicing a student from {type(teacher).__name__} does not know the tensor `{name}`",
                    where=WHERE,
                    fix=FIX_RANDOM,
                )
            source = f"{layer_prefix}{plan.layers[index]}.{inner}"
            rows, cols = slices[inner]
            scale = plan.query_scale if inner.startswith("attention.self.query.") else 1.0
        else:
            source = name
            tensor = teacher_state.get(name)
            if tensor is None:
                raise ModelError(f"the teacher has no tensor `{name}`", where=WHERE, fix=FIX_RANDOM)
            # Embedding tables slice their feature axis; pooler and head slice every axis of the hidden size.
            # (A position table of 512 × 512 must not lose positions, hence the split.)
            at_hidden = [d for d, n in enumerate(tensor.shape) if n == teacher_hidden]
            if name.startswith(embedding_prefix):
                at_hidden = [d for d in at_hidden if d == tensor.ndim - 1]
            rows = plan.hidden if 0 in at_hidden else None
            cols = plan.hidden if 1 in at_hidden and tensor.ndim == 2 else None
        if source not in teacher_state:
            raise ModelError(f"the teacher has no tensor `{source}`", where=WHERE, fix=FIX_RANDOM)
        tensor = _take(teacher_state[source].detach(), rows, cols)
        if tensor.shape != wanted.shape:
            raise ModelError(
                f"slicing `{source}` gave shape {tuple(tensor.shape)}, the student's `{name}` needs "
                f"{tuple(wanted.shape)}",
                where=WHERE,
                fix=FIX_RANDOM,
            )
        result[name] = (tensor * scale if scale != 1.0 else tensor).to(wanted.dtype).clone()
    return result
