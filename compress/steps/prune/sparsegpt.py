"""`sparsegpt` (Frantar & Alistarh 2023): prune with the OBS weight update from GPTQ's Hessians, layer by layer.

For sparse + 4-bit, follow it with a `gptq` step: it keeps the zeros (`preserve_sparsity`)."""

from __future__ import annotations

from typing import ClassVar

import torch

from compress.prune.pattern import SparsityPattern
from compress.prune.sparsegpt import sparsegpt_prune
from compress.quantize.gptq import accumulate_hessian
from compress.steps.prune.config import SparseGPTConfig
from compress.steps.prune.layerwise import LayerwisePruneStep


class SparseGPT(LayerwisePruneStep):
    """SparseGPT pruning, unstructured or N:M."""

    name: ClassVar[str] = "sparsegpt"
    Config = SparseGPTConfig
    config: SparseGPTConfig
    accumulate = staticmethod(accumulate_hessian)

    def statistic_bytes(self, width: int) -> int:
        return width * width * 4

    @torch.no_grad()
    def prune_module(self, linear: torch.nn.Linear, statistic: torch.Tensor, pattern: SparsityPattern) -> float:
        pruned, loss = sparsegpt_prune(
            linear.weight.detach().float(),
            statistic,
            pattern,
            block_size=self.config.block_size,
            dampening=self.config.dampening,
        )
        linear.weight.copy_(pruned.to(linear.weight.dtype))
        return loss
