"""The trained module of a distillation: the student plus the projection its hidden-state loss may need.

Training this module (rather than the bare student) lets the optimizer, DDP and checkpoints cover the
projection too; the teacher stays outside, frozen.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel

from compress.steps.distill.capture import captured_qkv
from compress.steps.distill.losses import (
    AttentionLoss,
    attention_transfer,
    hard_label_ce,
    hidden_state_mse,
    self_attention_relations,
    soft_target_kl,
    uniform_layer_map,
)


@dataclass(frozen=True)
class LossWeights:
    kd: float = 0.5
    ce: float = 0.5
    hidden: float = 0.0
    attention: float = 0.0
    relations: float = 0.0


@dataclass
class TeacherOutputs:
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    qkv: list[torch.Tensor] | None = None  # one layer's query, key and value projections (relation loss)


class DistillationObjective(torch.nn.Module):
    def __init__(
        self,
        student: PreTrainedModel,
        teacher_config: PretrainedConfig,
        weights: LossWeights,
        temperature: float,
        attention_loss: AttentionLoss = "mse",
        relation_heads: int = 12,
    ) -> None:
        super().__init__()
        self.student = student
        self.weights = weights
        self.relation_heads = relation_heads
        self.temperature = temperature
        self.attention_loss = attention_loss
        self.layer_map = uniform_layer_map(
            student.config.num_hidden_layers,
            teacher_config.num_hidden_layers,
        )
        student_width, teacher_width = student.config.hidden_size, teacher_config.hidden_size
        needs_projection = weights.hidden > 0 and student_width != teacher_width
        self.projection = torch.nn.Linear(student_width, teacher_width) if needs_projection else None

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, teacher: TeacherOutputs) -> torch.Tensor:
        w = self.weights
        with captured_qkv(self.student, -1) if w.relations > 0 else contextlib.nullcontext([]) as student_qkv:
            out = self.student(
                **inputs, output_hidden_states=w.hidden > 0, output_attentions=w.attention > 0, return_dict=True
            )
        loss = w.kd * soft_target_kl(out.logits, teacher.logits, self.temperature)
        if w.ce > 0:
            loss = loss + w.ce * hard_label_ce(out.logits, labels)
        if w.hidden > 0:
            assert teacher.hidden_states is not None
            loss = loss + w.hidden * hidden_state_mse(
                out.hidden_states,
                teacher.hidden_states,
                self.layer_map,
                inputs["attention_mask"],
                self.projection,
            )
        if w.attention > 0:
            assert teacher.attentions is not None
            loss = loss + w.attention * attention_transfer(
                out.attentions,
                teacher.attentions,
                self.layer_map,
                inputs["attention_mask"],
                self.attention_loss,
            )
        if w.relations > 0:
            assert teacher.qkv is not None
            loss = loss + w.relations * self_attention_relations(
                student_qkv, teacher.qkv, inputs["attention_mask"], self.relation_heads
            )
        return loss
