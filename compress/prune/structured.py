"""Structured pruning math: importance of attention-head groups and feed-forward neurons, and slicing Linears.

Importance comes from the weights alone (data-free, deterministic; the criteria the distill step's student slicing
uses too), or from activations on calibration text (`compress.prune.activations`). From the weights:
- head group g (a key/value head and the query heads reading it; one head without GQA):
  Σ ‖rows of g in Q, K, V‖ + ‖columns of g in O‖ (Frobenius norms);
- neuron n: Π ‖W_in[n, :]‖ over the input projections (gate and up) · ‖W_out[:, n]‖, a bound on how much it can
  add to the block's output.
Kept indices are sorted, so units keep their order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from compress.architectures.blocks import BlockMap, Heads
from compress.prune.activations import UnitStatistics, head_group_contributions, neuron_contributions


def top_indices(score: Tensor, k: int) -> Tensor:
    """The `k` highest-scoring indices, in increasing index order (ties go to the lower index)."""
    return torch.argsort(score, descending=True, stable=True)[:k].sort().values


def _weight(layer: torch.nn.Module, path: str) -> Tensor:
    return layer.get_submodule(path).weight.detach().float()


def head_group_scores(layer: torch.nn.Module, blocks: BlockMap, heads: Heads) -> Tensor:
    """One score per key/value group of one layer (as many groups as the layer has now)."""
    d = heads.head_dim
    key, value = _weight(layer, blocks.key), _weight(layer, blocks.value)
    groups = key.shape[0] // d
    query = _weight(layer, blocks.query).reshape(groups, -1)
    output = _weight(layer, blocks.attention_output)
    output = output.reshape(output.shape[0], groups, -1).transpose(0, 1).reshape(groups, -1)
    return (
        query.norm(dim=1)
        + key.reshape(groups, -1).norm(dim=1)
        + value.reshape(groups, -1).norm(dim=1)
        + (output.norm(dim=1))
    )


def neuron_scores(layer: torch.nn.Module, blocks: BlockMap) -> Tensor:
    score = _weight(layer, blocks.ffn_out).norm(dim=0)
    for path in blocks.ffn_in:
        score = score * _weight(layer, path).norm(dim=1)
    return score


def group_rows(groups: Tensor, width: int) -> Tensor:
    """Row indices of whole groups of `width` consecutive rows."""
    return (groups[:, None] * width + torch.arange(width)).reshape(-1)


def sliced_linear(
    linear: torch.nn.Linear, rows: Tensor | None = None, columns: Tensor | None = None
) -> torch.nn.Linear:
    """A new Linear keeping the given output rows and input columns of `linear` (its bias follows the rows)."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if columns is not None:
        weight = weight.index_select(1, columns.to(weight.device))
    bias = linear.bias
    smaller = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
    smaller = smaller.to(weight.dtype)
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias.detach() if rows is None else bias.detach().index_select(0, rows.to(bias.device)))
    return smaller


def set_module(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def prune_block(
    layer: torch.nn.Module,
    blocks: BlockMap,
    heads: Heads,
    keep_groups: int | None,
    keep_neurons: int | None,
    activations: UnitStatistics | None = None,
) -> None:
    """Keep the `keep_groups` best head groups and `keep_neurons` best neurons of one layer, in place: ranked by
    their weights, or with `activations` by their contributions on calibration text (`compress.prune.activations`)."""
    if keep_groups is not None:
        scores = (
            head_group_scores(layer, blocks, heads)
            if activations is None
            else head_group_contributions(layer, blocks, heads, activations.attention_gram)
        )
        kept = top_indices(scores, keep_groups)
        kv_rows = group_rows(kept, heads.head_dim)
        query_rows = group_rows(kept, heads.head_dim * heads.group)
        for path, rows in ((blocks.query, query_rows), (blocks.key, kv_rows), (blocks.value, kv_rows)):
            set_module(layer, path, sliced_linear(layer.get_submodule(path), rows=rows))
        output = layer.get_submodule(blocks.attention_output)
        set_module(layer, blocks.attention_output, sliced_linear(output, columns=query_rows))
    if keep_neurons is not None:
        scores = (
            neuron_scores(layer, blocks)
            if activations is None
            else neuron_contributions(layer, blocks, activations.ffn_square_norms)
        )
        kept = top_indices(scores, keep_neurons)
        for path in blocks.ffn_in:
            set_module(layer, path, sliced_linear(layer.get_submodule(path), rows=kept))
        set_module(layer, blocks.ffn_out, sliced_linear(layer.get_submodule(blocks.ffn_out), columns=kept))


def drop_layers(model: torch.nn.Module, layers_path: str, dropped: list[int]) -> None:
    """Remove whole layers, renumbering what layers index themselves by (Llama's KV-cache `layer_idx`)."""
    layers = model.get_submodule(layers_path)
    kept = [layer for index, layer in enumerate(layers) if index not in set(dropped)]
    set_module(model, layers_path, torch.nn.ModuleList(kept))
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [t for index, t in enumerate(layer_types) if index not in set(dropped)]
    config.num_hidden_layers = len(kept)
