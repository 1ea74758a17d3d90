"""How a weight matrix is quantized (bits, groups, symmetry) and the integer form every algorithm returns.

The integer form matches the compressed-tensors convention, so a checkpoint is written without conversion:
values are signed (`[-2**(bits-1), 2**(bits-1) - 1]`), zero points are signed too (absent when symmetric), and
`dequantize = (values - zero_point) * scale`, one scale per output row and group of `group_size` columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantScheme:
    bits: int = 4
    group_size: int | None = 128  # None: one scale per output channel
    symmetric: bool = False

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def groups(self, columns: int) -> int:
        return 1 if self.group_size is None else columns // self.group_size

    def check(self, columns: int) -> None:
        """Raise ValueError when this scheme cannot quantize a weight with `columns` input columns."""
        # Values are stored in int8, so wider codes would silently wrap.
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be between 2 and 8 (values are stored as int8), got {self.bits}")
        if self.group_size is None:
            return
        if self.group_size <= 0:
            raise ValueError(f"group_size must be positive or None (per channel), got {self.group_size}")
        if columns % self.group_size != 0:
            raise ValueError(
                f"group_size {self.group_size} does not divide the weight's {columns} input columns; "
                f"pick a group size that divides {columns} or quantize this layer per channel (group_size: null)"
            )


@dataclass
class QuantizedWeight:
    """A quantized (out, in) weight: int8 storage of `bits`-wide signed values, per-group scale and zero point.

    `g_idx` (in,) maps each input column to its group when columns were quantized out of order (GPTQ
    act_order); None means column c belongs to group c // group_size.
    """

    values: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out, groups) float
    zero_point: torch.Tensor | None  # (out, groups) int8, None when symmetric
    scheme: QuantScheme
    g_idx: torch.Tensor | None = None  # (in,) int32

    def group_index(self) -> torch.Tensor:
        columns = self.values.shape[1]
        if self.g_idx is not None:
            return self.g_idx.long()
        size = self.scheme.group_size or columns
        return torch.arange(columns, device=self.values.device) // size

    def to(self, device: torch.device | str) -> QuantizedWeight:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return QuantizedWeight(
            self.values.to(device), self.scale.to(device), move(self.zero_point), self.scheme, move(self.g_idx)
        )

    def split_rows(self, sizes: list[int]) -> list[QuantizedWeight]:
        """The weights of modules quantized stacked along their output rows (GPTQ of q/k/v together), apart."""

        def parts(tensor: torch.Tensor | None) -> list[torch.Tensor | None]:
            # Copies: views would share one storage, which safetensors refuses to save.
            return [None] * len(sizes) if tensor is None else [part.clone() for part in tensor.split(sizes)]

        return [
            QuantizedWeight(values, scale, zero, self.scheme, self.g_idx)
            for values, scale, zero in zip(parts(self.values), parts(self.scale), parts(self.zero_point), strict=True)
        ]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        index = self.group_index()
        scale = self.scale.to(dtype)[:, index]
        values = self.values.to(dtype)
        if self.zero_point is not None:
            values = values - self.zero_point.to(dtype)[:, index]
        return values * scale
