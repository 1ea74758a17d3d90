"""Content hashes that key checkpoints and caches: a cache made for other weights or data is never reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from compress.cache import feed_file


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    return hash_json({"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab()})


def path_fingerprint(path: Path) -> str:
    """sha256 over a file's bytes, or over a folder's files (relative names and bytes, in name order).

    A path that does not exist hashes to "missing": the key can still be computed, and the step that reads the
    path reports it. Streamed, so a model folder never has to fit in memory.
    """
    digest = hashlib.sha256()
    if path.is_file():
        feed_file(digest, path)
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            # Name and size first: no two folders feed the same bytes (a file's bytes may hold NULs).
            digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0".encode())
            feed_file(digest, file)
    else:
        return "missing"
    return digest.hexdigest()
