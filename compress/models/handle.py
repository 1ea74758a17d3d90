"""The model as it moves through a recipe: weights, tokenizer, task and inference settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from compress.config import Task


@dataclass
class ModelHandle:
    """A model plus what is needed to run it the way it will be served.

    `transforms` records structural changes (e.g. dynamic INT8 swaps Linear modules) in the order they were
    applied, so a saved stage can be rebuilt exactly: load the architecture, replay the transforms, then load
    the saved tensors.

    `saved_dir` is the folder these exact weights were saved to or loaded from (the runner sets it), so the
    stage's size is what it takes on disk; None for a model that exists only in memory (e.g. the baseline).
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: Task
    max_length: int | None = None
    label_names: list[str] | None = None
    transforms: list[dict[str, Any]] = field(default_factory=list)
    saved_dir: Path | None = None

    def replace(self, **changes: Any) -> ModelHandle:
        """A new handle with `changes`; `saved_dir` is not carried over (the new handle may hold other
        weights) unless given."""
        values = {
            "model": self.model,
            "tokenizer": self.tokenizer,
            "task": self.task,
            "max_length": self.max_length,
            "label_names": self.label_names,
            "transforms": list(self.transforms),
        }
        values.update(changes)
        return ModelHandle(**values)

    @property
    def num_parameters(self) -> int:
        from compress.models.size import count_parameters

        return count_parameters(self.model)
