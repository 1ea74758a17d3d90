"""Teacher logits computed once and kept on disk, so epochs and resumed runs never re-run the teacher.

Valid only while the teacher's inputs never change between epochs: no hidden-state or attention transfer
(those need the teacher's internals for every batch) and no data augmentation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from compress.data.text_data import TextData
from compress.io import atomic_write_bytes
from compress.train.batches import forward_inputs, pad_collate, tokenize_rows
from compress.train.fingerprint import hash_json, model_fingerprint, tokenizer_fingerprint


def teacher_logits_path(
    cache_dir: Path,
    teacher: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    max_length: int,
) -> Path:
    """The cache file's name is a hash of everything the logits depend on: weights, tokenizer, rows."""
    key = hash_json([model_fingerprint(teacher), tokenizer_fingerprint(tokenizer), data.fingerprint(), max_length])
    return cache_dir / f"teacher-logits-{key[:24]}.safetensors"


@torch.inference_mode()
def compute_teacher_logits(
    teacher: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    max_length: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> torch.Tensor:
    """Logits (rows, classes) in row order; rows are run in length order so padding costs little."""
    rows = tokenize_rows(data, tokenizer, max_length)
    rows.sort(key=lambda r: len(r["input_ids"]))
    collate = pad_collate(tokenizer.pad_token_id or 0)
    teacher = teacher.to(device).eval()
    out: torch.Tensor | None = None
    for start in tqdm(range(0, len(rows), batch_size), desc="teacher logits", disable=not progress):
        batch = collate(rows[start : start + batch_size])
        inputs = {k: v.to(device) for k, v in forward_inputs(teacher, batch).items()}
        logits = teacher(**inputs).logits.float().cpu()
        if out is None:
            out = torch.empty((len(rows), logits.shape[-1]), dtype=torch.float32)
        out[batch["index"]] = logits
    return out if out is not None else torch.empty((0, 0))


def cached_teacher_logits(
    teacher: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: TextData,
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    cache_dir: Path,
    progress: bool = True,
) -> torch.Tensor:
    """Read the logits from `cache_dir` if this teacher already ran on these rows; else compute, store."""
    path = teacher_logits_path(cache_dir, teacher, tokenizer, data, max_length)
    if path.exists():
        return load_file(str(path))["logits"]
    logits = compute_teacher_logits(teacher, tokenizer, data, max_length, batch_size, device, progress)
    atomic_write_bytes(path, save({"logits": logits.contiguous()}))
    return logits
