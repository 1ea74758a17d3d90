"""Lazy imports of optional backends, so `import compress` stays light."""

from __future__ import annotations

import importlib
from types import ModuleType

from compress.errors import MissingExtra


def import_optional(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise a MissingExtra that names the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"this feature needs the optional package '{module.split('.')[0]}' ({exc})",
            fix=f"pip install 'compress[{extra}]'",
        ) from exc
