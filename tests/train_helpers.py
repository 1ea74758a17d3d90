"""Helpers for the training tests (finetune, distill): a word-level tokenizer, a stage context, accuracy."""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import numpy as np
import torch
from conftest import SST2_DIR
from transformers import BertTokenizerFast

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.models.handle import ModelHandle
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext

CPU = torch.device("cpu")


@functools.cache
def word_tokenizer() -> BertTokenizerFast:
    """A WordPiece tokenizer over the 2,000 most frequent SST-2 train words.

    Built from a vocabulary dict: transformers 5 ignores `vocab_file=` in BertTokenizerFast (the result holds
    only the five special tokens), so a model could not learn anything through such a tokenizer.
    """
    lines = (SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()[1:20001]
    counts = collections.Counter(w for line in lines for w in line.rsplit("\t", 1)[0].split())
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(w for w, _ in counts.most_common(2000))]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, do_lower_case=True)


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
        predicted = runtime.predict({k: v.astype(np.int64) for k, v in encoded.items()}).argmax(-1)
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
