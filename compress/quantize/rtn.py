"""Round-to-nearest (RTN) quantization: min/max quantization parameters and the integer rounding every algorithm
shares.

The formulas are those of compressed-tensors' `calculate_qparams` / `fake_quantize`, so a weight quantized here
dequantizes identically once loaded by vLLM or transformers:

- asymmetric: the range [min, max] always includes 0, `scale = (max - min) / (2**bits - 1)`,
  `zero_point = clamp(round(qmin - min / scale))`;
- symmetric: `scale = max(|min|, |max|) / (2**bits / 2)`, no zero point. The largest positive value then maps to
  `qmax + 1` and is clamped to `qmax`: that is the compressed-tensors convention (one more negative level is used,
  none is wasted), and it is what a checkpoint's consumer expects;
- `q = clamp(round(w / scale + zero_point), qmin, qmax)` and `w ≈ (q - zero_point) * scale`.
"""

from __future__ import annotations

import torch

from compress.quantize.scheme import QuantizedWeight, QuantScheme

# Scales of all-zero rows/groups become this instead of 0, so that `w / scale` stays finite; compressed-tensors
# uses the float32 epsilon too.
_SCALE_EPS = torch.finfo(torch.float32).eps


def compute_qparams(
    weight: torch.Tensor, scheme: QuantScheme, clip_ratio: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point of each row of `weight` (..., cols), reducing over the last dimension.

    Pass one group as the last dimension (e.g. a (out, groups, group_size) view) to get (out, groups) parameters.
    `clip_ratio` (a float, or a tensor broadcastable to the leading dimensions) shrinks min and max before the
    parameters are derived: values outside the shrunk range are clamped by the rounding. AWQ's clip search and
    GPTQ's MSE grid both shrink this way. Returns float32 scale (...,) and int8 zero point (...,) or None.
    """
    weight = weight.float()
    # Including 0 keeps zero exactly representable (padding and pruned weights stay 0 after the round trip).
    zeros = torch.zeros(weight.shape[:-1], device=weight.device)
    low = torch.minimum(weight.amin(dim=-1), zeros) * clip_ratio
    high = torch.maximum(weight.amax(dim=-1), zeros) * clip_ratio
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        scale = torch.maximum(low.abs(), high.abs()) / ((qmax - qmin) / 2)
        return scale.clamp(min=_SCALE_EPS), None
    scale = ((high - low) / (qmax - qmin)).clamp(min=_SCALE_EPS)
    zero_point = torch.round(qmin - low / scale).clamp(qmin, qmax).to(torch.int8)
    return scale, zero_point


def quantize_columns(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: QuantScheme
) -> torch.Tensor:
    """Integer codes (int8) of `weight` under `scale`/`zero_point`, which broadcast against it.

    Give (out, 1) parameters for an (out, k) block of columns and (out,) parameters for a single (out,) column.
    """
    scaled = weight.float() / scale
    if zero_point is not None:
        scaled = scaled + zero_point.float()
    return torch.round(scaled).clamp(scheme.qmin, scheme.qmax).to(torch.int8)


def dequantize_columns(values: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """Float32 `(values - zero_point) * scale`, with the same broadcasting as `quantize_columns`."""
    values = values.float()
    if zero_point is not None:
        values = values - zero_point.float()
    return values * scale


def fake_quantize(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: QuantScheme
) -> torch.Tensor:
    """Quantize then dequantize: the float32 weight the quantized checkpoint will compute with."""
    return dequantize_columns(quantize_columns(weight, scale, zero_point, scheme), scale, zero_point)


def grouped(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """(out, cols) -> (out, groups, group_size) view, one group per output channel when `group_size` is None."""
    scheme.check(weight.shape[1])
    return weight.reshape(weight.shape[0], scheme.groups(weight.shape[1]), -1)


def rtn_quantize(
    weight: torch.Tensor, scheme: QuantScheme, clip_ratio: float | torch.Tensor | None = None
) -> QuantizedWeight:
    """Round-to-nearest quantization of an (out, cols) weight, per output channel or per group of columns.

    `clip_ratio` is None (no clipping), a float or an (out, groups) tensor, as returned by AWQ's `clip_search`.
    Raises ValueError when `group_size` does not divide `cols`.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected an (out, in) weight matrix, got shape {tuple(weight.shape)}")
    groups = grouped(weight.float(), scheme)
    scale, zero_point = compute_qparams(groups, scheme, 1.0 if clip_ratio is None else clip_ratio)
    values = quantize_columns(groups, scale[..., None], None if zero_point is None else zero_point[..., None], scheme)
    return QuantizedWeight(values=values.reshape(weight.shape), scale=scale, zero_point=zero_point, scheme=scheme)
