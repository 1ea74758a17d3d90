"""User-facing errors. Each says what is wrong, where (file and field), and how to fix it.

The CLI prints these without a traceback; anything else that escapes is a bug in compress.
"""

from __future__ import annotations

# What an error may echo of the user's input: a 10 MB key must not become a 10 MB message.
ECHO_LIMIT = 200


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, clipped: how errors echo bad input."""
    return clip(repr(value), limit)


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
