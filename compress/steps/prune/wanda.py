"""`wanda` (Sun et al. 2023): prune by |W| · ‖X‖ within each output row (or N:M block); no weight update."""

from __future__ import annotations

from typing import ClassVar

import torch

from compress.prune.masks import keep_mask
from compress.prune.pattern import SparsityPattern
from compress.prune.wanda import accumulate_input_norms, wanda_scores
from compress.steps.prune.base import apply_keep_mask
from compress.steps.prune.layerwise import LayerwisePruneStep


class Wanda(LayerwisePruneStep):
    """Pruning by weights and activations, layer by layer over calibration text."""

    name: ClassVar[str] = "wanda"
    accumulate = staticmethod(accumulate_input_norms)

    def statistic_bytes(self, width: int) -> int:
        return width * 4

    def prune_module(self, linear: torch.nn.Linear, statistic: torch.Tensor, pattern: SparsityPattern) -> None:
        apply_keep_mask(linear, keep_mask(wanda_scores(linear.weight, statistic), pattern, scope="row"))
