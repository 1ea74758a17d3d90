"""Distillation losses as plain functions of tensors.

Shapes: logits (batch, classes), a causal LM's (batch, seq, vocab); hidden states (batch, seq, width), one per
layer, index 0 the embeddings (as transformers returns them); attention probabilities (batch, heads, seq, seq),
one per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from compress.train.batches import IGNORE_LABEL

AttentionLoss = Literal["mse", "kl"]


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) between temperature-softened distributions, averaged over rows.

    Multiplied by T², so the gradient scale stays the same whatever the temperature (Hinton et al., 2015).
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def hard_label_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled rows; rows labelled -100 (unlabeled text) do not count."""
    labelled = labels != IGNORE_LABEL
    if not labelled.any():
        return student_logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
    return F.cross_entropy(student_logits.float()[labelled], labels[labelled])


def next_token_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, attention_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """A causal LM's soft-target loss: `soft_target_kl` over every real token's next-token distribution.

    Logits (batch, seq, vocab); padded positions (mask 0) do not count; averaged over tokens, not rows.
    """
    real = attention_mask.bool()
    return soft_target_kl(student_logits[real], teacher_logits[real], temperature)


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Language-modelling cross-entropy: each real position predicts the next real token."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_LABEL)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_LABEL)


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """Pairs (student layer, teacher layer), 0-based, spread evenly; the last student layer learns from the
    last teacher layer (3 → 6 layers: (0, 1), (1, 3), (2, 5))."""
    return [(i, (i + 1) * num_teacher_layers // num_student_layers - 1) for i in range(num_student_layers)]


def hidden_state_mse(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor,
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Mean squared error between mapped layers' outputs over real (unpadded) tokens, averaged over layers.

    `projection` maps the student's width to the teacher's when they differ (learned with the student).
    Layer indices are those of `uniform_layer_map`; index 0 of the hidden-state tuples (embeddings) is not
    compared.
    """
    mask = attention_mask.unsqueeze(-1).float()
    losses = []
    for s, t in layer_map:
        student = student_hidden[s + 1].float()
        if projection is not None:
            student = projection(student)
        teacher = teacher_hidden[t + 1].float()
        squared = (student - teacher) ** 2 * mask
        losses.append(squared.sum() / (mask.sum() * teacher.shape[-1]).clamp(min=1))
    return torch.stack(losses).mean()


def attention_transfer(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor,
    kind: AttentionLoss = "mse",
) -> torch.Tensor:
    """Match attention probabilities of mapped layers over real query positions, averaged over layers.

    Heads are compared one to one when the counts match; otherwise both sides are averaged over heads first.
    `mse`: squared error per attention weight. `kl`: KL(teacher ‖ student) of each query's distribution.
    """
    query_mask = attention_mask[:, None, :].float()  # (batch, 1, query)
    losses = []
    for s, t in layer_map:
        student, teacher = student_attentions[s].float(), teacher_attentions[t].float()
        if student.shape[1] != teacher.shape[1]:
            student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
        if kind == "kl":
            eps = 1e-12
            per_query = (teacher * ((teacher + eps).log() - (student + eps).log())).sum(-1)
        else:
            per_query = ((student - teacher) ** 2).mean(-1)
        weights = query_mask.expand_as(per_query)
        losses.append((per_query * weights).sum() / weights.sum().clamp(min=1))
    return torch.stack(losses).mean()


def self_attention_relations(
    student_qkv: Sequence[torch.Tensor],
    teacher_qkv: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    relation_heads: int,
) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation loss (Wang et al. 2021).

    For the queries, keys and values of one student and one teacher layer ((batch, seq, width) each; the widths
    and head counts may differ), split into `relation_heads` heads: the relation softmax(X Xᵀ / √d) per head,
    compared as KL(teacher ‖ student) per query row, padding masked, averaged over Q-Q, K-K, V-V and the heads.
    Relations are seq × seq, so a narrower student needs no projection.
    """
    keep = attention_mask.bool()
    padded_keys = ~keep[:, None, None, :]  # (batch, 1, 1, key)
    weights = keep[:, None, :].float()  # (batch, 1, query)
    losses = []
    for student, teacher in zip(student_qkv, teacher_qkv, strict=True):
        log_s = _relations(student, relation_heads, padded_keys)
        log_t = _relations(teacher, relation_heads, padded_keys)
        per_query = (log_t.exp() * (log_t - log_s)).sum(-1)  # (batch, heads, query)
        mask = weights.expand_as(per_query)
        losses.append((per_query * mask).sum() / mask.sum().clamp(min=1))
    return torch.stack(losses).mean()


def _relations(x: torch.Tensor, heads: int, padded_keys: torch.Tensor) -> torch.Tensor:
    batch, seq, width = x.shape
    if width % heads:
        raise ValueError(f"relation_heads {heads} must divide the projection width {width}")
    size = width // heads
    split = x.float().view(batch, seq, heads, size).transpose(1, 2)  # (batch, heads, seq, size)
    scores = split @ split.transpose(-1, -2) / size**0.5
    # A large finite value, not -inf: masked entries must give exp() = 0 and a finite log difference.
    return F.log_softmax(scores.masked_fill(padded_keys, -1e9), dim=-1)
