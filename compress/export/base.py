"""Exporters turn a model into a deployable artifact that a Runtime of its own can evaluate."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from compress.config import Schema
from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.runtime.base import Runtime, RuntimeOptions
from compress.steps.base import StageContext

METADATA_FILE = "compress-export.json"


class ExportConfig(Schema):
    label: str | None = Field(None, description="Stage name in the report; default: the exporter's name.")
    max_accuracy_drop: float | None = Field(
        None, ge=0, description="Fail this export if it worsens the primary metric by more than this."
    )
    source: str | None = Field(
        None,
        description="Export the model of this earlier stage (its report name, e.g. `truncate`) instead of the "
        "final one — e.g. the FP32 model before a PyTorch-only `dynamic_int8` step.",
    )


class Exporter(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[ExportConfig]] = ExportConfig

    def __init__(self, config: ExportConfig | None = None, **kwargs: Any) -> None:
        self.config = config if config is not None else self.Config(**kwargs)

    @abstractmethod
    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        """Write the artifact (model files, tokenizer, deploy notes) into `out_dir`, which exists and is empty.

        The runner writes into a temporary folder and renames it when this returns, so a failure never
        leaves a half-written artifact.
        """

    @abstractmethod
    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        """Open the artifact in its own runtime; raise NotEvaluable with the reason if it cannot run here."""

    @property
    def label(self) -> str:
        return self.config.label or self.name

    def cache_key(self) -> dict[str, Any]:
        return {
            "exporter": self.name,
            "config": self.config.model_dump(mode="json", exclude={"label", "source"}),
        }


def write_metadata(model: ModelHandle, out_dir: Path, **extra: Any) -> None:
    """Save the tokenizer and the inference settings next to the exported model."""
    model.tokenizer.save_pretrained(out_dir)
    meta = {"task": model.task, "max_length": model.max_length, "label_names": model.label_names, **extra}
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2))


def options_for(ctx: StageContext) -> RuntimeOptions:
    """A recipe's evaluation settings as the options an artifact opens with."""
    return RuntimeOptions(threads=ctx.eval_spec.threads, device=ctx.device.type)


def read_metadata(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON ({exc})", where=str(path), fix="export it again") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} holds no settings object", where=str(path), fix="export it again")
    return meta
