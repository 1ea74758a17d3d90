"""`gptq` (Frantar et al. 2022): quantize each layer's weights column by column, updating the columns not yet
quantized to absorb the error, using Hessians H = 2XXᵀ of the layer's calibration inputs."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveInt

from compress.architectures.decoder import decoder_layers, decoder_map
from compress.models.handle import ModelHandle
from compress.quantize.gptq import accumulate_hessian, gptq_quantize
from compress.quantize.rtn import rtn_quantize
from compress.quantize.sequential import calibrate_layer_by_layer
from compress.steps.base import StageContext
from compress.steps.quantize.base import PeerBackedStep, replace_in
from compress.steps.quantize.config import PeerBackendConfig


class GPTQConfig(PeerBackendConfig):
    block_size: PositiveInt = Field(128, description="Columns per lazy batch update.")
    dampening: float = Field(0.01, gt=0, le=1, description="Added to H's diagonal, as a fraction of its mean.")
    act_order: bool = Field(False, description="Quantize columns in order of decreasing Hessian diagonal.")
    static_groups: bool = Field(
        True,
        description="With act_order and groups: fix each group's scale before reordering, so the checkpoint "
        "needs no column permutation (`actorder: static`); false writes a `g_idx` (`actorder: group`).",
    )


class GPTQ(PeerBackedStep):
    """GPTQ weight quantization, layer by layer over calibration text."""

    name: ClassVar[str] = "gptq"
    Config = GPTQConfig
    config: GPTQConfig

    def checkpoint_actorder(self) -> str | None:
        if not self.config.act_order:
            return None
        return "static" if self.config.static_groups or self.config.group_size is None else "group"

    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        cfg, scheme = self.config, self.config.scheme
        network = model.model
        layers = decoder_layers(network)
        prefix = decoder_map(network).layers
        largest_layer = max(
            sum(m.in_features**2 * 4 for n, m in linears.items() if n.startswith(f"{prefix}.{i}."))
            for i in range(len(layers))
        )
        self.check_memory(network, largest_layer, ctx)
        batches = self.calibration_batches(model, ctx)
        if self.quantized_by_peer(model, batches, ctx):
            return
        losses: dict[str, float] = {}

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            here = {n[len(f"{prefix}.{index}.") :]: m for n, m in linears.items() if n.startswith(f"{prefix}.{index}.")}
            hessians: dict[str, tuple[torch.Tensor | None, int]] = dict.fromkeys(here, (None, 0))

            def observe(name: str):
                def hook(_module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
                    hessian, count = hessians[name]
                    hessians[name] = accumulate_hessian(hessian, inputs[0].detach(), count)

                return hook

            handles = [module.register_forward_hook(observe(name)) for name, module in here.items()]
            try:
                replay()
            finally:
                for handle in handles:
                    handle.remove()
            quantized = {}
            for name, module in here.items():
                hessian, _count = hessians.pop(name)
                qweight, loss = gptq_quantize(
                    module.weight.detach().float(),
                    hessian,
                    scheme,
                    block_size=cfg.block_size,
                    dampening=cfg.dampening,
                    act_order=cfg.act_order,
                    static_groups=cfg.static_groups,
                )
                quantized[name] = qweight
                losses[f"{prefix}.{index}.{name}"] = round(float(loss), 6)
            replace_in(layer, quantized)

        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc="gptq")
        # Targets outside the decoder layers see no calibration here: round-to-nearest.
        rest = {n: m for n, m in linears.items() if not n.startswith(f"{prefix}.")}
        for name, module in rest.items():
            replace_in(network, {name: rtn_quantize(module.weight.detach().float(), scheme)})
        self._details["layer_loss"] = losses
