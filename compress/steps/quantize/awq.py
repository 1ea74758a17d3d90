"""`awq` (Lin et al. 2023): per-channel scales that protect the weights salient activations flow through,
searched on calibration text and folded into the op that feeds them, then clipping search and group
quantization. Which norm feeds which projections comes from `compress.architectures` (data, per model type)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveInt

from compress.architectures.decoder import ScaleMapping, decoder_map
from compress.models.handle import ModelHandle
from compress.quantize.awq import activation_scale_search, apply_awq_scale, clip_search
from compress.quantize.rtn import rtn_quantize
from compress.quantize.sequential import calibrate_layer_by_layer
from compress.steps.base import StageContext
from compress.steps.quantize.base import PeerBackedStep, replace_in, take_layer
from compress.steps.quantize.config import PeerBackendConfig

# Clipping q/k projections distorts attention scores more than it saves (llm-awq skips them too).
_NO_CLIP = ("q_proj", "k_proj", "query", "key")


class AWQConfig(PeerBackendConfig):
    grid: PositiveInt = Field(20, description="Scale exponents tried in [0, 1).")
    clip: bool = Field(True, description="Search a per-group clipping ratio after scaling.")
    clip_grid: PositiveInt = Field(20, description="Clipping ratios tried.")
    max_shrink: float = Field(0.5, gt=0, lt=1, description="Smallest clip ratio tried is 1 - max_shrink.")
    clip_tokens: PositiveInt = Field(512, description="Calibration tokens the clipping search uses per layer.")


class AWQ(PeerBackedStep):
    """Activation-aware weight quantization, layer by layer over calibration text."""

    name: ClassVar[str] = "awq"
    Config = AWQConfig
    config: AWQConfig

    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        cfg, scheme = self.config, self.config.scheme
        network = model.model
        arch = decoder_map(network)
        prefix = arch.layers
        tokens = cfg.calibration.samples * cfg.calibration.seq_len
        # captured inputs of every projection group of the widest layer, float32
        widths = [m.in_features for n, m in linears.items() if n.startswith(f"{prefix}.0.")]
        self.check_memory(network, tokens * sum(set(widths)) * 4 * 2, ctx)
        batches = self.calibration_batches(model, ctx)
        if self.quantized_by_peer(model, batches, ctx):
            return
        applied: list[str] = []

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            start = f"{prefix}.{index}."
            here = take_layer(linears, prefix, index)
            mappings = [m for m in arch.scale_mappings if _usable(layer, m, here)]
            # One captured input per group of modules that share it: a mapping's balance layers, or a lone target.
            groups = [m.balance for m in mappings]
            covered = {name for balance in groups for name in balance}
            groups += [(name,) for name in here if name not in covered]
            inputs: dict[tuple[str, ...], list[torch.Tensor]] = {group: [] for group in groups}

            def observe(group: tuple[str, ...]):
                def hook(_module: torch.nn.Module, args: tuple) -> None:
                    inputs[group].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())

                return hook

            handles = [layer.get_submodule(group[0]).register_forward_pre_hook(observe(group)) for group in groups]
            try:
                replay()
            finally:
                for handle in handles:
                    handle.remove()
            # First every scale (a Linear may both feed a mapping and be balanced by one: up_proj), then quantize.
            scaled: dict[tuple[str, ...], torch.Tensor] = {}
            for group in groups:
                x = torch.cat(inputs.pop(group))
                mapping = next((m for m in mappings if m.balance == group), None)
                if mapping is not None:
                    balance = [layer.get_submodule(name) for name in group]
                    scales = activation_scale_search([b.weight.detach().float() for b in balance], x, scheme, cfg.grid)
                    apply_awq_scale(balance, layer.get_submodule(mapping.smooth), scales)
                    x = x / scales
                    applied.append(f"{start}{mapping.smooth}")
                scaled[group] = x
            quantized = {}
            for group, x in scaled.items():
                for name in group:
                    weight = layer.get_submodule(name).weight.detach().float()
                    clip = None
                    if cfg.clip and not name.endswith(_NO_CLIP):
                        clip = clip_search(
                            weight, x, scheme, cfg.clip_grid, cfg.max_shrink, n_sample_tokens=cfg.clip_tokens
                        )
                    quantized[name] = rtn_quantize(weight, scheme, clip_ratio=clip)
            del scaled
            replace_in(layer, quantized)

        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc="awq")
        for name, module in linears.items():  # what take_layer left: targets outside the decoder layers
            replace_in(network, {name: rtn_quantize(module.weight.detach().float(), scheme)})
        self._details["scaled"] = len(applied)


def _usable(layer: torch.nn.Module, mapping: ScaleMapping, targets: dict[str, torch.nn.Linear]) -> bool:
    """A mapping applies when all its balance layers are targets and the smooth op's outputs line up with
    their inputs (v_proj → o_proj does not under grouped-query attention)."""
    if not all(name in targets for name in mapping.balance):
        return False
    try:
        smooth = layer.get_submodule(mapping.smooth)
    except AttributeError:
        return False
    width = smooth.out_features if isinstance(smooth, torch.nn.Linear) else smooth.weight.shape[0]
    return all(targets[name].in_features == width for name in mapping.balance)
