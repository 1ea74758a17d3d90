"""Typed settings of the pruning steps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from compress.prune.pattern import SparsityPattern
from compress.steps.base import StepConfig
from compress.steps.quantize.config import CalibrationSpec


class PruneConfig(StepConfig):
    """Zero a share of the weights of the selected Linear layers (dense tensors with zeros: any runtime loads them)."""

    pattern: str = Field(
        "unstructured",
        description="`unstructured`, or `N:M`: at most N non-zeros in every M consecutive inputs of a row "
        "(`2:4` is what sparse tensor cores run).",
    )
    sparsity: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of weights zeroed (unstructured; default 0.5). N:M implies it (2:4 → 0.5).",
    )
    targets: list[str] = Field(
        default_factory=lambda: ["Linear"],
        description="Modules to prune: a class name, a module name, or `re:<regex>` over module names.",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Modules left dense (same syntax as `targets`); the head by default.",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_syntax(cls, value: str) -> str:
        SparsityPattern.parse(value, None)  # ValueError → a schema error naming this field
        return value

    @model_validator(mode="after")
    def _pattern_and_sparsity(self) -> PruneConfig:
        SparsityPattern.parse(self.pattern, self.sparsity)  # e.g. 2:4 with sparsity 0.7
        return self

    @property
    def sparsity_pattern(self) -> SparsityPattern:
        return SparsityPattern.parse(self.pattern, self.sparsity)


class CalibratedPruneConfig(PruneConfig):
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec, description="Calibration text.")
    memory_check: bool = Field(
        True, description="Estimate peak memory before calibrating and refuse a run that will not fit."
    )
    layer_sparsity: Literal["uniform", "owl"] = Field(
        "uniform",
        description="`uniform`: every decoder layer at `sparsity`; `owl`: per layer by its share of outlier "
        "Wanda scores (Yin et al. 2024), the mean kept at `sparsity` (unstructured only; one extra calibration pass).",
    )
    owl_threshold: PositiveFloat = Field(5.0, description="OWL: a score is an outlier above this × its layer's mean.")
    owl_spread: float = Field(
        0.08, ge=0, lt=0.5, description="OWL: layers range over sparsity ± this (the paper's lambda)."
    )

    @model_validator(mode="after")
    def _owl_fits(self) -> CalibratedPruneConfig:
        if self.layer_sparsity == "owl":
            pattern = self.sparsity_pattern
            if pattern.structured:
                raise ValueError(f"layer_sparsity 'owl' needs pattern 'unstructured' ({pattern.name} fixes each block)")
            if not self.owl_spread < pattern.sparsity < 1 - self.owl_spread:
                raise ValueError(
                    f"sparsity {pattern.sparsity} ± owl_spread {self.owl_spread} leaves (0, 1): lower owl_spread"
                )
        return self


class SparseGPTConfig(CalibratedPruneConfig):
    block_size: PositiveInt = Field(128, description="Columns per lazy update block (and mask-selection block).")
    dampening: float = Field(0.01, gt=0, le=1, description="Added to H's diagonal, as a fraction of its mean.")
