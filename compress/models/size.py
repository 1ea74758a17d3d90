"""Parameter counts and serialized sizes that count quantized weights at their real width."""

from __future__ import annotations

from pathlib import Path

import torch


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters including those packed inside quantized modules (which `parameters()` does not yield)."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight):  # dynamic-quantized Linear keeps its weight packed
            packed = weight()
            total += packed.numel()
            bias = module.bias()
            total += bias.numel() if bias is not None else 0
    return total


# Files that hold a saved model's weights (safetensors, possibly sharded; torch pickles; GGUF): the size of a
# stage on disk, without its config and tokenizer files.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def saved_weight_bytes(path: Path) -> int:
    """Bytes of the weight files in a saved model folder (0 when it holds none)."""
    return directory_bytes(path, WEIGHT_SUFFIXES)


def directory_bytes(path: Path, suffixes: tuple[str, ...] | None = None) -> int:
    """Bytes of the files under `path`, optionally only those with the given suffixes."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if suffixes is None or p.suffix in suffixes)
