"""`magnitude`: prune the smallest weights by absolute value — no data, the baseline every criterion must beat."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from compress.models.handle import ModelHandle
from compress.prune.masks import global_threshold, keep_mask
from compress.prune.pattern import SparsityPattern
from compress.steps.base import StageContext
from compress.steps.prune.base import PruneStep, apply_keep_mask
from compress.steps.prune.config import PruneConfig


class MagnitudeConfig(PruneConfig):
    scope: Literal["layer", "global"] = Field(
        "layer",
        description="Unstructured: reach the sparsity in every layer, or over all selected layers together "
        "(one threshold: layers with smaller weights lose more).",
    )

    @model_validator(mode="after")
    def _scope(self) -> MagnitudeConfig:
        if self.scope == "global" and self.pattern != "unstructured":
            raise ValueError("scope 'global' applies to unstructured sparsity; N:M is chosen block by block")
        return self


class Magnitude(PruneStep):
    """Magnitude pruning, per layer or global, unstructured or N:M."""

    name: ClassVar[str] = "magnitude"
    Config = MagnitudeConfig
    config: MagnitudeConfig

    def prune(
        self, model: ModelHandle, linears: dict[str, torch.nn.Linear], pattern: SparsityPattern, ctx: StageContext
    ) -> None:
        if self.config.scope == "global":
            threshold = global_threshold([m.weight.detach().abs() for m in linears.values()], pattern.sparsity)
            for linear in linears.values():
                apply_keep_mask(linear, linear.weight.detach().abs() > threshold)
            return
        for linear in linears.values():
            apply_keep_mask(linear, keep_mask(linear.weight.detach().abs(), pattern, scope="layer"))
