"""`rtn`: round-to-nearest weight quantization — no calibration data, the baseline every method must beat."""

from __future__ import annotations

from typing import ClassVar

import torch
from tqdm.auto import tqdm

from compress.models.handle import ModelHandle
from compress.quantize.rtn import rtn_quantize
from compress.steps.base import StageContext
from compress.steps.quantize.base import WeightQuantStep, replace_in
from compress.steps.quantize.config import WeightQuantConfig


class RTN(WeightQuantStep):
    """Round-to-nearest INT4/INT8 weights, per channel or per group, symmetric or asymmetric."""

    name: ClassVar[str] = "rtn"
    Config = WeightQuantConfig
    config: WeightQuantConfig

    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        scheme = self.config.scheme
        for name in tqdm(list(linears), desc="rtn", unit="layer", disable=not self.progress):
            linear = linears.pop(name)  # the float weight is freed once replaced
            weight = linear.weight.detach().to(ctx.device, torch.float32)
            quantized = rtn_quantize(weight, scheme)
            replace_in(model.model, {name: quantized.to(linear.weight.device)})
