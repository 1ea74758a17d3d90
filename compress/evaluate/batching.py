"""Tokenized batches in file order, padded per batch to its longest row, timed apart from inference."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData


@dataclass
class Batch:
    """One model input: int64 arrays named as the tokenizer names them, plus what the evaluator records."""

    inputs: dict[str, np.ndarray]
    size: int
    real_tokens: int = 0  # unpadded tokens in the batch
    tokenize_s: float = 0.0
    # Causal LM only: per row, the first position whose token is scored (earlier ones are context).
    score_start: np.ndarray | None = None


def batch_count(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)


def tokenize_batches(
    tokenizer: PreTrainedTokenizerBase, data: TextData, batch_size: int, max_length: int
) -> Iterator[Batch]:
    """Batches of `data` in file order; each is padded to its own longest row (dynamic padding)."""
    for start in range(0, len(data), batch_size):
        texts = data.texts[start : start + batch_size]
        pairs = data.pairs[start : start + batch_size] if data.pairs is not None else None
        began = time.perf_counter()
        encoded = tokenizer(
            texts, pairs, truncation=True, max_length=max_length, padding="longest", return_tensors="np"
        )
        inputs = {name: np.asarray(array, dtype=np.int64) for name, array in encoded.items()}
        tokenize_s = time.perf_counter() - began
        mask = inputs.get("attention_mask")
        real_tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].size)
        yield Batch(inputs=inputs, size=len(texts), real_tokens=real_tokens, tokenize_s=tokenize_s)
