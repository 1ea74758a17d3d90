"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

A weight's importance is its magnitude times the norm of the input feature it multiplies, |W_ij| · ‖X_j‖₂ over
the calibration tokens; weights are compared within their output row (or N:M block) and the lowest pruned.
No weight is updated.
"""

from __future__ import annotations

import torch


def accumulate_input_norms(squared: torch.Tensor | None, inputs: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Fold a batch of layer inputs (..., cols) into the running mean of x_j² over the tokens seen so far.

    A mean rather than a sum (the reference's `scaler_row`): the ranking within a row is the same, and float32
    does not overflow over many batches. Start from `(None, 0)`.
    """
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    if squared is None:
        squared = torch.zeros(x.shape[1], device=x.device)
    added = x.shape[0]
    if added == 0:
        return squared, count
    total = count + added
    squared.mul_(count / total).add_(x.pow(2).sum(dim=0), alpha=1 / total)
    return squared, total


def wanda_scores(weight: torch.Tensor, input_squared_mean: torch.Tensor) -> torch.Tensor:
    """|W| · ‖X_j‖ for an (out, in) weight, from `accumulate_input_norms`' per-column mean of x²."""
    if input_squared_mean.shape != (weight.shape[1],):
        shape = tuple(input_squared_mean.shape)
        raise ValueError(f"input statistics of shape {shape} for a weight of shape {tuple(weight.shape)}")
    return weight.detach().float().abs() * input_squared_mean.to(weight.device).sqrt().unsqueeze(0)
