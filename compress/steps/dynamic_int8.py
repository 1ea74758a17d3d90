"""Dynamic INT8: Linear weights stored as int8, activations quantized per batch at run time."""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import torch
from pydantic import Field

from compress.models.handle import ModelHandle
from compress.steps.base import StageContext, Step, StepConfig


def quantize_dynamic_int8(
    model: torch.nn.Module, per_channel: bool = True, skip: tuple[str, ...] | list[str] = ()
) -> torch.nn.Module:
    """Swap every Linear (except those whose qualified name contains an entry of `skip`) for dynamic INT8."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    targets = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(s in name for s in skip)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices: the kernels are still what ships
        return quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)


class DynamicInt8Config(StepConfig):
    per_channel: bool = Field(True, description="One scale per output channel (more accurate) or per tensor.")
    skip: list[str] = Field(
        default_factory=list,
        description="Keep Linear layers whose name contains any of these in FP32 (e.g. `classifier`).",
    )
    engine: Literal["auto", "fbgemm", "qnnpack", "x86"] = Field(
        "auto", description="Quantized kernel backend; auto keeps torch's default for this CPU."
    )


class DynamicInt8(Step):
    """PyTorch dynamic INT8 of Linear layers (CPU inference)."""

    name: ClassVar[str] = "dynamic_int8"
    Config = DynamicInt8Config
    config: DynamicInt8Config

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        if self.config.engine != "auto":
            torch.backends.quantized.engine = self.config.engine
        params = {"per_channel": self.config.per_channel, "skip": list(self.config.skip)}
        # In place (the runner reloads the float stage if it is needed again), on the CPU: the quantized
        # kernels are CPU-only.
        quantized = quantize_dynamic_int8(model.model.cpu().float(), **params)
        return model.replace(model=quantized, transforms=[*model.transforms, {"name": self.name, **params}])
