"""Training settings shared by every step that trains (finetune, distill)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from compress.config import SEED_MAX, Schema


class GradualPruning(Schema):
    """Prune by magnitude while training, along Zhu & Gupta's cubic schedule (`compress.prune.schedule`)."""

    sparsity: float = Field(gt=0, lt=1, description="Share of the selected weights zeroed by the end of the ramp.")
    start: float = Field(0.0, ge=0, lt=1, description="Share of the training steps before pruning begins.")
    end: float = Field(
        0.75, gt=0, le=1, description="Share of the training steps where the target is reached; the rest recovers."
    )
    every: PositiveInt | None = Field(
        None, description="Optimizer steps between mask updates; default: a twentieth of the ramp."
    )
    scope: Literal["layer", "global"] = Field(
        "layer", description="Reach the sparsity in every layer, or over all selected layers together."
    )
    targets: list[str] = Field(
        default_factory=lambda: ["Linear"],
        description="Modules to prune: a class name, a module name, or `re:<regex>` over module names.",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head", "classifier", "score"],
        description="Modules left dense (same syntax as `targets`); the task heads by default.",
    )

    @model_validator(mode="after")
    def _ramp(self) -> GradualPruning:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must come after start ({self.start})")
        return self


class TrainSettings(Schema):
    """Optimizer, schedule, batching, precision, checkpointing. Steps that train inherit these fields."""

    epochs: PositiveFloat = Field(3.0, le=100_000, description="Passes over the training data (a fraction is allowed).")
    max_steps: PositiveInt | None = Field(
        None, description="Train for exactly this many optimizer steps instead (overrides `epochs`)."
    )
    learning_rate: PositiveFloat = Field(5e-5, description="Peak AdamW learning rate.")
    batch_size: PositiveInt = Field(32, description="Rows per batch on each device.")
    gradient_accumulation_steps: PositiveInt = Field(
        1, description="Batches whose gradients are summed before each optimizer step."
    )
    max_length: PositiveInt = Field(
        128, description="Training-time truncation in tokens (does not change how stages are evaluated)."
    )
    warmup_ratio: float = Field(
        0.06,
        ge=0,
        le=1,
        description="Fraction of the steps over which the learning rate rises linearly from 0.",
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; None: no clip.")
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed for initialisation, shuffling and dropout; default: the run's."
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no",
        description="Autocast precision: bf16 on CUDA or recent CPUs; fp16 needs CUDA (falls back to no).",
    )
    checkpoint_every: PositiveInt | None = Field(
        500,
        description="Save a resumable checkpoint every this many steps (and at each epoch end); None: only "
        "at epoch ends.",
    )
    keep_checkpoints: PositiveInt = Field(1, description="Checkpoints kept in the stage's work folder.")
    eval_every: PositiveInt | None = Field(
        None,
        description="Score the model on the eval split every this many steps and log it (slows training).",
    )
    progress: bool = Field(True, description="Show a progress bar.")
    gradual_pruning: GradualPruning | None = Field(
        None,
        description="Prune by magnitude during this training, sparsity rising on a cubic schedule (recovery as "
        "it goes); None: keep the model's zeros as they are.",
    )

    def training_key(self) -> dict[str, object]:
        """The settings that change the trained weights (a checkpoint made under others is not resumed)."""
        ignored = {
            "checkpoint_every",
            "keep_checkpoints",
            "eval_every",
            "progress",
            "label",
            "max_accuracy_drop",
        }
        return self.model_dump(mode="json", exclude=ignored)
