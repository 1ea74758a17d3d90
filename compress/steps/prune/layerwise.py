"""Pruning criteria that read calibration activations (Wanda, SparseGPT), run layer by layer like GPTQ: each
decoder layer is pruned from the inputs the already-pruned layers before it produce. With `layer_sparsity: owl`
a first pass over the dense model sets each layer's sparsity from its outlier scores (`compress.prune.owl`)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from compress.architectures.decoder import decoder_layers, decoder_map, shared_input_groups
from compress.models.handle import ModelHandle
from compress.prune.masks import keep_mask
from compress.prune.owl import layer_sparsities, outlier_ratio
from compress.prune.pattern import SparsityPattern
from compress.prune.wanda import accumulate_input_norms, wanda_scores
from compress.quantize.sequential import Accumulate, calibrate_layer_by_layer, observe_inputs
from compress.steps.base import StageContext
from compress.steps.calibrated import CalibrationMixin
from compress.steps.prune.base import PruneStep, apply_keep_mask
from compress.steps.prune.config import CalibratedPruneConfig
from compress.steps.quantize.base import take_layer

log = logging.getLogger("compress")


class LayerwisePruneStep(CalibrationMixin, PruneStep):
    Config: ClassVar[type[CalibratedPruneConfig]] = CalibratedPruneConfig
    config: CalibratedPruneConfig
    accumulate: ClassVar[Accumulate]  # the input statistic the criterion needs

    @abstractmethod
    def statistic_bytes(self, width: int) -> int:
        """Bytes of one module group's statistic for inputs of `width` features (for the memory estimate)."""

    @abstractmethod
    def prune_module(self, linear: torch.nn.Linear, statistic: Any, pattern: SparsityPattern) -> float | None:
        """Prune one Linear in place from its inputs' statistic; returns its loss when the criterion has one."""

    def prune(
        self, model: ModelHandle, linears: dict[str, torch.nn.Linear], pattern: SparsityPattern, ctx: StageContext
    ) -> None:
        network = model.model
        prefix = decoder_map(network).layers
        # An upper bound: one statistic per module (modules sharing an input share one in fact).
        per_layer = [
            sum(self.statistic_bytes(m.in_features) for n, m in linears.items() if n.startswith(f"{prefix}.{i}."))
            for i in range(len(decoder_layers(network)))
        ]
        self.check_memory(network, max(per_layer), ctx)
        batches = self.calibration_batches(model, ctx)
        patterns = self.layer_patterns(model, linears, pattern, batches, ctx)
        losses: dict[str, float] = {}

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            here = take_layer(linears, prefix, index)
            groups = shared_input_groups(network, list(here))
            statistics = observe_inputs(here, groups, type(self).accumulate, replay)
            for group in groups:
                statistic = statistics.pop(group)
                for name in group:
                    loss = self.prune_module(here[name], statistic, patterns[index])
                    if loss is not None:
                        losses[f"{prefix}.{index}.{name}"] = round(loss, 6)
                del statistic

        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc=self.name)
        if linears:  # targets outside the decoder layers see no calibration here
            log.warning("%s: %d target(s) outside the decoder layers pruned by magnitude", self.name, len(linears))
            for linear in linears.values():
                apply_keep_mask(linear, keep_mask(linear.weight.detach().abs(), pattern, scope="row"))
            self._details["magnitude_fallback"] = sorted(linears)
        if losses:
            self._details["layer_loss"] = losses

    def layer_patterns(
        self,
        model: ModelHandle,
        linears: dict[str, torch.nn.Linear],
        pattern: SparsityPattern,
        batches: list[torch.Tensor],
        ctx: StageContext,
    ) -> list[SparsityPattern]:
        """Each decoder layer's pattern: `pattern` throughout, or OWL's sparsities from a pass over the dense model."""
        network = model.model
        count = len(decoder_layers(network))
        if self.config.layer_sparsity == "uniform":
            return [pattern] * count
        prefix = decoder_map(network).layers
        remaining = dict(linears)  # the pruning pass consumes `linears` itself
        ratios: list[float] = [0.0] * count

        def on_layer(index: int, layer: torch.nn.Module, replay) -> None:
            here = take_layer(remaining, prefix, index)
            groups = shared_input_groups(network, list(here))
            # Wanda's per-input mean x² whatever the criterion: OWL scores by |W|·‖X‖ (no Hessians needed here).
            norms = observe_inputs(here, groups, accumulate_input_norms, replay)
            scores = [wanda_scores(here[name].weight, norms[group]) for group in groups for name in group]
            ratios[index] = outlier_ratio(scores, self.config.owl_threshold)

        owl = f"{self.name} owl"
        calibrate_layer_by_layer(network, batches, ctx.device, on_layer, progress=self.progress, desc=owl)
        sparsities = layer_sparsities(ratios, pattern.sparsity, self.config.owl_spread)
        self._details["owl_outlier_ratio"] = [round(ratio, 5) for ratio in ratios]
        self._details["owl_layer_sparsity"] = [round(value, 4) for value in sparsities]
        return [SparsityPattern(sparsity=value) for value in sparsities]
