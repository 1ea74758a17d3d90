"""OpenVINO export: an IR (.xml graph + .bin weights) for the OpenVINO Runtime on CPU.

Optional NNCF compression: `quantize: int8` (post-training INT8 of weights and activations, calibrated on the
user's data) or `weight_compression` (weights only, INT8 or grouped INT4, the usual choice for LLMs).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from compress.errors import CompressError, ExportError
from compress.export.base import ExportConfig, Exporter, options_for, read_metadata, write_metadata
from compress.export.deploy import sample_io, write_deploy_notes
from compress.export.onnx_quantize import calibration_feeds
from compress.export.openvino_convert import (
    WeightCompression,
    compress_weights,
    quantize_int8,
    torch_to_openvino,
)
from compress.export.tracing import inference_max_length
from compress.models.handle import ModelHandle
from compress.optional import import_optional
from compress.runtime.base import Runtime, RuntimeOptions
from compress.runtime.openvino import InferencePrecision, PerformanceHint
from compress.steps.base import StageContext

MODEL_FILE = "model.xml"


class OpenVinoConfig(ExportConfig):
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="`int8`: NNCF post-training quantization of weights and activations, calibrated on "
        "`calibration_samples` rows of the calibration split.",
    )
    calibration_samples: PositiveInt = Field(300, description="Calibration rows for `quantize: int8`.")
    transformer_scheme: bool = Field(
        True,
        description="Quantize with NNCF's transformer scheme (model_type=TRANSFORMER: keeps softmax, layer "
        "norm and similar ops in float, smooths activations); off: NNCF's generic CNN-style scheme.",
    )
    fast_bias_correction: bool = Field(
        True, description="NNCF's fast bias correction after INT8 quantization; off: the slower, exact one."
    )
    weight_compression: WeightCompression = Field(
        "none",
        description="Weights-only compression with NNCF (no calibration data; activations stay float): "
        "`int8` per channel, or `int4_sym`/`int4_asym` in groups of `group_size`. Meant for LLMs.",
    )
    group_size: int = Field(
        128, ge=-1, description="INT4 weights share one scale per this many inputs (-1: one per channel)."
    )
    ratio: float = Field(
        1.0, gt=0, le=1, description="Share of layers compressed to INT4; NNCF keeps the rest in INT8."
    )
    compress_to_fp16: bool = Field(
        False, description="Store FP32 weights as FP16 in the .bin (half the size; computed in FP32 on CPU)."
    )
    performance_hint: PerformanceHint = Field(
        "latency",
        description="OpenVINO's CPU plan: `latency` (one stream, all cores per batch) or `throughput` "
        "(several streams; each batch is split across them).",
    )
    inference_precision: InferencePrecision = Field(
        "f32",
        description="`f32`: float layers compute in FP32 (matches PyTorch); `auto`: OpenVINO's choice "
        "(bf16 on CPUs with AMX/AVX512-BF16).",
    )
    sparse_weights_decompression_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="CPU plugin: INT8 MatMul weights at least this sparse (a share of zeros, e.g. 0.5 after "
        "pruning) are stored compressed and decompressed on the fly. OpenVINO applies it only on CPUs with AMX "
        "(4th-gen Xeon and later); elsewhere it changes nothing. None: the plugin's default (off).",
    )

    @model_validator(mode="after")
    def _one_compression(self) -> OpenVinoConfig:
        if self.quantize != "none" and self.weight_compression != "none":
            raise ValueError(
                "set either `quantize: int8` (weights and activations) or `weight_compression` (weights only), not both"
            )
        return self


class OpenVinoExporter(Exporter):
    """OpenVINO IR for the OpenVINO Runtime on CPU (FP32, NNCF INT8, or INT8/INT4 weights)."""

    name: ClassVar[str] = "openvino"
    Config = OpenVinoConfig
    config: OpenVinoConfig

    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        where = f"exports.{self.label}"
        ov = import_optional("openvino", "openvino")
        if self.config.quantize != "none" or self.config.weight_compression != "none":
            import_optional("nncf", "openvino")  # fail before the slow conversion when it is missing
        ov_model, input_names = torch_to_openvino(model, where)
        cfg = self.config
        try:
            if cfg.quantize == "int8":
                data = ctx.calibration_data(cfg.calibration_samples)
                max_length = inference_max_length(model, ctx)
                feeds = calibration_feeds(data, model.tokenizer, input_names, max_length, batch_size=1)
                ov_model = quantize_int8(
                    ov_model, feeds, transformer=cfg.transformer_scheme,
                    fast_bias_correction=cfg.fast_bias_correction,
                )  # fmt: skip
            elif cfg.weight_compression != "none":
                ov_model = compress_weights(
                    ov_model, cfg.weight_compression, group_size=cfg.group_size, ratio=cfg.ratio
                )
        except CompressError:  # e.g. unreadable calibration data: already says what to fix
            raise
        except Exception as exc:
            stage = "NNCF INT8 quantization" if cfg.quantize == "int8" else "NNCF weight compression"
            raise ExportError(
                f"{stage} failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}",
                where=where,
                fix="for INT4, pick a `group_size` that divides the layers' input width (or -1); otherwise "
                "export without compression",
            ) from exc
        ov.save_model(ov_model, str(out_dir / MODEL_FILE), compress_to_fp16=cfg.compress_to_fp16)
        precision = self.precision()
        write_metadata(
            model, out_dir, format="openvino", model_file=MODEL_FILE, input_names=input_names,
            precision=precision, performance_hint=cfg.performance_hint,
            inference_precision=cfg.inference_precision,
            sparse_weights_decompression_rate=cfg.sparse_weights_decompression_rate,
        )  # fmt: skip
        write_deploy_notes(out_dir, f"OpenVINO IR ({precision})", openvino_sample(model), self._notes())

    def precision(self) -> str:
        if self.config.quantize == "int8":
            return "int8"
        if self.config.weight_compression != "none":
            return f"{self.config.weight_compression}-weights"
        return "float16-weights" if self.config.compress_to_fp16 else "float32"

    def _notes(self) -> list[str]:
        cfg = self.config
        notes = [
            "Inputs are int64 tensors of shape (batch, sequence); both axes are dynamic.",
            "Install the runtime with `pip install openvino`.",
            f"compress measured it with PERFORMANCE_HINT={cfg.performance_hint.upper()}"
            + (
                " and INFERENCE_PRECISION_HINT=f32, DYNAMIC_QUANTIZATION_GROUP_SIZE=0"
                if cfg.inference_precision == "f32"
                else ""
            )
            + (
                f", CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE={cfg.sparse_weights_decompression_rate:g}"
                if cfg.sparse_weights_decompression_rate is not None
                else ""
            )
            + "; pass the same config to `compile_model` to reproduce its numbers.",
        ]
        if cfg.quantize == "int8":
            notes.append(
                f"INT8 weights and activations (NNCF post-training quantization, "
                f"{'transformer' if cfg.transformer_scheme else 'generic'} scheme, calibrated on "
                f"{cfg.calibration_samples} rows). Speed-ups need VNNI/AMX INT8 instructions; on AVX2-only "
                "CPUs INT8 can be slower than FP32."
            )
        if cfg.weight_compression != "none":
            notes.append(f"Weights compressed to {cfg.weight_compression} by NNCF (data-free); activations stay float.")
        if cfg.weight_compression.startswith("int4"):
            # NNCF's defaults (all_layers off, backup mode INT8_ASYM), which the bare mode name does not tell.
            notes.append(
                f"INT4 covers the MatMul weights in groups of {cfg.group_size} inputs (ratio {cfg.ratio:g}: that "
                "share of their parameters, the rest INT8); the embedding and the last MatMul (the LM head) stay INT8 "
                "asymmetric per output channel, and a head tied to the embedding shares that INT8 weight."
            )
        return notes

    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        return open_openvino(artifact_dir, options_for(ctx))


def open_openvino(artifact_dir: Path, options: RuntimeOptions) -> Runtime:
    from transformers import AutoTokenizer

    from compress.runtime.openvino import OpenVinoRuntime

    meta = read_metadata(artifact_dir)
    return OpenVinoRuntime(
        artifact_dir / meta["model_file"],
        AutoTokenizer.from_pretrained(artifact_dir),
        meta["task"],
        meta["max_length"],
        threads=options.threads,
        performance_hint=meta.get("performance_hint", "latency"),
        inference_precision=meta.get("inference_precision", "f32"),
        precision=meta.get("precision", "float32"),
        sparse_weights_decompression_rate=meta.get("sparse_weights_decompression_rate"),
    )


def openvino_sample(model: ModelHandle, model_file: str = MODEL_FILE) -> str:
    """A runnable OpenVINO snippet for this artifact."""
    text, post, max_length = sample_io(model)
    return f"""\
import numpy as np
import openvino as ov
from transformers import AutoTokenizer

artifact = "path/to/this/folder"
tokenizer = AutoTokenizer.from_pretrained(artifact)
compiled = ov.Core().compile_model(f"{{artifact}}/{model_file}", "CPU", {{"PERFORMANCE_HINT": "LATENCY"}})
batch = tokenizer({text}, padding=True, truncation=True, max_length={max_length}, return_tensors="np")
feed = {{port.get_any_name(): batch[port.get_any_name()].astype(np.int64) for port in compiled.inputs}}
logits = compiled(feed)["logits"]
{post}
"""
