"""Calibration windows for LLM quantization: random fixed-length token windows from the user's text.

As in GPTQ and AWQ: the calibration documents are tokenized, joined into one stream, and `samples` windows of
`seq_len` tokens are drawn at seeded random offsets (GPTQ draws one window per random C4 document; with short
documents, as in the bundled C4 sample, windows over the joined stream keep every window full-length).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData
from compress.errors import DataError


def calibration_windows(
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    samples: int,
    seq_len: int,
    seed: int,
    where: str = "calibration",
) -> torch.Tensor:
    """(samples, seq_len) int64 token ids; DataError naming `where` when the text is too short."""
    separator = tokenizer.eos_token or "\n\n"
    ids = tokenizer(separator.join(data.texts), return_tensors="pt", verbose=False)["input_ids"][0]
    needed = seq_len + samples  # room for `samples` distinct start offsets
    if ids.numel() < needed:
        raise DataError(
            f"the calibration text ({data.source or 'calibration split'}) has {ids.numel():,} tokens; "
            f"{samples} windows of {seq_len} tokens need at least {needed:,}",
            where=f"{where}.samples",
            fix=f"lower {where}.samples or {where}.seq_len, or give more calibration text ({where}.data)",
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=generator)
    return torch.stack([ids[start : start + seq_len] for start in starts.tolist()])
