"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Columns are quantized one at a time and each column's rounding error is pushed onto the columns not yet quantized,
weighted by the inverse Hessian of the layer-wise objective ‖X Wᵀ - X Ŵᵀ‖², H = 2/n Σ x xᵀ. This follows the
reference `gptq.py` of IST-DASLab as carried over by AutoGPTQ, GPTQModel and llm-compressor: dead columns, relative
dampening, the upper Cholesky factor of H⁻¹, lazy block updates, act_order and static groups. One deliberate
difference: a group's parameters come from its fully updated weights (see `_effective_block_size`), where the
reference reads columns of the current block that have not yet received that block's earlier updates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch

from compress.quantize.rtn import compute_qparams, dequantize_columns, grouped, quantize_columns
from compress.quantize.scheme import QuantizedWeight, QuantScheme

# Dampening fractions tried after the requested one when a Cholesky factorisation fails (an ill-conditioned H:
# too few calibration tokens for the layer width, or nearly collinear inputs). Each is 10x the last; at 10x the
# mean diagonal H is nearly diagonal and GPTQ degrades gracefully towards RTN.
_RETRY_DAMPENING = (0.1, 1.0, 10.0)


def accumulate_hessian(hessian: torch.Tensor | None, inputs: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    """Fold a batch of layer inputs (..., cols) into the running H = 2/n Σ x xᵀ over the n input vectors so far.

    Call it from a forward hook with the running `(hessian, count)`, starting from `(None, 0)`. The reference counts
    sequences rather than tokens, which only rescales H by the sequence length: GPTQ's result is invariant to
    that (dampening is relative to the mean diagonal); counting tokens makes H independent of how the
    calibration tokens were batched. Accumulates in float32 on the inputs' device.
    """
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    if hessian is None:
        hessian = torch.zeros(x.shape[1], x.shape[1], device=x.device, dtype=torch.float32)
    added = x.shape[0]
    if added == 0:
        return hessian, count
    total = count + added
    # Rescaling the old mean before adding keeps H a mean (no huge sums in float32 over many batches).
    hessian.mul_(count / total)
    hessian.addmm_(x.t(), x, alpha=2.0 / total)
    return hessian, total


def float_problem(weight: torch.Tensor, hessian: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copies of an (out, cols) weight and its inputs' Hessian on the weight's device, checked, with
    dead inputs (never non-zero: no information, any value works) zeroed in W and given H_ii = 1 so H stays
    invertible. Shared by GPTQ and SparseGPT (`method` names the caller in errors)."""
    if weight.ndim != 2:
        raise ValueError(f"expected an (out, in) weight matrix, got shape {tuple(weight.shape)}")
    columns = weight.shape[1]
    if hessian.shape != (columns, columns):
        raise ValueError(f"Hessian shape {tuple(hessian.shape)} does not match the weight's {columns} columns")
    W = weight.detach().to(dtype=torch.float32, copy=True)
    H = hessian.detach().to(device=W.device, dtype=torch.float32, copy=True)
    if not bool(torch.isfinite(H).all()):
        raise ValueError(f"{method}: the Hessian has non-finite entries (inf/nan in the calibration activations?)")
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, method: str = "GPTQ") -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·I)⁻¹, damp = dampening · mean(diag H); consumes `hessian` in place.

    Shared by GPTQ and SparseGPT (`method` names the caller in the error)."""
    diagonal = hessian.diagonal()
    mean_diagonal = diagonal.mean()
    applied = 0.0
    # Retry with a larger damp rather than falling back to RTN: a slightly over-damped GPTQ still beats RTN.
    for fraction in (dampening, *(f for f in _RETRY_DAMPENING if f > dampening)):
        diagonal.add_((fraction - applied) * mean_diagonal)
        applied = fraction
        lower, info = torch.linalg.cholesky_ex(hessian)
        if info.item() != 0:
            continue
        factor, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        if info.item() == 0 and bool(torch.isfinite(factor).all()):
            return factor
    raise ValueError(
        f"{method}: the Hessian is not positive definite even with dampening {applied} x its mean diagonal; "
        "calibrate on more (or more varied) tokens, or leave this layer out (`ignore`)"
    )


def _effective_block_size(block_size: int, group_size: int | None) -> int:
    """The lazy-update block, rounded to a multiple of the group size so that no group straddles two blocks.

    Inside a block every earlier column's update is applied eagerly, so a group wholly inside the current block is
    fully updated when the loop reaches its first column and its parameters are computed. The block size only
    trades memory traffic for speed; the result is otherwise the same.
    """
    if group_size is None:
        return block_size
    return group_size * max(1, block_size // group_size)


BlockKernel = Literal["auto", "torch", "triton"]


def _quantize_block(
    W: torch.Tensor,
    Hinv_block: torch.Tensor,
    first_column: int,
    width: int,
    values: torch.Tensor,
    err: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_of_column: torch.Tensor | None,
    scheme: QuantScheme,
    keep: torch.Tensor | None = None,
) -> None:
    """One lazy block, column by column: codes into `values`, scaled errors into `err` (rows, width).

    `keep` (rows, cols; 1.0 kept, 0.0 pruned), when given, stops error updates from reaching pruned weights,
    which therefore stay exactly 0 and quantize to exactly 0.

    W's columns [first_column, first_column + width) are read, not modified. With `group_of_column` None the
    groups are dynamic: a group's scale and zero point are computed (and written into `scale` / `zero_point`)
    from its updated weights when the loop reaches its first column — the group lies inside the block
    (`_effective_block_size`) and every earlier column's update has been applied to it by then.
    """
    group_size = scheme.group_size
    W1 = W[:, first_column : first_column + width].clone()
    # A Python list: indexing a device tensor per column would synchronise the GPU once per column.
    fixed_group = None if group_of_column is None else group_of_column.tolist()
    for i in range(width):
        column = first_column + i
        if fixed_group is None:
            g = column // group_size
            if column % group_size == 0:
                group_scale, group_zero = compute_qparams(W1[:, i : i + group_size], scheme)
                scale[:, g] = group_scale
                if zero_point is not None and group_zero is not None:
                    zero_point[:, g] = group_zero
        else:
            g = fixed_group[column]
        col_scale = scale[:, g]
        col_zero = None if zero_point is None else zero_point[:, g]
        w = W1[:, i]
        q_int = quantize_columns(w, col_scale, col_zero, scheme)
        values[:, column] = q_int
        e = (w - dequantize_columns(q_int, col_scale, col_zero)) / Hinv_block[i, i]
        update = torch.outer(e, Hinv_block[i, i:])
        if keep is not None:
            update = update * keep[:, column : first_column + width]
        W1[:, i:].sub_(update)
        err[:, i] = e


def _select_block_kernel(device: torch.device, kernel: BlockKernel) -> Callable[..., None]:
    """The Triton kernel on CUDA (one launch per block instead of a dozen per column), else the torch loop."""
    from compress.quantize.gptq_triton import quantize_block_triton, triton_available

    if kernel == "triton" or (kernel == "auto" and device.type == "cuda" and triton_available()):
        # Triton's CPU interpreter (TRITON_INTERPRET=1) runs the kernel on CPU tensors: slow, for tests only.
        runs_here = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
        if not runs_here or not triton_available():
            raise ValueError("GPTQ kernel 'triton' needs a CUDA device and the triton package")
        return quantize_block_triton
    return _quantize_block


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: QuantScheme,
    *,
    block_size: int = 128,
    dampening: float = 0.01,
    act_order: bool = False,
    static_groups: bool = False,
    preserve_zeros: bool = False,
    kernel: BlockKernel = "auto",
) -> tuple[QuantizedWeight, float]:
    """GPTQ-quantize an (out, cols) weight given its inputs' Hessian (cols, cols) from `accumulate_hessian`.

    `act_order` quantizes columns in order of decreasing H_ii (the most active inputs first, while the most
    columns remain to absorb their error). Its groups are then runs of the permuted order, recorded in `g_idx`;
    with `static_groups` every group's parameters are instead fixed up front from the original weight, so column c
    stays in group c // group_size and no `g_idx` is needed (g_idx None), a layout every loader supports.
    Returns the quantized weight and the summed GPTQ loss Σ (w - q)² / (2 [H⁻¹]_cc²) of the reference.
    Works in float32 on the weight's device; `hessian` is not modified. `kernel` runs each lazy block through the
    torch column loop or the Triton kernel (`auto`: Triton on CUDA when installed); both give the same codes.
    `preserve_zeros` keeps a pruned weight's zeros: error updates skip them (as llm-compressor does after
    SparseGPT), so 2:4 or unstructured sparsity survives 4-bit quantization exactly.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected an (out, in) weight matrix, got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    scheme.check(columns)
    if block_size <= 0 or dampening < 0:
        raise ValueError(f"block_size must be positive and dampening non-negative, got {block_size}, {dampening}")
    device = weight.device
    W, H = float_problem(weight, hessian, "GPTQ")

    group_size = scheme.group_size
    # Parameters fixed before the loop: per channel (one group), or every group from the original weight.
    fixed_scale: torch.Tensor | None = None
    fixed_zero: torch.Tensor | None = None
    if group_size is None or static_groups:
        fixed_scale, fixed_zero = compute_qparams(grouped(W, scheme), scheme)

    perm: torch.Tensor | None = None
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    keep = (W != 0).float() if preserve_zeros else None

    Hinv = inverse_hessian_factor(H, dampening)
    del H

    values = torch.empty(rows, columns, dtype=torch.int8, device=device)
    losses = torch.zeros(rows, device=device)
    groups = scheme.groups(columns)
    # Filled group by group when the parameters follow the updated weights (dynamic groups).
    scale = fixed_scale if fixed_scale is not None else torch.empty(rows, groups, device=device)
    zero_point = fixed_zero
    if fixed_scale is None and not scheme.symmetric:
        zero_point = torch.empty(rows, groups, dtype=torch.int8, device=device)
    # Fixed parameters: the group each (possibly permuted) column reads them from; None: dynamic groups.
    group_of_column: torch.Tensor | None = None
    if fixed_scale is not None:
        original_column = perm if perm is not None else torch.arange(columns, device=device)
        group_of_column = original_column // (group_size or columns)
    quantize_block = _select_block_kernel(device, kernel)

    block = _effective_block_size(block_size, group_size)
    for i1 in range(0, columns, block):
        i2 = min(i1 + block, columns)
        Err1 = torch.empty(rows, i2 - i1, device=device)
        quantize_block(
            W, Hinv[i1:i2, i1:i2], i1, i2 - i1, values, Err1, scale, zero_point, group_of_column, scheme, keep
        )
        # The reference's loss Σ (w - q)² / d² / 2 is Σ err² / 2: summed once per block, not per column.
        losses += Err1.pow(2).sum(dim=1) / 2
        # Lazy batch update: the columns after this block receive its accumulated error in one matmul.
        update = Err1 @ Hinv[i1:i2, i2:]
        W[:, i2:] -= update if keep is None else update * keep[:, i2:]

    g_idx: torch.Tensor | None = None
    if perm is not None:
        inverse = torch.argsort(perm)
        values = values[:, inverse]
        if group_size is not None and not static_groups:
            # Permuted position p is in group p // group_size; g_idx maps each original column to its group.
            g_idx = (inverse // group_size).to(torch.int32)
    quantized = QuantizedWeight(values=values, scale=scale, zero_point=zero_point, scheme=scheme, g_idx=g_idx)
    return quantized, float(losses.sum().item())
