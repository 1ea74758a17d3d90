"""Typed settings shared by the weight-quantization steps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from compress.config import Schema
from compress.quantize.scheme import QuantScheme
from compress.steps.base import StepConfig


class TextWindows(Schema):
    """Seeded random windows of `seq_len` tokens from the recipe's calibration split or a text file."""

    samples: PositiveInt = Field(128, description="Number of windows.")
    seq_len: PositiveInt = Field(512, description="Tokens per window.")
    seed: int | None = Field(None, description="Seed for drawing windows; default: the recipe's seed.")
    data: str | None = Field(
        None,
        description="A text file (txt/jsonl/csv/…; relative to the recipe) to draw from instead of the "
        "recipe's calibration split (`data.calibration_split`, default the train split).",
    )
    text: str = Field("text", description="Column of `data` holding the text.")


class CalibrationSpec(TextWindows):
    """Text the calibrated methods (GPTQ, AWQ, Wanda, SparseGPT) observe."""

    batch_size: PositiveInt = Field(8, description="Windows per forward pass (memory vs. speed).")


class WeightQuantConfig(StepConfig):
    """Weight-only integer quantization of Linear layers."""

    bits: Literal[4, 8] = Field(4, description="Bits per weight.")
    group_size: PositiveInt | None = Field(
        128, description="Input columns sharing one scale and zero point; null: one per output channel."
    )
    symmetric: bool = Field(False, description="Symmetric (no zero point) or asymmetric quantization.")
    targets: list[str] = Field(
        default_factory=lambda: ["Linear"],
        description="Modules to quantize: a class name, a module name, or `re:<regex>` over module names.",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Modules to keep in full precision (same syntax as `targets`); the head by default.",
    )

    @property
    def scheme(self) -> QuantScheme:
        return QuantScheme(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)


class CalibratedConfig(WeightQuantConfig):
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec, description="Calibration text.")
    memory_check: bool = Field(
        True, description="Estimate peak memory before calibrating and refuse a run that will not fit."
    )


class PeerBackendConfig(CalibratedConfig):
    """A method llm-compressor also implements (GPTQ, AWQ): either runs on the same calibration windows."""

    backend: Literal["native", "llmcompressor"] = Field(
        "native",
        description="Implementation: compress's own (torch), or vLLM's llm-compressor (`pip install "
        "llmcompressor==0.14.0.1`, in its own environment: it pins transformers); both save the same checkpoint.",
    )
