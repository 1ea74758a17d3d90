"""The model as it moves through a recipe: weights, tokenizer, task and inference settings."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: Task
    max_length: int | None = None
    label_names: list[str] | None = None
    transforms: list[dict[str, Any]] = field(default_factory=list)

    def replace(self, **changes: Any) -> ModelHandle:
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
