"""Activation-based importance for structured pruning: each head group's and each feed-forward neuron's contribution
to its block's output on calibration text (Minitron-style: Muralidharan et al. 2024 rank units by activations).

A unit's contribution is exact, not a bound: a feed-forward neuron n adds x_n w_nᵀ to the block output (x_n its
activation over the calibration tokens, w_n the output Linear's column n), whose Frobenius norm is ‖x_n‖·‖w_n‖; a
head group g adds X_g W_gᵀ (X_g its heads' outputs, W_g their columns of the attention-output Linear), whose squared
Frobenius norm is Σ (W_g G_g ⊙ W_g) with G_g = X_gᵀ X_g. So the statistics are the input Gram matrix of the
attention-output Linear and the input column norms of the feed-forward-output Linear, over real tokens only
(padding masked out). A unit the weights rank high but the data never activates ranks low here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from compress.architectures.blocks import BlockMap, Heads, block_map

Hook = Callable[[torch.nn.Module, tuple[Tensor, ...]], None]


@dataclass
class UnitStatistics:
    """One layer's calibration statistics."""

    attention_gram: Tensor  # (width, width): Σ xxᵀ of the attention-output Linear's inputs
    ffn_square_norms: Tensor  # (neurons,): Σ x² per input column of the feed-forward-output Linear
    tokens: int = 0


def head_group_contributions(layer: torch.nn.Module, blocks: BlockMap, heads: Heads, gram: Tensor) -> Tensor:
    """‖X_g W_gᵀ‖_F for each key/value group g of one layer (its query heads' columns of the output Linear)."""
    weight = layer.get_submodule(blocks.attention_output).weight.detach().float()
    width = heads.head_dim * heads.group
    groups = weight.shape[1] // width
    scores = []
    for g in range(groups):
        columns = slice(g * width, (g + 1) * width)
        block = weight[:, columns]
        scores.append(((block @ gram[columns, columns]) * block).sum().clamp_min(0).sqrt())
    return torch.stack(scores)


def neuron_contributions(layer: torch.nn.Module, blocks: BlockMap, square_norms: Tensor) -> Tensor:
    """‖x_n‖ · ‖w_n‖ for each feed-forward neuron n of one layer."""
    weight = layer.get_submodule(blocks.ffn_out).weight.detach().float()
    return square_norms.sqrt() * weight.norm(dim=0)


def collect_unit_statistics(network: torch.nn.Module, batches: Iterable[dict[str, Tensor]]) -> list[UnitStatistics]:
    """Run `batches` (model inputs; `attention_mask` marks real tokens) through `network` and gather each layer's
    statistics. The network's outputs are discarded; its weights are not touched."""
    blocks, layers_path = block_map(network)
    layers = list(network.get_submodule(layers_path))
    statistics = []
    for layer in layers:
        width = layer.get_submodule(blocks.attention_output).in_features
        statistics.append(
            UnitStatistics(torch.zeros(width, width), torch.zeros(layer.get_submodule(blocks.ffn_out).in_features))
        )
    real: list[Tensor] = []  # the current batch's real-token mask, flattened, read by the hooks

    def token_rows(inputs: tuple[Tensor, ...]) -> Tensor:
        flat = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
        return (flat[real[0].to(flat.device)] if real[0].numel() == flat.shape[0] else flat).cpu()

    def on_attention(stats: UnitStatistics) -> Hook:
        def hook(_module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> None:
            rows = token_rows(inputs)
            stats.attention_gram += rows.T @ rows
            stats.tokens += rows.shape[0]

        return hook

    def on_ffn(stats: UnitStatistics) -> Hook:
        def hook(_module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> None:
            stats.ffn_square_norms += token_rows(inputs).square().sum(0)

        return hook

    hooks = [
        (layer.get_submodule(blocks.attention_output), on_attention(s))
        for layer, s in zip(layers, statistics, strict=True)
    ]
    hooks += [(layer.get_submodule(blocks.ffn_out), on_ffn(s)) for layer, s in zip(layers, statistics, strict=True)]
    was_training = network.training
    network.eval()
    device = next(network.parameters()).device
    try:
        with _hooks(hooks), torch.no_grad():
            for batch in batches:
                inputs = {name: tensor.to(device) for name, tensor in batch.items()}
                real[:] = [inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).reshape(-1).bool()]
                network(**inputs)
    finally:
        network.train(was_training)
    return statistics


@contextmanager
def _hooks(pairs: list[tuple[torch.nn.Module, Hook]]) -> Iterator[None]:
    handles = [module.register_forward_pre_hook(hook) for module, hook in pairs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
