"""GPTQ's column loop in one Triton kernel per lazy block (CUDA).

Inside a block of up to 128 columns GPTQ is strictly sequential: column i is rounded only after every earlier
column's error has been pushed onto it. In PyTorch that is a dozen small kernel launches per column — on a GPU the
launches, not the arithmetic, are the cost (SmolLM2-135M has ~150k columns). Rows, however, are independent: each
program here keeps a tile of rows × the whole block in registers and runs the block's column loop itself.

The arithmetic is that of `compress.quantize.gptq._quantize_block` as torch executes it, step by step — IEEE
division (`div_rn`), round half to even, no fused multiply-adds, and on CUDA torch's multiply-by-reciprocal for a
division by a Python number — so both paths produce the same codes, bit for bit (tested on CUDA and under Triton's
CPU interpreter).
"""

from __future__ import annotations

import functools

import torch

from compress.quantize.scheme import QuantScheme

_SCALE_EPS = torch.finfo(torch.float32).eps
_ROWS_PER_PROGRAM = 16


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel():  # defined lazily: importing triton costs ~1 s and it exists only beside CUDA builds of torch
    global tl, round_half_even  # the JIT (and its CPU interpreter, TRITON_INTERPRET=1) resolves module globals
    import triton
    import triton.language as tl

    @triton.jit
    def round_half_even(x):
        # torch.round's rule, from floor alone (libdevice's rint is CUDA-only and missing from the interpreter);
        # exact wherever it matters: |x| < 2**22, and larger values are clamped to the code range anyway.
        r = tl.floor(x + 0.5)
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(((r - x) == 0.5) & odd, r - 1.0, r)

    @triton.jit
    def gptq_block(
        W,
        stride_w,
        stride_wc,
        Hinv,
        stride_h,
        stride_hc,
        values,
        stride_v,
        err,
        stride_e,
        scale,
        zero,
        stride_s,
        group_of_column,
        keep,
        stride_k,
        rows,
        first_column,
        group_size,
        qmin,
        qmax,
        eps,
        WIDTH: tl.constexpr,
        DYNAMIC: tl.constexpr,
        SYMMETRIC: tl.constexpr,
        RECIPROCAL: tl.constexpr,
        MASKED: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        row_ok = r < rows
        tile_ok = row_ok[:, None] & (c < WIDTH)[None, :]
        w_tile = tl.load(W + r[:, None] * stride_w + (first_column + c)[None, :] * stride_wc, mask=tile_ok, other=0.0)
        e_tile = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        if MASKED:  # 1.0 where a weight is kept, 0.0 where pruned: updates never reach pruned weights
            k_tile = tl.load(keep + r[:, None] * stride_k + (first_column + c)[None, :], mask=tile_ok, other=0.0)
        s = tl.full([BLOCK_R], 1.0, dtype=tl.float32)
        z = tl.zeros([BLOCK_R], dtype=tl.float32)
        levels = (qmax - qmin).to(tl.float32)
        for i in range(0, WIDTH):
            column = first_column + i
            if DYNAMIC:
                if column % group_size == 0:
                    # The group's parameters from its fully updated weights; min/max include 0 (compute_qparams).
                    group = tl.where(((c >= i) & (c < i + group_size))[None, :], w_tile, 0.0)
                    low = tl.min(group, axis=1)
                    high = tl.max(group, axis=1)
                    slot = r * stride_s + column // group_size
                    if SYMMETRIC:
                        span = tl.maximum(tl.abs(low), tl.abs(high))
                        divisor = levels * 0.5
                    else:
                        span = high - low
                        divisor = levels
                    if RECIPROCAL:  # torch on CUDA divides by a Python number as a multiply by its reciprocal
                        s = tl.maximum(span * tl.math.div_rn(1.0, divisor), eps)
                    else:
                        s = tl.maximum(tl.math.div_rn(span, divisor), eps)
                    if not SYMMETRIC:
                        z = tl.minimum(tl.maximum(round_half_even(qmin - tl.math.div_rn(low, s)), qmin), qmax)
                        tl.store(zero + slot, z.to(tl.int8), mask=row_ok)
                    tl.store(scale + slot, s, mask=row_ok)
            else:
                slot = r * stride_s + tl.load(group_of_column + column)
                s = tl.load(scale + slot, mask=row_ok, other=1.0)
                if not SYMMETRIC:
                    z = tl.load(zero + slot, mask=row_ok, other=0).to(tl.float32)
            w = tl.sum(tl.where((c == i)[None, :], w_tile, 0.0), axis=1)
            q = tl.minimum(tl.maximum(round_half_even(tl.math.div_rn(w, s) + z), qmin), qmax)
            e = tl.math.div_rn(w - (q - z) * s, tl.load(Hinv + i * stride_h + i * stride_hc))
            h = tl.load(Hinv + i * stride_h + c * stride_hc, mask=(c >= i) & (c < WIDTH), other=0.0)
            if MASKED:  # noqa: SIM108  (a constexpr branch: compiled away, not a runtime select)
                w_tile = w_tile - (e[:, None] * h[None, :]) * k_tile
            else:
                w_tile = w_tile - e[:, None] * h[None, :]
            e_tile = tl.where((c == i)[None, :], e[:, None], e_tile)
            tl.store(values + r * stride_v + column, q.to(tl.int8), mask=row_ok)
        tl.store(err + r[:, None] * stride_e + c[None, :], e_tile, mask=tile_ok)

    return gptq_block


def quantize_block_triton(
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
    """One lazy block of GPTQ on CUDA: the contract of `gptq._quantize_block`.

    Reads columns [first_column, first_column + width) of W (not modified), writes their codes into `values`, the
    scaled errors into `err` (rows, width) and, when `group_of_column` is None (dynamic groups), each group's scale
    and zero point as it reaches the group's first column; otherwise reads them from group_of_column's groups.
    """
    import triton

    rows = W.shape[0]
    dynamic = group_of_column is None
    group_size = scheme.group_size or W.shape[1]
    zero = zero_point if zero_point is not None else values  # a placeholder pointer, never read when symmetric
    _kernel()[(triton.cdiv(rows, _ROWS_PER_PROGRAM),)](
        W,
        *W.stride(),
        Hinv_block,
        *Hinv_block.stride(),  # torch's upper Cholesky factor is column-major
        values,
        values.stride(0),
        err,
        err.stride(0),
        scale,
        zero,
        scale.stride(0),
        group_of_column if group_of_column is not None else values,
        keep if keep is not None else err,  # a placeholder pointer when nothing is masked
        keep.stride(0) if keep is not None else 0,
        rows,
        first_column,
        group_size,
        scheme.qmin,
        scheme.qmax,
        _SCALE_EPS,
        WIDTH=width,
        DYNAMIC=dynamic,
        SYMMETRIC=scheme.symmetric,
        RECIPROCAL=W.is_cuda,
        MASKED=keep is not None,
        BLOCK_R=_ROWS_PER_PROGRAM,
        BLOCK_C=triton.next_power_of_2(width),
        enable_fp_fusion=False,  # torch rounds the product before subtracting: match it bit for bit
    )
