"""The query, key and value projections of one layer, captured during a forward pass (MiniLMv2's relations)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from compress.architectures.blocks import block_map


@contextlib.contextmanager
def captured_qkv(model: torch.nn.Module, layer: int) -> Iterator[list[torch.Tensor]]:
    """Within the block, forward passes of `model` append layer `layer`'s Q, K and V outputs (in that order) to the
    yielded list; negative `layer` counts from the end. The architecture map says where they live."""
    blocks, layers_path = block_map(model)
    layers = model.get_submodule(layers_path)
    block = layers[layer]
    outputs: list[torch.Tensor] = []
    hooks = [
        block.get_submodule(path).register_forward_hook(lambda _m, _i, out: outputs.append(out))
        for path in (blocks.query, blocks.key, blocks.value)
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def qkv_widths(model: torch.nn.Module, layer: int) -> list[int]:
    """Output widths of layer `layer`'s query, key and value projections (a pruned model's may be narrower)."""
    blocks, layers_path = block_map(model)
    block = model.get_submodule(layers_path)[layer]
    return [block.get_submodule(path).out_features for path in (blocks.query, blocks.key, blocks.value)]
