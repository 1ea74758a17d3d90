"""`smoothquant` (Xiao et al. 2022): per-channel smoothing scales from calibration activations, folded into the
norms that feed the attention and MLP input projections, then W8A8 — int8 weights per output channel, int8
activations per token at run time, integer matmuls (`compress.models.w8a8`). Saved in compressed-tensors'
`int-quantized` format, which vLLM serves with its INT8 kernels."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from compress.architectures.decoder import ScaleMapping, decoder_map
from compress.models.handle import ModelHandle
from compress.models.w8a8 import replace_with_w8a8, w8a8_quantization_config
from compress.quantize.awq import apply_awq_scale
from compress.quantize.sequential import calibrate_layer_by_layer
from compress.quantize.smoothquant import channel_absmax, outlier_ratio, smoothing_scales
from compress.steps.base import StageContext
from compress.steps.quantize.awq import _usable
from compress.steps.quantize.base import CalibratedStep, take_layer
from compress.steps.quantize.config import CalibratedConfig


class SmoothQuantConfig(CalibratedConfig):
    alpha: float = Field(
        0.5, ge=0, le=1, description="Migration strength: how much of the activations' range moves into the weights."
    )
    # W8A8 is one scheme: these are fixed, and only accepted at these values so a recipe cannot ask for another.
    bits: Literal[8] = Field(8, description="Bits of weights and activations (W8A8).")
    group_size: None = Field(None, description="Weights: one scale per output channel.")
    symmetric: Literal[True] = Field(True, description="Weights and activations: symmetric, no zero point.")


class SmoothQuant(CalibratedStep):
    """SmoothQuant smoothing of norm → projection inputs, then W8A8 Linears, layer by layer."""

    name: ClassVar[str] = "smoothquant"
    Config = SmoothQuantConfig
    config: SmoothQuantConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        handle = super().apply(model, ctx)
        # The base step writes the weight-only `pack-quantized` entry; these layers are W8A8 `int-quantized`.
        handle.model.config.quantization_config = w8a8_quantization_config(self.config.targets, self.config.ignore)
        return handle

    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        cfg = self.config
        network = model.model
        arch = decoder_map(network)
        prefix = arch.layers
        # one running max per captured input group of a layer, float32: negligible next to the activations
        widths = [m.in_features for n, m in linears.items() if n.startswith(f"{prefix}.0.")]
        self.check_memory(network, sum(widths) * 4, ctx)
        batches = self.calibration_batches(model, ctx)
        ratios: list[tuple[float, float]] = []

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            here = take_layer(linears, prefix, index)
            mappings = [m for m in arch.scale_mappings if _smoothable(layer, m, here)]
            absmax: dict[tuple[str, ...], torch.Tensor | None] = dict.fromkeys((m.balance for m in mappings), None)

            def observe(group: tuple[str, ...]):
                def hook(_module: torch.nn.Module, args: tuple) -> None:
                    absmax[group] = channel_absmax(args[0], absmax[group])

                return hook

            handles = [
                layer.get_submodule(m.balance[0]).register_forward_pre_hook(observe(m.balance)) for m in mappings
            ]
            try:
                if mappings:
                    replay()
            finally:
                for handle in handles:
                    handle.remove()
            for mapping in mappings:
                x_absmax = absmax[mapping.balance]
                if x_absmax is None:  # the layer never ran this input (no calibration batch reached it)
                    continue
                balance = [layer.get_submodule(name) for name in mapping.balance]
                scales = smoothing_scales(x_absmax, [b.weight for b in balance], cfg.alpha)
                apply_awq_scale(balance, layer.get_submodule(mapping.smooth), scales)
                ratios.append((outlier_ratio(x_absmax), outlier_ratio(x_absmax / scales)))
            replace_with_w8a8(layer, list(here))

        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc="smoothquant")
        # Targets outside the decoder layers have no mapping: quantized as they are.
        replace_with_w8a8(network, list(linears))  # what take_layer left
        self._details.update(_ratio_details(ratios))


def _smoothable(layer: torch.nn.Module, mapping: ScaleMapping, targets: dict[str, torch.nn.Linear]) -> bool:
    """The reference smooths only norm → projections: a mapping whose smooth op is a Linear (v_proj → o_proj,
    up_proj → down_proj) is left alone, as are mappings AWQ could not use either."""
    if not _usable(layer, mapping, targets):
        return False
    return not isinstance(layer.get_submodule(mapping.smooth), torch.nn.Linear)


def _ratio_details(ratios: list[tuple[float, float]]) -> dict[str, Any]:
    """How much the smoothing flattened the activations: mean max/median channel absmax, before and after."""
    if not ratios:
        return {"smoothed": 0}
    before, after = zip(*ratios, strict=True)
    return {
        "smoothed": len(ratios),
        "outlier_ratio_before": round(sum(before) / len(before), 2),
        "outlier_ratio_after": round(sum(after) / len(after), 2),
    }
