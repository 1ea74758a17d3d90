"""Registered steps, by class name: `compress.steps.Truncate(max_length="auto")`."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from compress.registry import STEPS

    found = STEPS.by_class_name(name)
    if found is not None:
        return found
    raise AttributeError(f"no step class named '{name}' (registered steps: {', '.join(STEPS.names())})")
