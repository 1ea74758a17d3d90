"""`semi_structured`: N:M sparsity (2:4 by default, what sparse tensor cores run) by any of the criteria."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step
from compress.steps.prune.base import PruneStep
from compress.steps.prune.config import SparseGPTConfig
from compress.steps.prune.magnitude import Magnitude
from compress.steps.prune.sparsegpt import SparseGPT
from compress.steps.prune.wanda import Wanda

_CRITERIA: dict[str, type[PruneStep]] = {"magnitude": Magnitude, "wanda": Wanda, "sparsegpt": SparseGPT}


class SemiStructuredConfig(SparseGPTConfig):
    pattern: str = Field("2:4", description="`N:M`: at most N non-zeros in every M consecutive inputs of a row.")
    method: Literal["magnitude", "wanda", "sparsegpt"] = Field(
        "sparsegpt", description="Which weights of each block go: smallest |W|, Wanda's |W|·‖X‖, or SparseGPT."
    )

    @field_validator("pattern")
    @classmethod
    def _n_m_only(cls, value: str) -> str:
        if value == "unstructured":
            raise ValueError("semi_structured prunes N:M (e.g. '2:4'); for unstructured use magnitude/wanda/sparsegpt")
        return value


class SemiStructured(Step):
    """The chosen criterion's step, run with an N:M pattern (calibration settings apply to wanda/sparsegpt)."""

    name: ClassVar[str] = "semi_structured"
    Config = SemiStructuredConfig
    config: SemiStructuredConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        criterion = _CRITERIA[self.config.method]
        settings = self.config.model_dump(include=set(criterion.Config.model_fields))
        step = criterion(criterion.Config(**settings))
        step.name = self.name  # errors name the step the recipe wrote
        step.progress = self.progress
        result = step.apply(model, ctx)
        self._details = {"method": self.config.method, **step.details()}
        return result
