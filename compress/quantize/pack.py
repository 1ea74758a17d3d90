"""Dense bit-packing of signed `bits`-wide integers into int32 words, bit-exact with compressed-tensors.

This is the `pack-quantized` layout of compressed-tensors (`pack_to_int32` / `unpack_from_int32`, 0.19.0):
each signed value is offset by `2**(bits-1)` to an unsigned `bits`-wide field, and the fields of a row are laid
end to end from the least significant bit of the first word, so element `i` of a row starts at bit `i * bits`.
There is no padding between elements: for widths that do not divide 32 (3, 5, 6, 7) a field may straddle two
words. A row of `n` values takes `ceil(n * bits / 32)` words; unused high bits of the last word are zero.

Weights are packed along their input dimension (dim 1). Asymmetric zero points, shape (out, groups), are packed
along the output dimension (dim 0) instead, which is what `pack_zero_point` / `unpack_zero_point` do.

Implemented here rather than imported so that writing and reading checkpoints never needs compressed-tensors.
"""

from __future__ import annotations

import math

import torch

_WORD = 32
_LOW32 = (1 << _WORD) - 1


def packed_size(count: int, bits: int) -> int:
    """int32 words that `count` values of `bits` bits occupy."""
    return math.ceil(count * bits / _WORD)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"packing supports 1 to 8 bits, got {bits}")


def _positions(count: int, bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    start = torch.arange(count, device=device, dtype=torch.int64) * bits
    return start // _WORD, start % _WORD


def pack_int(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed int8 `values` (rows, cols), each in `[-2**(bits-1), 2**(bits-1) - 1]`, into int32 (rows, words)."""
    _check_bits(bits)
    if values.dtype != torch.int8 or values.ndim != 2:
        raise ValueError(f"pack_int needs a 2-D int8 tensor, got {values.dtype} of shape {tuple(values.shape)}")
    rows, cols = values.shape
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if values.numel() and (int(values.min()) < lo or int(values.max()) > hi):
        # Out-of-range values would silently spill into their neighbours' bits.
        raise ValueError(f"values outside the {bits}-bit range [{lo}, {hi}]")
    # int64 arithmetic: a field shifted by up to 31 bits does not fit int32, and fields never overlap,
    # so adding them is the same as OR-ing them.
    unsigned = values.to(torch.int64) + (1 << (bits - 1))
    word, offset = _positions(cols, bits, values.device)
    words = packed_size(cols, bits)
    out = torch.zeros(rows, words + 1, dtype=torch.int64, device=values.device)  # +1: spill target of the last field
    out.index_add_(1, word, (unsigned << offset) & _LOW32)
    spills = offset + bits > _WORD
    if bool(spills.any()):
        out.index_add_(1, word[spills] + 1, unsigned[:, spills] >> (_WORD - offset[spills]))
    out = out[:, :words]
    # Reinterpret the unsigned 32-bit words as two's-complement int32, as the reference's int32 arithmetic stores them.
    return torch.where(out >= 1 << (_WORD - 1), out - (1 << _WORD), out).to(torch.int32)


def unpack_int(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_int`: int32 (rows, words) back to the first `cols` signed int8 values of each row."""
    _check_bits(bits)
    if packed.dtype != torch.int32 or packed.ndim != 2:
        raise ValueError(f"unpack_int needs a 2-D int32 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.shape[1] != packed_size(cols, bits):
        raise ValueError(
            f"{packed.shape[1]} words cannot hold {cols} values of {bits} bits ({packed_size(cols, bits)} expected)"
        )
    rows = packed.shape[0]
    unsigned = packed.to(torch.int64) & _LOW32
    unsigned = torch.cat([unsigned, unsigned.new_zeros(rows, 1)], dim=1)  # the last field's (empty) spill word
    word, offset = _positions(cols, bits, packed.device)
    # A field's high part, if it straddles words, sits at the bottom of the next word; shifting it up past the
    # low part and masking reassembles the field whether or not it straddles.
    mask = (1 << bits) - 1
    joined = (unsigned[:, word] >> offset) | ((unsigned[:, word + 1] & mask) << (_WORD - offset))
    values = (joined & mask) - (1 << (bits - 1))
    return values.to(torch.int8)


def pack_zero_point(zero_point: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed int8 zero points (out, groups) along dim 0 into int32 (ceil(out * bits / 32), groups)."""
    return pack_int(zero_point.t().contiguous(), bits).t().contiguous()


def unpack_zero_point(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """Inverse of `pack_zero_point`: int32 (words, groups) back to int8 (rows, groups)."""
    return unpack_int(packed.t().contiguous(), bits, rows).t().contiguous()
