"""User-facing errors. Each says what is wrong, where (file and field), and how to fix it.

The CLI prints these without a traceback; anything else that escapes is a bug in compress.
"""

from __future__ import annotations


class CompressError(Exception):
    """An error the user can fix: bad recipe, bad data, missing optional backend."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigError(CompressError):
    """A recipe, step or exporter configuration is invalid."""


class DataError(CompressError):
    """A dataset cannot be read or does not match the recipe's column mapping."""


class ModelError(CompressError):
    """A model cannot be loaded, saved or converted."""


class MissingExtra(CompressError):
    """An optional backend is not installed."""


class ExportError(CompressError):
    """An exporter could not convert the model (names the op or stage where possible)."""


class NotEvaluable(CompressError):
    """An artifact was written but cannot run on this machine (e.g. TensorRT without a GPU, Core ML off macOS)."""
