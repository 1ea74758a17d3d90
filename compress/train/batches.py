"""Tokenized rows, length-grouped batches and dynamic padding.

Padding every batch to its own longest row, and grouping rows of similar length into the same batch, cuts the
work of a training epoch roughly in half on SST-2-like data compared with random batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData

Row = dict[str, Any]
IGNORE_LABEL = -100  # rows without a label (e.g. unlabeled distillation text) carry this


def tokenize_rows(
    data: TextData, tokenizer: PreTrainedTokenizerBase, max_length: int, index_offset: int = 0
) -> list[Row]:
    """One dict per row: token ids (unpadded, truncated to `max_length`), label (or -100) and row index."""
    encoded = tokenizer(
        data.texts,
        data.pairs,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    labels = data.labels if data.labels is not None else [IGNORE_LABEL] * len(data)
    return [
        {**{k: encoded[k][i] for k in keys}, "labels": int(labels[i]), "index": index_offset + i}
        for i in range(len(data))
    ]


class LengthGroupedBatches:
    """Batches of row indices: shuffle, sort chunks of `group_batches` batches by length, shuffle batch order.

    The order depends only on (seed, epoch), never on global random state, so a resumed run replays exactly
    the batches an uninterrupted one would have seen.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_batches: int = 50) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.drop_last = False  # read by accelerate when it shards batches across processes
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        chunk = self.batch_size * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            group = order[start : start + chunk]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches += [group[i : i + self.batch_size].tolist() for i in range(0, len(group), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        # The longest batch goes first, so running out of memory happens at once rather than hours in.
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max(), default=0)
        if batches:
            batches.insert(0, batches.pop(longest))
        yield from batches


def pad_collate(pad_token_id: int) -> Callable[[list[Row]], dict[str, torch.Tensor]]:
    """Pad each batch to its own longest row; build the attention mask from the true lengths."""

    def collate(rows: list[Row]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {
            "input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        }
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
            batch["attention_mask"][i, :n] = 1
            if "token_type_ids" in batch:
                batch["token_type_ids"][i, :n] = torch.tensor(row["token_type_ids"])
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return batch

    return collate


def forward_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tokenizer outputs this model's forward takes (DistilBERT, for one, has no token_type_ids)."""
    import inspect

    wrapped = getattr(model, "module", model)  # DDP/FSDP keep the real model in `.module`
    accepted = inspect.signature(wrapped.forward).parameters
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch and k in accepted}
