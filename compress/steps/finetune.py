"""Finetune: train the whole classifier on the train split (the usual first step: it makes the teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData
from compress.errors import ConfigError, DataError
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step, StepConfig
from compress.tasks import get_task, task_names
from compress.train import TrainResult, TrainSettings, forward_inputs, tokenize_rows, train
from compress.train.fingerprint import hash_json, model_fingerprint, tokenizer_fingerprint
from compress.train.loop import Evaluate


class FinetuneConfig(StepConfig, TrainSettings):
    """Every training setting (epochs, learning rate, batch size, precision, checkpoints) applies."""


def finetune_classifier(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    settings: TrainSettings,
    *,
    work_dir: Path,
    device: torch.device,
    seed: int,
    evaluate: Evaluate | None = None,
) -> TrainResult:
    """Cross-entropy training of a sequence classifier, in place; resumes from `work_dir` checkpoints."""
    rows = tokenize_rows(data, tokenizer, settings.max_length)

    def loss_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module(**forward_inputs(module, batch), labels=batch["labels"]).loss

    key = hash_json(["finetune", model_fingerprint(model), tokenizer_fingerprint(tokenizer), data.fingerprint()])
    return train(
        model,
        rows,
        loss_fn,
        settings,
        work_dir=work_dir,
        key=key,
        pad_token_id=tokenizer.pad_token_id or 0,
        device=device,
        seed=seed,
        evaluate=evaluate,
        description="finetune",
    )


def require_training_task(model: ModelHandle, step: str) -> None:
    """finetune and distill train a classifier on labels: refuse tasks whose adapter does not support that."""
    if not get_task(model.task).supports_training:
        trainable = " or ".join(f"`model.task: {name}`" for name in task_names(supporting_training=True))
        raise ConfigError(
            f"{step} trains text classifiers on labelled data; the {model.task} task does not support training",
            where=f"steps.{step}",
            fix=f"remove the {step} step, or set {trainable}",
        )


def check_labels(data: TextData, num_labels: int, step: str) -> None:
    if data.labels is None:
        raise DataError(
            f"the train split has no labels; {step} needs them",
            where="data.label",
            fix="name the label column in `data.label`, or use a split that has labels in `data.train_split`",
        )
    bad = sorted({y for y in data.labels if not 0 <= y < num_labels})
    if bad:
        raise DataError(
            f"train labels {bad[:5]} are outside the model's {num_labels} classes",
            where="model.num_labels",
            fix="set `model.num_labels` (or `data.label_names`) to cover every label in the data",
        )


class Finetune(Step):
    """Train every weight of a text classifier on the train split with AdamW and a linear schedule."""

    name: ClassVar[str] = "finetune"
    Config = FinetuneConfig
    config: FinetuneConfig
    sets_reference: ClassVar[bool] = True

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        require_training_task(model, "finetune")
        data = ctx.train_data()
        check_labels(data, model.model.config.num_labels, "finetune")

        def evaluate(trained: torch.nn.Module) -> dict[str, float]:
            # Scored as it is, on its device; the training loop puts it back in train mode afterwards.
            return ctx.score(model.replace(model=trained))

        result = finetune_classifier(
            model.model.float(),  # trained in place: the runner reloads the untrained stage if it is needed
            model.tokenizer,
            data,
            self.config.model_copy(update={"progress": self.config.progress and self.progress}),
            work_dir=ctx.work_dir,
            device=ctx.device,
            seed=self.config.seed if self.config.seed is not None else ctx.seed,
            evaluate=evaluate,
        )
        return model.replace(model=result.model.cpu().float().eval())
