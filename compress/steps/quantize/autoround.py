"""`autoround` (Cheng et al. 2023): per decoder layer, learn each weight's rounding offset and each group's clip
range by signed gradient descent on the layer's output error over calibration text (intel/auto-round's SignRound),
then store the result as ordinary grouped integer weights."""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from typing import ClassVar, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt

from compress.architectures.decoder import decoder_layers, decoder_map
from compress.errors import ConfigError, MissingExtra
from compress.models.handle import ModelHandle
from compress.quantize.autoround import capture_calls, tune_block
from compress.quantize.rtn import rtn_quantize
from compress.quantize.sequential import calibrate_layer_by_layer
from compress.steps.base import StageContext
from compress.steps.quantize.base import CalibratedStep, replace_in
from compress.steps.quantize.config import CalibratedConfig

log = logging.getLogger("compress")


class AutoRoundConfig(CalibratedConfig):
    iters: NonNegativeInt = Field(200, description="Signed-gradient steps per decoder layer; 0 is plain RTN.")
    learning_rate: float | None = Field(
        None, gt=0, description="Step size for the rounding offsets, decayed linearly to 0; default 1/iters."
    )
    minmax_learning_rate: float | None = Field(
        None, gt=0, description="Step size for the per-group clip factors; default: learning_rate."
    )
    batch_size: PositiveInt = Field(
        8,
        description="Calibration windows per tuning step, rounded up to whole calibration batches "
        "(calibration.batch_size).",
    )
    backend: Literal["native", "auto-round"] = Field(
        "native", description="Implementation: compress's own (torch), or the auto-round package (not yet)."
    )


class AutoRound(CalibratedStep):
    """AutoRound (SignRound) weight quantization, layer by layer over calibration text."""

    name: ClassVar[str] = "autoround"
    Config = AutoRoundConfig
    config: AutoRoundConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        self._check_backend()
        return super().apply(model, ctx)

    def _check_backend(self) -> None:
        if self.config.backend == "native":
            return
        if importlib.util.find_spec("auto_round") is None:
            raise MissingExtra(
                "backend 'auto-round' needs the auto-round package, which is not installed",
                where=f"{self.name}.backend",
                fix="pip install auto-round, or use backend: native (the same algorithm in compress)",
            )
        raise ConfigError(
            "backend 'auto-round' is not implemented yet",
            where=f"{self.name}.backend",
            fix="use backend: native (the same algorithm in compress)",
        )

    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        cfg, scheme = self.config, self.config.scheme
        network = model.model
        layers = decoder_layers(network)
        prefix = decoder_map(network).layers
        calls_per_step = math.ceil(cfg.batch_size / cfg.calibration.batch_size)
        self.check_memory(network, self._statistics_bytes(network, linears, prefix, len(layers)), ctx)
        batches = self.calibration_batches(model, ctx)
        spec_seed = cfg.calibration.seed
        seed = ctx.seed if spec_seed is None else spec_seed
        losses: dict[str, dict[str, float | int | None]] = {}

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            start = f"{prefix}.{index}."
            here = {n[len(start) :]: m for n, m in linears.items() if n.startswith(start)}
            if not here:
                return
            started = time.perf_counter()
            calls, targets = capture_calls(layer, replay)
            tuned = tune_block(
                layer,
                calls,
                targets,
                here,
                scheme,
                iters=cfg.iters,
                lr=cfg.learning_rate,
                minmax_lr=cfg.minmax_learning_rate,
                batch_size=calls_per_step * cfg.calibration.batch_size,
                seed=seed + index,
            )
            del calls, targets
            replace_in(layer, tuned.quantized)
            seconds = time.perf_counter() - started
            losses[f"{prefix}.{index}"] = {
                "rtn": _significant(tuned.initial_loss),
                "best": _significant(tuned.best_loss),
                "best_step": tuned.best_step,
                "seconds": round(seconds, 2),
            }
            log.info(
                "autoround: layer %d loss %s -> %s (step %s), %.1fs",
                index,
                tuned.initial_loss,
                tuned.best_loss,
                tuned.best_step,
                seconds,
            )

        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc="autoround")
        # Targets outside the decoder layers see no calibration here: round-to-nearest.
        rest = {n: m for n, m in linears.items() if not n.startswith(f"{prefix}.")}
        for name, module in rest.items():
            replace_in(network, {name: rtn_quantize(module.weight.detach().float(), scheme)})
        self._details["layer_loss"] = losses

    def _statistics_bytes(
        self, network: torch.nn.Module, linears: dict[str, torch.nn.Linear], prefix: str, count: int
    ) -> int:
        """What tuning adds for the largest layer: the fp targets of every window, V with its gradient and best
        copy (float32; α/β are per group, negligible), and the autograd graph of one calibration batch."""
        cfg = self.config.calibration
        config = network.config
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        activation_size = next(network.parameters()).element_size()
        targets = cfg.samples * cfg.seq_len * hidden * activation_size
        weights = max(
            sum(m.weight.numel() for n, m in linears.items() if n.startswith(f"{prefix}.{i}.")) for i in range(count)
        )
        # Signed descent keeps no optimizer moments: V, its gradient, the best V.
        state = 3 * weights * 4
        # Tensors a decoder layer saves for backward, per token: ~a dozen hidden-wide (norms, q/k/v, residuals),
        # a few MLP-wide (gate, up, their product), and the eager attention probabilities; float32 to be safe.
        graph = cfg.batch_size * cfg.seq_len * (12 * hidden + 4 * intermediate + 2 * heads * cfg.seq_len) * 4
        return targets + state + graph


def _significant(loss: float | None) -> float | None:
    # Layer losses are tiny (1e-7 on small models): keep significant digits, not decimals.
    return None if loss is None else float(f"{loss:.6g}")
