"""`autoround` (Cheng et al. 2023): per decoder layer, learn each weight's rounding offset and each group's clip
range by signed gradient descent on the layer's output error over calibration text (intel/auto-round's SignRound),
then store the result as ordinary grouped integer weights."""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar, Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt

from compress.architectures.decoder import decoder_layers, decoder_map
from compress.models.handle import ModelHandle
from compress.quantize.autoround import capture_calls, tune_block
from compress.quantize.rtn import rtn_quantize
from compress.quantize.sequential import calibrate_layer_by_layer
from compress.steps.base import StageContext
from compress.steps.quantize.base import CalibratedStep, replace_in, take_layer
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
        "native",
        description="Implementation: compress's own (torch), or Intel's auto-round package (`pip install "
        '"compress[autoround]"`, auto-round 0.15.1) on the same calibration windows; both save the same checkpoint.',
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
        """Fail before any work when the auto-round backend cannot run (the per-layer checks need the model and
        run at the start of `quantize`, still before calibration)."""
        if self.config.backend == "native":
            return
        from compress.steps.quantize.autoround_backend import require_autoround

        require_autoround(f"{self.name}.backend")

    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        cfg, scheme = self.config, self.config.scheme
        network = model.model
        layers = decoder_layers(network)
        prefix = decoder_map(network).layers
        calls_per_step = math.ceil(cfg.batch_size / cfg.calibration.batch_size)
        statistics = self._statistics_bytes(network, linears, prefix, len(layers))
        if cfg.backend == "auto-round":
            from compress.steps.quantize.autoround_backend import check_autoround_config

            check_autoround_config(self.name, linears, prefix)
            linears.clear()  # the backend selects its own; holding these would keep the float layers alive
            # auto-round keeps the full-precision input stream of every window beside the quantized one.
            statistics += self._window_activation_bytes(network)
        self.check_memory(network, statistics, ctx)
        batches = self.calibration_batches(model, ctx)
        spec_seed = cfg.calibration.seed
        seed = ctx.seed if spec_seed is None else spec_seed
        if cfg.backend == "auto-round":
            from compress.steps.quantize.autoround_backend import quantize_with_autoround

            self._details.update(
                quantize_with_autoround(self.name, network, model.tokenizer, cfg, batches, ctx.device, seed)
            )
            return
        losses: dict[str, dict[str, float | int | None]] = {}

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            here = take_layer(linears, prefix, index)
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
        for name, module in linears.items():  # what take_layer left: targets outside the decoder layers
            replace_in(network, {name: rtn_quantize(module.weight.detach().float(), scheme)})
        self._details["layer_loss"] = losses

    def _window_activation_bytes(self, network: torch.nn.Module) -> int:
        """One layer's activations for every calibration window."""
        cfg = self.config.calibration
        hidden = int(getattr(network.config, "hidden_size", 0) or 0)
        return cfg.samples * cfg.seq_len * hidden * next(network.parameters()).element_size()

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
        targets = self._window_activation_bytes(network)
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
