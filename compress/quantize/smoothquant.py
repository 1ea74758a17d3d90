"""SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models").

A few input channels of an LLM's Linear layers carry activations 10-100x larger than the rest, so one int8 scale
per token wastes most of its levels on them. Per-channel scales s_j move that range into the weights: the op
producing the input (a norm) divides channel j by s_j and the Linears reading it multiply weight column j by
s_j, which leaves the float function unchanged (`compress.quantize.awq.apply_awq_scale` does the fold) while
flattening the activations. With migration strength α,

    s_j = max|X_j|^α / max|W_j|^(1-α)

where max|X_j| is channel j's largest magnitude over the calibration tokens and max|W_j| the largest magnitude
of column j over every Linear reading X (q/k/v together, gate/up together). As in the reference
implementation (mit-han-lab/smoothquant, `smooth_ln_fcs`), the weight maxima and the scales are clamped from
below at 1e-5, so dead channels and zero columns give finite, positive scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The reference clamps both the weight maxima and the scales at this value.
_MIN = 1e-5


def channel_absmax(inputs: torch.Tensor, running: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel max |x| (cols,) of `inputs` (..., cols), in float32, folded into a `running` maximum."""
    current = inputs.detach().reshape(-1, inputs.shape[-1]).abs().amax(dim=0).float()
    return current if running is None else torch.maximum(running, current.to(running.device))


def smoothing_scales(activation_absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel scales (cols,) for Linears `weights` (each (out, cols)) reading one input.

    `activation_absmax` (cols,) is the input's per-channel max |x| over the calibration tokens
    (`channel_absmax`); α in [0, 1] moves that much of the difficulty into the weights (0.5 in the paper).
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if activation_absmax.ndim != 1:
        raise ValueError(f"activation_absmax must be 1-D (cols,), got shape {tuple(activation_absmax.shape)}")
    if not weights:
        raise ValueError("smoothing needs at least one weight reading the input")
    columns = activation_absmax.shape[0]
    for weight in weights:
        if weight.ndim != 2 or weight.shape[1] != columns:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not read inputs with {columns} channels")
    device = activation_absmax.device
    weight_absmax = torch.stack([w.detach().to(device).float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    weight_absmax = weight_absmax.clamp(min=_MIN)
    scales = activation_absmax.float().pow(alpha) / weight_absmax.pow(1 - alpha)
    return scales.clamp(min=_MIN)


def outlier_ratio(activation_absmax: torch.Tensor) -> float:
    """max / median of the per-channel max |x|: how far the worst channel stands out (1 = flat)."""
    absmax = activation_absmax.float()
    return float(absmax.max() / absmax.median().clamp(min=torch.finfo(torch.float32).tiny))
