"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

Columns are visited left to right as in GPTQ (whose Hessian H = 2/n Σ x xᵀ and inverse-Hessian factor it
shares); a weight is pruned by setting it to zero and pushing the error onto the columns not yet visited
(the OBS update), and which weights to prune is chosen as the loop goes: per block of `block_size` columns the
lowest w² / [H⁻¹]_cc² of the block for unstructured sparsity (adaptive mask selection), per group of M
columns the M - N lowest of each row for N:M. This follows the reference `sparsegpt.py` of IST-DASLab.
"""

from __future__ import annotations

import torch

from compress.prune.pattern import SparsityPattern
from compress.quantize.gptq import float_problem, inverse_hessian_factor


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: SparsityPattern,
    *,
    block_size: int = 128,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, float]:
    """Prune an (out, cols) weight given its inputs' Hessian; returns the pruned weight (float32) and the loss
    Σ (w - ŵ)² / (2 [H⁻¹]_cc²) of the reference. Works on the weight's device; `hessian` is not modified."""
    W, H = float_problem(weight, hessian, "SparseGPT")
    rows, columns = W.shape
    pattern.check(columns)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if pattern.structured and block_size % pattern.m:
        block_size = pattern.m * max(1, block_size // pattern.m)  # an N:M group never straddles two blocks
    Hinv = inverse_hessian_factor(H, dampening, method="SparseGPT")
    del H
    losses = torch.zeros(rows, device=W.device)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        diagonal = Hinv1.diagonal()
        Err1 = torch.zeros_like(W1)
        if pattern.structured:
            pruned = torch.zeros_like(W1, dtype=torch.bool)
        else:
            saliency = W1.pow(2) / diagonal.pow(2).unsqueeze(0)
            count = int(saliency.numel() * pattern.sparsity)
            pruned = torch.zeros_like(W1, dtype=torch.bool)
            if count:
                pruned.view(-1)[torch.topk(saliency.reshape(-1), count, largest=False).indices] = True
        for i in range(i2 - i1):
            if pattern.structured and i % pattern.m == 0:
                block = W1[:, i : i + pattern.m].pow(2) / diagonal[i : i + pattern.m].pow(2).unsqueeze(0)
                lowest = torch.topk(block, pattern.m - pattern.n, dim=1, largest=False).indices
                pruned.scatter_(1, i + lowest, True)
            w = W1[:, i]
            kept = torch.where(pruned[:, i], torch.zeros_like(w), w)
            error = (w - kept) / Hinv1[i, i]
            losses += error.pow(2) / 2
            W1[:, i:].sub_(torch.outer(error, Hinv1[i, i:]))
            W1[:, i] = kept
            Err1[:, i] = error
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, float(losses.sum().item())
