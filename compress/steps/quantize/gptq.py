"""`gptq` (Frantar et al. 2022): quantize each layer's weights column by column, updating the columns not yet
quantized to absorb the error, using Hessians H = 2XXᵀ of the layer's calibration inputs."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveInt

from compress.architectures.decoder import decoder_layers, decoder_map, shared_input_groups
from compress.models.handle import ModelHandle
from compress.prune.masks import PRUNED_LAYER_SPARSITY
from compress.quantize.gptq import accumulate_hessian, gptq_quantize
from compress.quantize.rtn import rtn_quantize
from compress.quantize.sequential import calibrate_layer_by_layer, observe_inputs
from compress.steps.base import StageContext
from compress.steps.quantize.base import PeerBackedStep, replace_in, take_layer
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
    preserve_sparsity: bool | None = Field(
        None,
        description="Keep pruned weights at exactly zero (error updates skip them), so an earlier pruning "
        "step's sparsity (2:4 too) survives; default: for layers that are at least 5 % zeros.",
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
            here = take_layer(linears, prefix, index)
            # Modules reading one input share its Hessian, and GPTQ treats rows independently: q/k/v (gate/up)
            # stacked along their rows are one GPTQ problem, quantized in one pass with the same result.
            groups = shared_input_groups(network, list(here))
            hessians = observe_inputs(here, groups, accumulate_hessian, replay)
            quantized = {}
            for group in groups:
                hessian = hessians.pop(group)
                weights = [here[name].weight.detach().float() for name in group]
                weight = torch.cat(weights) if len(weights) > 1 else weights[0]
                preserve = cfg.preserve_sparsity
                if preserve is None:
                    preserve = (weight == 0).float().mean().item() >= PRUNED_LAYER_SPARSITY
                qweight, loss = gptq_quantize(
                    weight,
                    hessian,
                    scheme,
                    block_size=cfg.block_size,
                    dampening=cfg.dampening,
                    act_order=cfg.act_order,
                    static_groups=cfg.static_groups,
                    preserve_zeros=preserve,
                )
                del hessian, weights, weight
                parts = qweight.split_rows([here[name].out_features for name in group])
                quantized.update(zip(group, parts, strict=True))
                losses[f"{prefix}.{index}.{'+'.join(group)}"] = round(float(loss), 6)
            replace_in(layer, quantized)

        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc="gptq")
        # Targets outside the decoder layers see no calibration here: round-to-nearest.
        for name, module in linears.items():
            replace_in(network, {name: rtn_quantize(module.weight.detach().float(), scheme)})
        self._details["layer_loss"] = losses
