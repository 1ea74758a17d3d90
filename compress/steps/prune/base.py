"""What every pruning step does around its criterion: select modules, check the pattern against their widths
before any work, zero weights in place, and record the sparsity it reached."""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import ClassVar

import torch

from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.prune.pattern import SparsityPattern
from compress.prune.sparsity import layer_sparsity
from compress.steps.base import StageContext, Step
from compress.steps.prune.config import PruneConfig
from compress.steps.quantize.base import unquantized_targets


def check_pattern_fits(linears: dict[str, torch.nn.Linear], pattern: SparsityPattern, where: str) -> None:
    """N:M needs every selected layer's input width to be a multiple of M."""
    if not pattern.structured:
        return
    bad = {name: m.in_features for name, m in linears.items() if m.in_features % pattern.m}
    if bad:
        name, width = next(iter(bad.items()))
        widths = sorted({m.in_features for m in linears.values()})
        raise ConfigError(
            f"pattern {pattern.name} needs input widths that are multiples of {pattern.m}; {len(bad)} layer(s) "
            f"are not, e.g. {name} ({width})",
            where=f"{where}.pattern",
            fix=f"pick an M dividing {widths}, leave those layers out (`ignore`), or use `unstructured`",
        )


class PruneStep(Step):
    """Base of the pruning steps: zeroes weights of the selected Linear layers of the model it is given, in place.

    The pruned model stays dense (zeros in ordinary tensors), so every later step, export and runtime takes it as
    is; a later GPTQ step keeps the zeros (`preserve_sparsity`), and recovery training re-applies the masks.
    """

    Config: ClassVar[type[PruneConfig]] = PruneConfig
    config: PruneConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        where = self.name
        linears = unquantized_targets(
            model,
            self.config,
            where,
            refusal="the model is already weight-quantized; its packed weights cannot be pruned",
            fix="prune first, then quantize (a GPTQ step after pruning keeps the zeros)",
        )
        pattern = self.config.sparsity_pattern
        check_pattern_fits(linears, pattern, where)
        selected = set(linears)
        started = time.perf_counter()
        self.prune(model, linears, pattern, ctx)
        seconds = time.perf_counter() - started
        counts = {name: count for name, count in layer_sparsity(model.model).items() if name in selected}
        zeros, total = sum(z for z, _ in counts.values()), sum(t for _, t in counts.values())
        self._details.update(
            pruned_modules=len(selected),
            pattern=pattern.name,
            target_sparsity=round(pattern.sparsity, 4),
            reached_sparsity=round(zeros / total, 4),
            prune_seconds=round(seconds, 2),
        )
        return model

    @abstractmethod
    def prune(
        self, model: ModelHandle, linears: dict[str, torch.nn.Linear], pattern: SparsityPattern, ctx: StageContext
    ) -> None:
        """Zero weights of each of `linears` in `model.model` under `pattern` (the dict may be consumed)."""


@torch.no_grad()
def apply_keep_mask(linear: torch.nn.Linear, keep: torch.Tensor) -> None:
    linear.weight.mul_(keep.to(device=linear.weight.device, dtype=linear.weight.dtype))
