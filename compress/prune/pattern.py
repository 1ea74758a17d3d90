"""Which weights a pruning method may zero: any of them (unstructured, a target fraction) or N:M.

N:M follows NVIDIA's and compressed-tensors' convention: at most N non-zero weights in every M consecutive
weights of a row along the input dimension ("2:4": 2 of every 4 kept, 50 % sparse), the layout sparse tensor
cores (and PyTorch's `to_sparse_semi_structured`) run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_N_M = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class SparsityPattern:
    sparsity: float  # fraction of the weights zeroed
    n: int | None = None  # N:M: non-zeros kept in each block of m
    m: int | None = None

    @classmethod
    def parse(cls, pattern: str, sparsity: float | None) -> SparsityPattern:
        """`pattern` is "unstructured" (then `sparsity` is the fraction, default 0.5) or "N:M" (sparsity implied).

        ValueError with the reason; the step config turns it into a message naming the field.
        """
        if pattern == "unstructured":
            value = 0.5 if sparsity is None else sparsity
            if not 0 < value < 1:
                raise ValueError(f"sparsity must be in (0, 1), got {value}")
            return cls(sparsity=value)
        match = _N_M.match(pattern)
        if match is None:
            raise ValueError(f"pattern must be 'unstructured' or 'N:M' (e.g. '2:4'), got {pattern!r}")
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M (N weights kept of every M), got {pattern!r}")
        implied = 1 - n / m
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise ValueError(f"pattern {pattern} is {implied:.0%} sparse; sparsity {sparsity} contradicts it")
        return cls(sparsity=implied, n=n, m=m)

    @property
    def structured(self) -> bool:
        return self.m is not None

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"

    def check(self, columns: int) -> None:
        if self.m is not None and columns % self.m:
            raise ValueError(f"{self.name} needs an input width that is a multiple of {self.m}, got {columns}")
