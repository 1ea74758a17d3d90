"""Registered exporters, by class name: `compress.exporters.OnnxExporter(quantize="dynamic")`."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from compress.registry import EXPORTERS

    found = EXPORTERS.by_class_name(name)
    if found is not None:
        return found
    raise AttributeError(f"no exporter class named '{name}' (registered: {', '.join(EXPORTERS.names())})")
