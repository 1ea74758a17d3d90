"""Causal-LM perplexity as in the GPTQ paper, with the sliding window of the Hugging Face perplexity guide.

The split's texts are joined with "\\n\\n" and tokenized once; the token stream is cut into windows of
`seq_len` tokens starting every `stride` tokens. With `stride == seq_len` (the default) windows do not overlap
and every token but each window's first is scored, as in GPTQ. With a smaller stride, each window after the
first scores only the tokens the previous window did not reach, the earlier ones serving as context.
Tokens after the last full window are dropped (GPTQ drops the remainder too); a stream shorter than one
window is scored as a single shorter window. Perplexity = exp(total NLL / scored tokens).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData
from compress.errors import DataError
from compress.evaluate.batching import Batch

# Logits of at most this many elements go through log-softmax at once, so a 150k-token vocabulary over a
# 2048-token window needs ~256 MB of scratch, not the whole window's worth.
_CHUNK_ELEMENTS = 2**26


@dataclass
class Windows:
    token_ids: np.ndarray  # (windows, length) int64
    score_start: np.ndarray  # (windows,) first scored position of each window
    tokenize_s: float  # tokenizing the whole joined text, once

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def token_counts(self) -> np.ndarray:
        """Scored tokens per window."""
        return self.token_ids.shape[1] - self.score_start


def make_windows(tokenizer: PreTrainedTokenizerBase, data: TextData, seq_len: int, stride: int | None) -> Windows:
    if len(data) == 0:
        raise DataError("the evaluation split has no rows", where="data.split", fix="point data at a non-empty split")
    began = time.perf_counter()
    encoded = tokenizer("\n\n".join(data.texts), return_tensors="np", verbose=False)
    token_ids = np.asarray(encoded["input_ids"][0], dtype=np.int64)
    tokenize_s = time.perf_counter() - began
    if token_ids.size < 2:
        raise DataError(
            f"the evaluation split tokenizes to {token_ids.size} token(s); perplexity needs at least 2",
            where="data.text",
            fix="check that data.text names the column holding the text",
        )
    if token_ids.size <= seq_len:
        return Windows(token_ids[None, :], np.array([1], dtype=np.int64), tokenize_s)
    # A stride longer than the window would leave tokens unscored.
    stride = min(stride or seq_len, seq_len)
    begins = range(0, token_ids.size - seq_len + 1, stride)
    rows, starts = [], []
    previous_end = 0
    for begin in begins:
        end = begin + seq_len
        rows.append(token_ids[begin:end])
        starts.append(max(1, seq_len - (end - previous_end)))  # position 0 has nothing to predict it
        previous_end = end
    return Windows(np.stack(rows), np.asarray(starts, dtype=np.int64), tokenize_s)


def window_batches(windows: Windows, batch_size: int) -> Iterator[Batch]:
    """Batches of whole windows; the one-off tokenization time is spread evenly over the batches."""
    batches = math.ceil(len(windows) / batch_size)
    for start in range(0, len(windows), batch_size):
        token_ids = windows.token_ids[start : start + batch_size]
        yield Batch(
            inputs={"input_ids": token_ids, "attention_mask": np.ones_like(token_ids)},
            size=int(token_ids.shape[0]),
            real_tokens=int(token_ids.size),
            tokenize_s=windows.tokenize_s / batches,
            score_start=windows.score_start[start : start + batch_size],
        )


def window_mean_nll(logits: np.ndarray, input_ids: np.ndarray, score_start: np.ndarray) -> np.ndarray:
    """Mean NLL of each window's scored tokens, from (batch, seq, vocab) logits, in float32 chunks."""
    chunk = max(1, _CHUNK_ELEMENTS // int(logits.shape[-1]))
    means = np.empty(logits.shape[0], dtype=np.float64)
    for row in range(logits.shape[0]):
        first = int(score_start[row])
        predicted = torch.as_tensor(logits[row, first - 1 : -1])  # position t predicts token t + 1
        targets = torch.as_tensor(input_ids[row, first:])
        total = 0.0
        for offset in range(0, targets.shape[0], chunk):
            piece = predicted[offset : offset + chunk].float()
            total += torch.nn.functional.cross_entropy(piece, targets[offset : offset + chunk], reduction="sum").item()
        means[row] = total / targets.shape[0]
    return means


def reduce_to_nll(logits: np.ndarray, batch: Batch) -> np.ndarray:
    assert batch.score_start is not None  # set by window_batches
    return window_mean_nll(logits, batch.inputs["input_ids"], batch.score_start)
