"""Helpers for the training tests (finetune, distill): a stage context, accuracy and loss of a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.models.handle import ModelHandle
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext

CPU = torch.device("cpu")


def accuracy(handle: ModelHandle, data: TextData, max_length: int = 128) -> float:
    """Argmax accuracy through the TorchRuntime, as the evaluator would run the model."""
    runtime = TorchRuntime(handle)
    correct = 0
    for start in range(0, len(data), 64):
        encoded = handle.tokenizer(
            data.texts[start : start + 64],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        predicted = runtime.predict({k: v.astype(np.int64) for k, v in encoded.items()}).argmax(-1).numpy()
        correct += int((predicted == np.asarray(data.labels[start : start + 64])).sum())
    return correct / len(data)


def mean_loss(handle: ModelHandle, data: TextData) -> float:
    """Cross-entropy of the model on `data` (eval mode, one batch)."""
    encoded = handle.tokenizer(data.texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return float(handle.model.eval()(**encoded, labels=torch.tensor(data.labels)).loss)


def make_context(train: TextData, dev: TextData, work_dir: Path, scored: list | None = None) -> StageContext:
    def score(handle: ModelHandle) -> dict[str, float]:
        if scored is not None:
            scored.append(handle)
        return {"accuracy": accuracy(handle, dev)}

    return StageContext(
        train_data=lambda: train,
        eval_data=lambda: dev,
        calibration_data=lambda n: train.head(n),
        score=score,
        eval_spec=EvalSpec(),
        device=CPU,
        work_dir=work_dir,
        seed=0,
    )
