"""Recover: train a pruned causal LM to match an earlier stage (its dense model) on text windows, zeros kept.

One-shot pruning (Wanda, SparseGPT) leaves an error that a short training removes most of: the pruned model
learns the dense model's next-token distributions (soft-target KL, as in sparse fine-tuning with distillation,
e.g. Kurtic et al. 2023) on random windows of the calibration text, optionally with the plain language-modelling
loss. The shared training loop keeps every pruned layer's zeros at zero after each optimizer step, so the
sparsity pattern (2:4 included) survives; the stage's sparsity report shows it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step, StepConfig
from compress.steps.calibrated import text_windows
from compress.steps.distill.losses import next_token_ce, next_token_kl
from compress.steps.quantize.config import TextWindows
from compress.train import train
from compress.train.batches import IGNORE_LABEL
from compress.train.fingerprint import hash_json, model_fingerprint, tokenizer_fingerprint
from compress.train.settings import TrainSettings

TRAINS_TASK = "causal-lm"


class RecoverConfig(StepConfig, TrainSettings):
    teacher: str = Field(
        "baseline", description="The earlier stage whose next-token distributions the model learns to match."
    )
    data: TextWindows = Field(
        default_factory=lambda: TextWindows(samples=1024, seq_len=512),
        description="The training windows: `samples` random windows of `seq_len` tokens, drawn once (every "
        "epoch passes over the same windows).",
    )
    temperature: PositiveFloat = Field(1.0, description="Softens both distributions in the KL loss.")
    alpha_kd: NonNegativeFloat = Field(1.0, description="Weight of the KL loss to the teacher's distributions.")
    alpha_ce: NonNegativeFloat = Field(0.0, description="Weight of the next-token cross-entropy on the text.")
    # Defaults for a short recovery of an LLM rather than a classifier's fine-tuning.
    epochs: PositiveFloat = Field(1.0, le=100_000, description="Passes over the training windows.")
    learning_rate: PositiveFloat = Field(5e-5, description="Peak AdamW learning rate.")
    batch_size: PositiveInt = Field(8, description="Windows per batch on each device.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay: none, to stay near the pruned weights.")
    max_length: PositiveInt = Field(128, description="Not read: the windows are `data.seq_len` tokens long.")

    @model_validator(mode="after")
    def _some_loss(self) -> RecoverConfig:
        if self.alpha_kd + self.alpha_ce == 0:
            raise ValueError("alpha_kd and alpha_ce are both zero: set at least one")
        return self


class Recover(Step):
    """Train a pruned causal LM towards its dense teacher's outputs, keeping its zeros."""

    name: ClassVar[str] = "recover"
    Config = RecoverConfig
    config: RecoverConfig

    def stage_inputs(self) -> dict[str, str]:
        return {"teacher": self.config.teacher}

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        cfg = self.config.model_copy(update={"progress": self.config.progress and self.progress})
        self._check_trainable(model)
        windows = text_windows(model, cfg.data, ctx, where="steps.recover.data")
        window_ids = windows.tolist()
        rows = [{"input_ids": ids, "labels": IGNORE_LABEL, "index": i} for i, ids in enumerate(window_ids)]
        teacher = ctx.stage(cfg.teacher).model.float().eval().requires_grad_(False)
        if teacher.config.vocab_size != model.model.config.vocab_size:
            raise ConfigError(
                f"the teacher stage '{cfg.teacher}' has a vocabulary of {teacher.config.vocab_size}, the model "
                f"{model.model.config.vocab_size}",
                where="steps.recover.teacher",
                fix="name the stage the model was pruned from (its vocabulary must be the same)",
            )

        def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            if next(teacher.parameters()).device != inputs["input_ids"].device:
                teacher.to(inputs["input_ids"].device)
            with torch.no_grad():
                target = teacher(**inputs).logits
            logits = module(**inputs).logits
            loss = cfg.alpha_kd * next_token_kl(logits, target, inputs["attention_mask"], cfg.temperature)
            if cfg.alpha_ce > 0:
                loss = loss + cfg.alpha_ce * next_token_ce(logits, inputs["input_ids"], inputs["attention_mask"])
            return loss

        def evaluate(trained: torch.nn.Module) -> dict[str, float]:
            return ctx.score(model.replace(model=trained))

        key = hash_json(
            [
                "recover",
                model_fingerprint(model.model),
                model_fingerprint(teacher),
                tokenizer_fingerprint(model.tokenizer),
                window_ids,
            ]
        )
        result = train(
            model.model.float(),  # trained in place: the runner reloads the source stage if it is needed
            rows,
            loss_fn,
            cfg,
            work_dir=ctx.work_dir,
            key=key,
            pad_token_id=model.tokenizer.pad_token_id or 0,
            device=ctx.device,
            seed=cfg.seed if cfg.seed is not None else ctx.seed,
            evaluate=evaluate,
            description="recover",
        )
        teacher.cpu()
        self._details = {
            "teacher": cfg.teacher,
            "steps": result.steps,
            "windows": cfg.data.samples,
            "seq_len": cfg.data.seq_len,
            "loss_first": result.losses[0] if result.losses else None,
            "loss_last": result.losses[-1] if result.losses else None,
        }
        return model.replace(model=result.model.cpu().float().eval())

    def _check_trainable(self, model: ModelHandle) -> None:
        if model.task != TRAINS_TASK:
            raise ConfigError(
                f"recover trains causal language models; this model's task is {model.task}",
                where="steps.recover",
                fix="for a classifier, recover with `distill` (student: {structured: ...}) or `finetune`",
            )
        quantization = getattr(model.model.config, "quantization_config", None)
        if model.transforms or quantization is not None:
            done = ", ".join(t["name"] for t in model.transforms) or "its weights are quantized"
            raise ConfigError(
                f"the incoming model was already transformed ({done}); recover trains float weights",
                where="steps.recover",
                fix="put recover after pruning and before quantization steps",
            )
