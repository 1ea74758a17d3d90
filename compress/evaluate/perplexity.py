"""Causal-LM perplexity as in the GPTQ paper, with the sliding window of the Hugging Face perplexity guide.

The split's texts are joined with "\\n\\n" and tokenized once; the token stream is cut into windows of
`seq_len` tokens starting every `stride` tokens. With `stride == seq_len` (the default) windows do not overlap
and every token but each window's first is scored, as in GPTQ. With a smaller stride, each window after the
first scores only the tokens the previous window did not reach, the earlier ones serving as context.
Tokens after the last full window are dropped (GPTQ drops the remainder too); a stream shorter than one
window is scored as a single shorter window. Perplexity = exp(total NLL / scored tokens).

The NLL is reduced on the device the model ran on, a chunk of positions at a time; only per-window means
reach the host.
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
from compress.runtime.base import HiddenStates, RuntimeOutput

# Logits of at most this many elements exist at once (float32 for the log-softmax), so a 150k-token vocabulary
# over four 2048-token windows needs ~256 MB of scratch, not the 5 GB of the whole batch's logits.
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


def window_mean_nll(outputs: RuntimeOutput, input_ids: np.ndarray, score_start: np.ndarray) -> np.ndarray:
    """Mean NLL of each window's scored tokens, computed where `outputs` are; only (batch,) values leave.

    `outputs` are (batch, seq, vocab) logits (numpy or a tensor on any device) or `HiddenStates`, whose head
    is applied here. Either way at most `_CHUNK_ELEMENTS` logits exist at once (as float32), so the memory
    stays bounded by the chunk, not by batch × seq × vocab.
    """
    if isinstance(outputs, HiddenStates):
        source, head, width = outputs.states, outputs.head, outputs.width
    else:
        source, head = torch.as_tensor(outputs), None
        width = int(source.shape[-1])
    device = source.device
    ids = torch.as_tensor(input_ids, device=device)
    first = torch.as_tensor(score_start, device=device)
    # Position t predicts token t + 1: the predicting positions of row r are score_start[r] - 1 … seq - 2.
    predicting = torch.arange(ids.shape[1] - 1, device=device)[None, :] >= (first[:, None] - 1)
    rows, positions = predicting.nonzero(as_tuple=True)
    targets = ids[rows, positions + 1]
    totals = torch.zeros(ids.shape[0], dtype=torch.float64, device=device)
    chunk = max(1, _CHUNK_ELEMENTS // width)
    with torch.inference_mode():
        for begin in range(0, rows.shape[0], chunk):
            at = slice(begin, begin + chunk)
            picked = source[rows[at], positions[at]]
            logits = (head(picked) if head is not None else picked).float()
            nll = torch.nn.functional.cross_entropy(logits, targets[at], reduction="none")
            totals.index_add_(0, rows[at], nll.double())
    counts = predicting.sum(dim=1)
    return (totals / counts).cpu().numpy()


def reduce_to_nll(outputs: RuntimeOutput, batch: Batch) -> np.ndarray:
    assert batch.score_start is not None  # set by window_batches
    return window_mean_nll(outputs, batch.inputs["input_ids"], batch.score_start)
