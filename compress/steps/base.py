"""Steps transform a model; each is a small class with a typed config and one `apply` method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from compress.config import EvalSpec, Schema
from compress.data.text_data import TextData
from compress.models.handle import ModelHandle


class StepConfig(Schema):
    """Fields every step accepts, besides its own."""

    label: str | None = Field(None, description="Stage name in the report; default: the step's name.")
    source: str | None = Field(
        None,
        description="Start from this earlier stage (`baseline` or a step's label) instead of the previous step, "
        "e.g. to compare several methods applied to the same model.",
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0, description="Stop the recipe if this step worsens the primary metric by more than this."
    )


def _no_stage(name: str) -> ModelHandle:
    raise LookupError(f"stage '{name}' is not available here: only a recipe run hands out earlier stages")


@dataclass
class StageContext:
    """What a step or exporter may use besides the model: the user's data, the evaluator, a device, a folder.

    Data is loaded lazily: a step that never trains never reads the train split.
    """

    train_data: Callable[[], TextData]
    eval_data: Callable[[], TextData]
    calibration_data: Callable[[int], TextData]
    score: Callable[[ModelHandle], dict[str, float]]
    eval_spec: EvalSpec
    device: torch.device
    work_dir: Path
    seed: int = 0
    base_dir: Path = Path()  # relative paths in step settings are relative to the recipe's folder
    # A fresh copy of an earlier stage's model, by stage name, for the stages a step names in `stage_inputs`.
    stage: Callable[[str], ModelHandle] = _no_stage


class Step(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]] = StepConfig
    # A step that produces the model later stages should be judged against (e.g. finetune makes the teacher)
    # sets this; recipe gates then compare with its result rather than the untrained baseline.
    sets_reference: ClassVar[bool] = False
    # The runner evaluates the model reloaded from the saved stage rather than the one in memory (steps that write
    # a new checkpoint format set this, so a save/load bug cannot hide behind a correct in-memory model).
    evaluate_saved: ClassVar[bool] = False
    progress: bool = True  # the runner turns progress bars off with `--quiet`
    # The recipe's folder (the Recipe sets it): relative paths in settings are read from there, also when the
    # stage key hashes the files they name (before `apply`, which gets it as StageContext.base_dir).
    base_dir: Path | None = None

    def __init__(self, config: StepConfig | None = None, **kwargs: Any) -> None:
        self.config = config if config is not None else self.Config(**kwargs)
        self._details: dict[str, Any] = {}  # what `apply` found, for `details`

    @abstractmethod
    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        """Return the transformed model. The step may transform `model` in place and return it (or a handle
        around the same module): the runner treats the input as consumed and reloads the earlier stage from
        its saved folder when something names it again. Copying the model is never needed, and at billions
        of parameters not affordable."""

    @property
    def label(self) -> str:
        return self.config.label or self.name

    def details(self) -> dict[str, Any]:
        """What the last `apply` found that the report should keep (e.g. a search's scores)."""
        return self._details

    def stage_inputs(self) -> dict[str, str]:
        """Earlier stages this step reads besides its source (e.g. a teacher), as {config field: stage name}.

        The recipe checks each names an earlier stage, the runner keys this stage by theirs too and hands
        them out through `StageContext.stage`."""
        return {}

    def cache_key(self) -> dict[str, Any]:
        # Settings that cannot change the result stay out of the key, so toggling them reuses the cache.
        # `source` is in the key already: the runner chains each step's key from its source stage's key.
        unchanged_result = {"label", "source", "progress", "checkpoint_every", "keep_checkpoints", "eval_every"}
        return {"step": self.name, "config": self.config.model_dump(mode="json", exclude=unchanged_result)}
