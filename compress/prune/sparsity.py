"""How sparse a model is: the share of exactly-zero weights in its Linear layers, overall and per kind of layer.

Quantized layers count a weight as zero when its code equals its zero point (it dequantizes to exactly 0), so
a pruned-then-quantized stage reports the sparsity it kept.
"""

from __future__ import annotations

import torch

from compress.prune.masks import PRUNED_LAYER_SPARSITY
from compress.prune.pattern import SparsityPattern


def _zero_mask(module: torch.nn.Module) -> torch.Tensor | None:
    from compress.models.compressed_tensors import QuantizedLinear

    if isinstance(module, QuantizedLinear):
        return module.to_quantized().dequantize() == 0
    if isinstance(module, torch.nn.Linear):
        return module.weight.detach() == 0
    return None


def layer_sparsity(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(zeros, weights) of every Linear (float or quantized), by module name."""
    counts = {}
    for name, module in model.named_modules():
        zeros = _zero_mask(module)
        if zeros is not None:
            counts[name] = (int(zeros.sum()), zeros.numel())
    return counts


def measure_sparsity(model: torch.nn.Module) -> dict[str, float] | None:
    """{"overall": share of zero weights over all Linears, "<kind>": share within each kind} or None (no Linear).

    A kind is a module's last name component (`q_proj`, `down_proj`, `lm_head`, ...): the same for every
    architecture map, no per-model table needed.
    """
    counts = layer_sparsity(model)
    if not counts:
        return None
    kinds: dict[str, list[int]] = {}
    for name, (zeros, total) in counts.items():
        kind = kinds.setdefault(name.rpartition(".")[2] or name, [0, 0])
        kind[0] += zeros
        kind[1] += total
    overall = sum(z for z, _ in counts.values()) / sum(t for _, t in counts.values())
    return {"overall": round(overall, 4), **{k: round(z / t, 4) for k, (z, t) in sorted(kinds.items())}}


def follows_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every block of `m` consecutive inputs of every row holds at most `n` non-zeros."""
    rows, columns = weight.shape
    if columns % m:
        return False
    return bool(((weight != 0).reshape(rows, columns // m, m).sum(dim=-1) <= n).all())


def zero_share(weights: list[torch.Tensor]) -> float:
    """Share of exactly-zero entries over all `weights`."""
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def sparsity_structure(weights: list[torch.Tensor], share: float | None = None) -> str | None:
    """ "2:4" when every given weight follows 2:4 and is pruned, "unstructured" when pruned otherwise, None when dense.

    The label compressed-tensors' `sparsity_config.sparsity_structure` uses (vLLM picks 2:4 kernels by it).
    `share` is `zero_share(weights)` when the caller has it already.
    """
    if not weights:
        return None
    if (zero_share(weights) if share is None else share) < PRUNED_LAYER_SPARSITY:
        return None
    two_four = SparsityPattern.parse("2:4", None)
    if all(follows_n_m(w, two_four.n, two_four.m) for w in weights):
        return two_four.name
    return "unstructured"
