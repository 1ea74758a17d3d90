"""Core ML export: an ML Program (.mlpackage) for Apple devices, via TorchScript and coremltools.

The package is validated from its spec on every OS; it is evaluated (Core ML `predict`) only on macOS, and
elsewhere the report marks it "not evaluated: needs macOS".
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveInt

from compress.export.base import ExportConfig, Exporter, options_for, read_metadata, write_metadata
from compress.export.coreml_convert import (
    ComputeUnits,
    DeploymentTarget,
    WeightQuantization,
    compress_weights,
    to_mlprogram,
    trace,
)
from compress.export.coreml_validate import validate_package
from compress.export.deploy import sample_io, write_deploy_notes
from compress.export.tracing import inference_max_length
from compress.models.handle import ModelHandle
from compress.optional import import_optional
from compress.runtime.base import Runtime, RuntimeOptions
from compress.steps.base import StageContext
from compress.tasks import get_task

PACKAGE = "model.mlpackage"


class CoreMLConfig(ExportConfig):
    precision: Literal["fp32", "fp16"] = Field(
        "fp32",
        description="Compute precision of the ML Program; `fp16` halves the weights and is what the Neural "
        "Engine runs (the GPU and Neural Engine compute in fp16 either way).",
    )
    compute_units: ComputeUnits = Field(
        "all", description="Where Core ML may run the model: all, cpu_only, cpu_and_gpu or cpu_and_ne."
    )
    weight_quantization: WeightQuantization = Field(
        "none",
        description="coremltools.optimize weight compression: `int8` (linear, symmetric, per channel) or "
        "`palettize4`/`palettize8` (k-means lookup table of 16/256 values per tensor).",
    )
    weight_threshold: int = Field(
        2048, ge=0, description="Compress only weight tensors with at least this many elements."
    )
    minimum_deployment_target: DeploymentTarget = Field(
        "macOS13", description="Oldest OS the package must load on (iOS16/macOS13 or newer)."
    )
    max_batch_size: PositiveInt | None = Field(
        None, description="Largest batch the package accepts; default: the largest of the eval's batch sizes."
    )
    max_length: PositiveInt | None = Field(
        None,
        description="Longest sequence the package accepts; default: the model's max_length (truncate step) "
        "or the eval's, within the model's context.",
    )


class CoreMLExporter(Exporter):
    """Core ML ML Program (.mlpackage), optionally with int8 or palettized weights; runs on macOS."""

    name: ClassVar[str] = "coreml"
    Config = CoreMLConfig
    config: CoreMLConfig

    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        where = f"exports.{self.label}"
        cfg = self.config
        import_optional("coremltools", "coreml")
        max_batch = cfg.max_batch_size or max(ctx.eval_spec.batch_sizes)
        max_length = cfg.max_length or inference_max_length(model, ctx)
        traced, input_names = trace(model, where)
        mlmodel = to_mlprogram(
            traced, input_names, max_batch_size=max_batch, max_length=max_length, precision=cfg.precision,
            compute_units=cfg.compute_units, target=cfg.minimum_deployment_target, where=where,
        )  # fmt: skip
        if cfg.weight_quantization != "none":
            mlmodel = compress_weights(mlmodel, cfg.weight_quantization, weight_threshold=cfg.weight_threshold)
        mlmodel.save(str(out_dir / PACKAGE))
        summary = validate_package(
            out_dir / PACKAGE, input_names=input_names, max_batch_size=max_batch, max_length=max_length,
            logits_width=logits_width(model), compressed=cfg.weight_quantization != "none",
        )  # fmt: skip
        summary["ops"] = {k: v for k, v in summary["ops"].items() if k != "const"}
        write_metadata(
            model, out_dir, format="coreml", model_file=PACKAGE, input_names=input_names,
            precision=self.precision(), compute_units=cfg.compute_units, max_batch_size=max_batch,
            max_sequence_length=max_length, validation=summary,
        )  # fmt: skip
        title = f"Core ML ML Program ({self.precision()})"
        write_deploy_notes(
            out_dir,
            title,
            coreml_sample(model, cfg.compute_units, max_length),
            self._notes(max_batch, max_length),
        )

    def precision(self) -> str:
        base = "float32" if self.config.precision == "fp32" else "float16"
        quant = self.config.weight_quantization
        return base if quant == "none" else f"{base}-{quant}-weights"

    def _notes(self, max_batch: int, max_length: int) -> list[str]:
        notes = [
            f"Inputs are int32 tensors of shape (batch, sequence): batch 1…{max_batch}, sequence 1…{max_length}.",
            "Core ML runs only on Apple platforms (macOS, iOS, …); `pip install coremltools` for the Python "
            "API, or drag the .mlpackage into Xcode for Swift.",
            f"Minimum deployment target: {self.config.minimum_deployment_target}.",
        ]
        if self.config.weight_quantization != "none":
            notes.append(f"Weights are stored {self.config.weight_quantization} (coremltools.optimize) and "
                         "expanded at load time.")  # fmt: skip
        return notes

    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        return open_coreml(artifact_dir, options_for(ctx))


def open_coreml(artifact_dir: Path, options: RuntimeOptions) -> Runtime:
    """The package on the compute units it was exported for, or on `options.compute_units` (all, cpu_only, …)."""
    from transformers import AutoTokenizer

    from compress.runtime.coreml import CoreMLRuntime

    meta = read_metadata(artifact_dir)
    return CoreMLRuntime(
        artifact_dir / meta["model_file"], AutoTokenizer.from_pretrained(artifact_dir), meta["task"],
        meta["max_length"], compute_units=options.compute_units or meta["compute_units"], precision=meta["precision"],
    )  # fmt: skip


def logits_width(model: ModelHandle) -> int:
    return get_task(model.task).logits_width(model.model.config)


def coreml_sample(model: ModelHandle, compute_units: str, max_length: int) -> str:
    """A runnable coremltools snippet (macOS) for this artifact."""
    text, post, _ = sample_io(model)
    return f"""\
import coremltools as ct
import numpy as np
from transformers import AutoTokenizer

artifact = "path/to/this/folder"
tokenizer = AutoTokenizer.from_pretrained(artifact)
model = ct.models.MLModel(f"{{artifact}}/{PACKAGE}", compute_units=ct.ComputeUnit.{compute_units.upper()})
batch = tokenizer({text}, padding=True, truncation=True, max_length={max_length}, return_tensors="np")
names = [i.name for i in model.get_spec().description.input]
feed = {{name: batch[name].astype(np.int32) for name in names}}
logits = model.predict(feed)["logits"]
{post}
"""
