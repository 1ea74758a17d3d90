"""Structural model changes that a saved stage replays on load, before its tensors are loaded.

A transform is recorded on the ModelHandle as {"name": ..., **params}; its function rebuilds the module
structure (e.g. swaps Linear for dynamic-INT8 Linear) so the saved tensors fit.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from compress.errors import ModelError

# name → "module:function"; functions take (model, **params) and return the transformed model.
TRANSFORMS: dict[str, str] = {
    "dynamic_int8": "compress.steps.dynamic_int8:quantize_dynamic_int8",
    "structured": "compress.steps.prune.structured:resize_linears",
}


def replay(model: torch.nn.Module, transforms: list[dict[str, Any]]) -> torch.nn.Module:
    for record in transforms:
        params = dict(record)
        name = params.pop("name")
        if name not in TRANSFORMS:
            raise ModelError(
                f"saved model needs the transform '{name}', which this version of compress does not know",
                fix="upgrade compress, or re-run the recipe to rebuild the stage",
            )
        module_name, function_name = TRANSFORMS[name].split(":")
        model = getattr(importlib.import_module(module_name), function_name)(model, **params)
    return model
