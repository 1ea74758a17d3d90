"""Masks from importance scores (higher = keep), and keeping zeros at zero while a pruned model trains.

A mask is a bool tensor shaped like the weight, True where the weight is kept.
"""

from __future__ import annotations

from typing import Literal

import torch

from compress.prune.pattern import SparsityPattern

Scope = Literal["row", "layer"]


def keep_mask(scores: torch.Tensor, pattern: SparsityPattern, scope: Scope = "row") -> torch.Tensor:
    """Keep the highest-scoring weights of an (out, in) score matrix under `pattern`.

    Unstructured: the lowest `sparsity` fraction is pruned within each row (`scope="row"`, Wanda's comparison
    group) or over the whole matrix (`"layer"`, the usual magnitude baseline). N:M: the M - N lowest of every
    block of M consecutive inputs. Exactly that many weights are pruned even when scores tie.
    """
    rows, columns = scores.shape
    mask = torch.ones_like(scores, dtype=torch.bool)
    if pattern.structured:
        pattern.check(columns)
        m, pruned = pattern.m, pattern.m - pattern.n
        blocks = scores.reshape(rows, columns // m, m)
        lowest = torch.topk(blocks, pruned, dim=-1, largest=False).indices
        return mask.reshape(rows, columns // m, m).scatter_(-1, lowest, False).reshape(rows, columns)
    if scope == "row":
        count = int(columns * pattern.sparsity)
        if count:
            mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, False)
        return mask
    count = int(scores.numel() * pattern.sparsity)
    if count:
        mask.view(-1)[torch.topk(scores.reshape(-1), count, largest=False).indices] = False
    return mask


def global_threshold(scores: list[torch.Tensor], sparsity: float) -> float:
    """The score below which `sparsity` of all the given scores fall (one threshold over many layers)."""
    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores])
    count = int(flat.numel() * sparsity)
    if count == 0:
        return float("-inf")
    return float(torch.kthvalue(flat, count).values)


# A layer with at least this share of weights exactly zero is taken as pruned: trained dense weights are
# essentially never exactly zero, so this separates pruned layers from dense ones without extra metadata.
PRUNED_LAYER_SPARSITY = 0.05


def zero_masks(module: torch.nn.Module, min_sparsity: float = PRUNED_LAYER_SPARSITY) -> dict[str, torch.Tensor]:
    """Keep-masks (weight != 0) of every Linear whose weight is at least `min_sparsity` zeros, by module name."""
    masks = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear):
            keep = layer.weight.detach() != 0
            if 1 - keep.float().mean().item() >= min_sparsity:
                masks[name] = keep
    return masks


class SparsityKeeper:
    """Re-zeroes pruned weights after every optimizer step, so recovery training does not fill them back in.

    AdamW moves every weight with a gradient (and decays them), zeros included; masking after each step keeps
    the pattern exactly, N:M included.
    """

    def __init__(self, module: torch.nn.Module, min_sparsity: float = PRUNED_LAYER_SPARSITY) -> None:
        self._pairs = [
            (module.get_submodule(name).weight, mask) for name, mask in zero_masks(module, min_sparsity).items()
        ]

    def __len__(self) -> int:
        return len(self._pairs)

    @torch.no_grad()
    def apply(self) -> None:
        for weight, mask in self._pairs:
            weight.mul_(mask.to(weight.device))
