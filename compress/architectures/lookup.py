"""Finding a model's entry in an architecture table (keyed by `config.model_type`)."""

from __future__ import annotations

from typing import TypeVar

import torch

from compress.errors import ModelError

T = TypeVar("T")


def entry_for(model: torch.nn.Module, table: dict[str, T], what: str, table_path: str) -> T:
    """`table[model.config.model_type]`, or a ModelError naming what is missing and where to add it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in table:
        raise ModelError(
            f"no {what} for model type '{model_type}' (known: {', '.join(sorted(table))})",
            where="model.source",
            fix=f"use a supported architecture, or add its map to {table_path}",
        )
    return table[model_type]
