"""Gradual magnitude pruning during training (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity rises from its start value to the target along a cubic curve — fast while many weights are redundant,
slowly near the end — re-pruning by magnitude every few optimizer steps, so the network adapts to each small cut
instead of losing half its weights at once. Between updates (and after the ramp) the current masks are re-applied
after every optimizer step, exactly as `SparsityKeeper` keeps a one-shot mask.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from compress.prune.masks import global_threshold, keep_mask
from compress.prune.pattern import SparsityPattern


def cubic_sparsity(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: `initial` up to `start`, `final` from `end`, s_f + (s_i − s_f)(1 − progress)³ between."""
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1 - progress) ** 3


class GradualMagnitude:
    """Re-prunes `linears` by magnitude on the cubic schedule over optimizer steps [`start`, `end`], every `every`."""

    def __init__(
        self,
        linears: dict[str, torch.nn.Linear],
        final: float,
        start: int,
        end: int,
        every: int,
        scope: Literal["layer", "global"] = "layer",
    ) -> None:
        self.linears, self.final, self.start, self.end = linears, final, start, max(end, start + 1)
        self.every, self.scope = max(every, 1), scope
        # Zeros already there (a pruned model) are where the schedule starts from: they stay zero throughout.
        weights = [m.weight.detach() for m in linears.values()]
        self.initial = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        self.masks: dict[str, torch.Tensor] = {name: m.weight.detach() != 0 for name, m in linears.items()}
        self.sparsity = self.initial

    def target(self, step: int) -> float:
        return max(self.initial, cubic_sparsity(step, self.start, self.end, self.final, self.initial))

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimizer step `step` (1-based): move the masks along the schedule when due, then apply them."""
        due = self.start < step <= self.end and ((step - self.start) % self.every == 0 or step == self.end)
        if due and self.target(step) > self.sparsity:
            self._prune(self.target(step))
        for name, linear in self.linears.items():
            linear.weight.mul_(self.masks[name].to(linear.weight.device))

    def catch_up(self, step: int) -> None:
        """Resuming at `step`: the masks the schedule had reached (the weights' zeros hold them already)."""
        if step > self.start:
            self._prune(self.target(min(step, self.end)))

    def _prune(self, sparsity: float) -> None:
        scores = {name: m.weight.detach().abs() for name, m in self.linears.items()}
        if self.scope == "global":
            threshold = global_threshold(list(scores.values()), sparsity)
            masks = {name: score > threshold for name, score in scores.items()}
        else:
            pattern = SparsityPattern(sparsity=sparsity)
            masks = {name: keep_mask(score, pattern, scope="layer") for name, score in scores.items()}
        # A weight once pruned stays pruned: the masks only ever lose entries.
        self.masks = {name: masks[name] & self.masks[name].to(masks[name].device) for name in masks}
        self.sparsity = sparsity


def ramp_steps(total: int, start: float, end: float) -> tuple[int, int]:
    """Optimizer steps where the ramp begins and ends, from fractions of `total`."""
    return math.floor(start * total), max(math.ceil(end * total), 1)
