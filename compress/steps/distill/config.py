"""The distill step's settings: teacher, student, loss weights, extra unlabeled text, training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from compress.config import Schema
from compress.steps.base import StepConfig
from compress.steps.prune.structured import StructureSpec
from compress.train.settings import TrainSettings


class LayerStudent(Schema):
    """Keep some of the teacher's layers (DistilBERT-style); weights start as the teacher's."""

    layers: list[int] | Literal["every_other"] = Field(
        description="Teacher layer indices to keep (0-based), or `every_other` for layers 0, 2, 4, ..."
    )


class SmallerStudent(Schema):
    """The teacher's architecture with smaller dimensions, sliced from the teacher's weights or random."""

    num_layers: PositiveInt | None = Field(
        None, description="Encoder layers; default: the teacher's (or the number of `layers` given)."
    )
    hidden_size: PositiveInt | None = Field(None, description="Width; default: the teacher's.")
    num_heads: PositiveInt | None = Field(None, description="Attention heads; must divide hidden_size.")
    intermediate_size: PositiveInt | None = Field(None, description="Feed-forward width; default: the teacher's.")
    init: Literal["slice", "random"] = Field(
        "slice",
        description="`slice`: every weight starts as a slice of the teacher's (its most important channels, "
        "heads and neurons, Minitron-style); `random`: random weights, embeddings from the teacher.",
    )
    layers: list[int] | None = Field(
        None,
        description="With `init: slice`, the teacher layers to keep (0-based); default: num_layers evenly "
        "spaced ending with the last (2 of 6: [2, 5]).",
    )

    @model_validator(mode="after")
    def _something_smaller(self) -> SmallerStudent:
        dims = (self.num_layers, self.hidden_size, self.num_heads, self.intermediate_size)
        if all(v is None for v in dims):
            # `{layers: [...]}` alone is a LayerStudent (whole layers copied), so it must not match here.
            raise ValueError("give at least one of num_layers, hidden_size, num_heads, intermediate_size")
        if self.layers is not None and self.init != "slice":
            raise ValueError("`layers` only applies with `init: slice`")
        if self.layers is not None and self.num_layers is not None and len(self.layers) != self.num_layers:
            raise ValueError(f"num_layers {self.num_layers} but {len(self.layers)} layers given")
        return self


class SourceStudent(Schema):
    """A ready model (local directory, hub name or `pypi:` package) trained as the student."""

    source: str = Field(description="Where the student model comes from, as in `model.source`.")


class PrunedStudent(Schema):
    """The teacher itself with attention heads, feed-forward neurons and layers removed by the `structured`
    pruning step's criteria (layers may keep different widths); distillation is then its recovery training."""

    structured: StructureSpec = Field(description="What to remove: `heads`, `ffn` (shares), `drop_layers`.")


StudentSpec = LayerStudent | SmallerStudent | SourceStudent | PrunedStudent


class AugmentSettings(Schema):
    """TinyBERT-style augmentation: copies of the train texts with words swapped for embedding neighbours."""

    copies: PositiveInt = Field(4, description="Augmented copies of each train text (the teacher labels them).")
    replace_prob: float = Field(0.4, gt=0, le=1, description="Chance that each replaceable word is swapped.")
    neighbours: PositiveInt = Field(
        15, description="A word is swapped for one of its this many nearest tokens in the teacher's embeddings."
    )


class DistillConfig(StepConfig, TrainSettings):
    teacher: str | None = Field(
        None, description="Teacher model source; default: the incoming model (e.g. the finetuned one)."
    )
    student: StudentSpec = Field(
        default_factory=lambda: LayerStudent(layers="every_other"),
        description="`{layers: [0, 2, 4]}` or `{layers: every_other}`; `{num_layers, hidden_size, num_heads, "
        "intermediate_size}`; or `{source: <model>}`.",
    )
    temperature: PositiveFloat = Field(2.0, description="Softens both distributions in the soft-target loss.")
    alpha_kd: NonNegativeFloat = Field(0.5, description="Weight of the soft-target KL loss (× T²).")
    alpha_ce: NonNegativeFloat = Field(0.5, description="Weight of cross-entropy on the true labels.")
    alpha_hidden: NonNegativeFloat = Field(
        0.0, description="Weight of hidden-state MSE between mapped layers (teacher then runs every step)."
    )
    alpha_attn: NonNegativeFloat = Field(
        0.0, description="Weight of attention-map transfer between mapped layers (teacher runs every step)."
    )
    attention_loss: Literal["mse", "kl"] = Field("mse", description="How attention maps are compared.")
    alpha_relations: NonNegativeFloat = Field(
        0.0,
        description="Weight of MiniLMv2's self-attention relation loss: Q-Q, K-K and V-V relations of the "
        "student's last layer against `relation_layer` of the teacher (teacher runs every step; widths and head "
        "counts may differ).",
    )
    relation_heads: PositiveInt = Field(
        12, description="Relation heads the projections are split into; must divide both models' widths."
    )
    relation_layer: int = Field(
        -1, description="Teacher layer the relations come from (0-based; negative counts from the end)."
    )
    unlabeled: str | None = Field(
        None,
        description="Extra text (.txt one per line, .jsonl/.json/.csv/.tsv) learned from teacher logits.",
    )
    unlabeled_column: str = Field("text", description="Text field of a .jsonl/.json/.csv/.tsv unlabeled file.")
    unlabeled_limit: PositiveInt | None = Field(None, description="Use at most this many unlabeled texts.")
    augment: AugmentSettings | None = Field(
        None,
        description="Add augmented copies of the train texts, learned from the teacher's logits "
        "(`{copies: 4, replace_prob: 0.4, neighbours: 15}`); default: none.",
    )
    freeze_embeddings: bool = Field(
        False,
        description="Keep the student's word embeddings as built (e.g. sliced from the teacher): the largest "
        "matrix then needs no gradient or optimizer state (about 1.6x faster training on CPU).",
    )
    teacher_batch_size: PositiveInt = Field(64, description="Batch size for computing the teacher's logits.")
    learning_rate: PositiveFloat = Field(1e-4, description="Peak AdamW learning rate.")

    @model_validator(mode="after")
    def _some_loss(self) -> DistillConfig:
        if self.alpha_kd + self.alpha_ce + self.alpha_hidden + self.alpha_attn + self.alpha_relations == 0:
            raise ValueError(
                "all loss weights are zero: set alpha_kd (and/or alpha_ce, alpha_hidden, alpha_attn, alpha_relations)"
            )
        return self
