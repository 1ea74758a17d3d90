"""compress: compose compression steps into recipes, evaluate every stage on your data, export anywhere.

import compress as cx
recipe = cx.Recipe(model=cx.ModelSpec("path/or/hub-name"), data=cx.DataSpec(path="dev.tsv", text="sentence"),
                   steps=[cx.steps.Truncate(max_length="auto"), cx.steps.DynamicInt8()])
print(recipe.run("runs/x").table())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names resolve lazily so `import compress` does not import torch or transformers.
_EXPORTS = {
    "Recipe": "compress.recipe",
    "ModelSpec": "compress.config",
    "DataSpec": "compress.config",
    "EvalSpec": "compress.config",
    "GateSpec": "compress.config",
    "CompressError": "compress.errors",
    "RunResult": "compress.runner",
    "read_report": "compress.report.json",
    "open": "compress.artifacts",
    "steps": "compress.steps",
    "exporters": "compress.export",
}

__all__ = [
    "CompressError",
    "DataSpec",
    "EvalSpec",
    "GateSpec",
    "ModelSpec",
    "Recipe",
    "RunResult",
    "exporters",
    "open",
    "read_report",
    "steps",
]

if TYPE_CHECKING:
    from compress import export as exporters
    from compress import steps
    from compress.artifacts import open_artifact as open
    from compress.config import DataSpec, EvalSpec, GateSpec, ModelSpec
    from compress.errors import CompressError
    from compress.recipe import Recipe
    from compress.runner import RunResult


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'compress' has no attribute '{name}'")
    import importlib

    module = importlib.import_module(_EXPORTS[name])
    if name in ("steps", "exporters"):
        return module
    return module.open_artifact if name == "open" else getattr(module, name)
