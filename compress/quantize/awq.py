"""AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration").

A few input channels carry most of the activation magnitude; scaling their weight columns up by s before RTN (and
the inputs down by 1/s, folded into the op that produces them) quantizes those columns more finely. The search
follows llm-awq's `auto_scale` / `auto_clip` (also what llm-compressor's AWQModifier does): s = mean|x|^ratio on a
grid of ratios in [0, 1), then a per-group clip ratio, each kept only where it lowers the output error.

Memory: calibration inputs reach 128 x 512 tokens x 11008 channels (2.9 GB in float32), and an MLP's outputs are
larger still, so no full (tokens, out) product is ever formed: tokens (or output rows, for the clip search) are
processed in chunks of at most `_CHUNK_ELEMENTS` float32 elements per intermediate (128 MiB), large enough for
the matmuls to run at full speed and small enough next to a 7B layer's weights on any accelerator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from compress.quantize.rtn import compute_qparams, fake_quantize, grouped, rtn_quantize
from compress.quantize.scheme import QuantScheme

_CHUNK_ELEMENTS = 1 << 25

# llm-awq clamps mean|x|^ratio from below so that dead channels do not get a zero (or near-zero) scale.
_MIN_SCALE = 1e-4


def _rows(inputs: torch.Tensor) -> torch.Tensor:
    """(..., cols) -> (n, cols) view of the input vectors."""
    return inputs.reshape(-1, inputs.shape[-1])


def activation_mean(inputs: torch.Tensor) -> torch.Tensor:
    """Mean |x| per input channel (cols,), the AWQ saliency statistic, accumulated in float32 chunks."""
    x = _rows(inputs)
    chunk = max(1, _CHUNK_ELEMENTS // x.shape[1])
    total = torch.zeros(x.shape[1], device=x.device, dtype=torch.float32)
    for start in range(0, x.shape[0], chunk):
        total += x[start : start + chunk].float().abs().sum(dim=0)
    return total / max(1, x.shape[0])


def _output_error(inputs: torch.Tensor, difference: torch.Tensor) -> float:
    """‖X Dᵀ‖² for D = W - W' (out, cols): the squared error of the outputs, chunked over tokens."""
    chunk = max(1, _CHUNK_ELEMENTS // max(difference.shape[0], difference.shape[1]))
    d = difference.t()
    error = 0.0
    for start in range(0, inputs.shape[0], chunk):
        error += float((inputs[start : start + chunk].float() @ d).pow(2).sum().item())
    return error


def _fake_rtn(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    return rtn_quantize(weight, scheme).dequantize()


def activation_scale_search(
    weights: Sequence[torch.Tensor],
    inputs: torch.Tensor,
    scheme: QuantScheme,
    grid: int = 20,
    output_fn: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Best AWQ input-channel scales (cols,) for linears that all read `inputs` (n, cols) (e.g. q/k/v, gate/up).

    Candidates are s = mean|x|^ratio for ratio = k / grid, k = 0..grid-1, normalised by sqrt(max(s)·min(s)) as in
    llm-awq. Each is scored by quantizing W·diag(s) with RTN: by default the error ‖X Wᵀ - (X/s) Q(W·s)ᵀ‖² summed
    over `weights`; with `output_fn`, which maps a list of weights (shaped like `weights`, acting on unscaled
    inputs) to the block's output, the squared error of output_fn(Q(W·s)/s) against output_fn(W). Ratio 0 is
    s = 1, plain RTN, and a candidate replaces it only if strictly better, so the result never scores worse.
    """
    x = _rows(inputs)
    columns = x.shape[1]
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    scheme.check(columns)
    for weight in weights:
        if weight.ndim != 2 or weight.shape[1] != columns:
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not read inputs with {columns} channels")
    originals = [w.detach().float().to(x.device) for w in weights]
    x_mean = activation_mean(x)

    if output_fn is None:
        stacked = torch.cat(originals)

        def score(candidates: list[torch.Tensor]) -> float:
            return _output_error(x, stacked - torch.cat(candidates))

    else:
        fn = output_fn
        reference = fn(originals).float()

        def score(candidates: list[torch.Tensor]) -> float:
            return float((fn(candidates).float() - reference).pow(2).sum().item())

    best_error = math.inf
    best_scales = torch.ones(columns, device=x.device)
    for step in range(grid):
        scales = x_mean.pow(step / grid).clamp(min=_MIN_SCALE)
        scales = scales / (scales.max() * scales.min()).sqrt()
        # Q(W·s)/s acts on the original X exactly as Q(W·s) acts on X/s, so no scaled copy of X is needed.
        error = score([_fake_rtn(w * scales, scheme) / scales for w in originals])
        if error < best_error:
            best_error, best_scales = error, scales
    return best_scales


def clip_search(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    scheme: QuantScheme,
    grid: int = 20,
    max_shrink: float = 0.5,
    n_sample_tokens: int = 512,
) -> torch.Tensor:
    """Per-group clip ratio (out, groups) minimising each group's output error, as llm-awq's `auto_clip_layer`.

    For every output row and group, the ratios 1, 1 - 1/grid, ... down to 1 - max_shrink (exclusive) shrink the
    group's min/max (see `compute_qparams`), and the one with the lowest mean over tokens of (x_g · (w_g - q_g))²
    wins; ratio 1 (no clipping) is tried first and kept on ties, so no group scores worse than RTN. The score uses
    `n_sample_tokens` evenly spaced tokens of `inputs` (all of them if fewer). Pass the result to
    `rtn_quantize(..., clip_ratio=...)` or `compute_qparams`.
    """
    if not 0 <= max_shrink < 1:
        raise ValueError(f"max_shrink must be in [0, 1), got {max_shrink}")
    W = grouped(weight.detach().float(), scheme)
    rows, groups, size = W.shape
    x = _rows(inputs)
    if x.shape[1] != groups * size:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not read inputs with {x.shape[1]} channels")
    # Even spacing (llm-awq takes every n // n_sample-th token) samples across all calibration sequences.
    x = x[:: max(1, x.shape[0] // max(1, n_sample_tokens))][:n_sample_tokens].float().to(W.device)
    tokens = x.shape[0]
    x_groups = x.reshape(tokens, groups, size).transpose(0, 1)  # (groups, tokens, size)
    ratios = [1 - step / grid for step in range(max(1, int(max_shrink * grid)))]

    best_ratio = torch.ones(rows, groups, device=W.device)
    # Output rows per batch, so that the (groups, tokens, rows) error product stays within the chunk budget.
    batch = max(1, _CHUNK_ELEMENTS // max(1, tokens * groups))
    for r0 in range(0, rows, batch):
        w = W[r0 : r0 + batch]
        best_error = torch.full(w.shape[:2], math.inf, device=W.device)
        for ratio in ratios:
            scale, zero_point = compute_qparams(w, scheme, ratio)
            q = fake_quantize(w, scale[..., None], None if zero_point is None else zero_point[..., None], scheme)
            # (groups, tokens, size) @ (groups, size, rows): each group's share of each output, error only.
            error = torch.bmm(x_groups, (w - q).permute(1, 2, 0)).pow(2).mean(dim=1).t()
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_ratio[r0 : r0 + batch][better] = ratio
    return best_ratio


def _fold_targets(previous: nn.Module | torch.Tensor | Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """The tensors whose output channel (dim 0) must be divided by s: weight and bias of `previous`."""
    if isinstance(previous, torch.Tensor):
        return [previous]
    if isinstance(previous, nn.Module):
        weight = getattr(previous, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"cannot fold AWQ scales into {type(previous).__name__}: it has no weight")
        bias = getattr(previous, "bias", None)
        return [weight] + ([bias] if isinstance(bias, torch.Tensor) else [])
    return [t for t in previous if t is not None]


def apply_awq_scale(
    weights: Sequence[nn.Linear | torch.Tensor],
    previous: nn.Module | torch.Tensor | Sequence[torch.Tensor | None],
    scales: torch.Tensor,
) -> None:
    """Fold AWQ scales in place: W[:, c] *= s[c] in every weight, and output channel c of `previous` /= s[c].

    `previous` produces the weights' input through a channel-wise linear path: a norm (its weight Tensor, or the
    module, whose bias is divided too), or a Linear (module, or its (weight, bias)) such as v_proj before o_proj.
    The composed function is unchanged in exact arithmetic. Norms that apply (1 + weight), like Gemma's RMSNorm,
    cannot be folded this way. Everything is checked before anything is modified.
    """
    s = scales.detach().float()
    if s.ndim != 1 or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError("AWQ scales must be a 1-D tensor of finite positive values")
    targets = _fold_targets(previous)
    tensors = [w.weight if isinstance(w, nn.Module) else w for w in weights]
    for t in targets:
        if t.shape[0] != s.shape[0]:
            raise ValueError(f"cannot fold {s.shape[0]} scales into an op with {t.shape[0]} output channels")
    for w in tensors:
        if w.ndim != 2 or w.shape[1] != s.shape[0]:
            raise ValueError(f"cannot scale a weight of shape {tuple(w.shape)} by {s.shape[0]} input-channel scales")
    with torch.no_grad():
        for t in targets:
            divisor = s.to(t.device).view(-1, *([1] * (t.ndim - 1)))
            t.copy_((t.float() / divisor).to(t.dtype))
        for w in tensors:
            w.copy_((w.float() * s.to(w.device)).to(w.dtype))
