"""What every step that observes activations shares (GPTQ, AWQ, Wanda, SparseGPT): calibration windows from
the user's text or the recipe's calibration split, and the pre-flight memory estimate."""

from __future__ import annotations

from typing import Any

import torch

from compress.config import DataSpec
from compress.data.text_data import TextData
from compress.models.handle import ModelHandle
from compress.quantize.calibration import calibration_windows
from compress.quantize.memory_estimate import check_fits, estimate_layerwise
from compress.steps.base import StageContext
from compress.steps.quantize.config import TextWindows


class CalibrationMixin:
    """For a Step whose config has `calibration: CalibrationSpec` and `memory_check: bool`."""

    name: str
    progress: bool
    config: Any
    _details: dict[str, Any]

    def check_memory(self, network: torch.nn.Module, statistics_bytes: int, ctx: StageContext) -> None:
        """Print the pre-flight memory estimate and refuse, before any work, a run that will not fit."""
        if not self.config.memory_check:
            return
        from compress.architectures.decoder import decoder_layers

        spec = self.config.calibration
        estimate = estimate_layerwise(
            network,
            decoder_layers(network),
            samples=spec.samples,
            seq_len=spec.seq_len,
            batch_size=spec.batch_size,
            device=ctx.device,
            statistics_bytes=statistics_bytes,
        )
        self._details["memory_estimate"] = estimate.as_dict()
        if self.progress:
            print(f"{self.name}: {estimate.describe()}", flush=True)
        check_fits(estimate, self.name)

    def calibration_batches(self, model: ModelHandle, ctx: StageContext) -> list[torch.Tensor]:
        spec = self.config.calibration
        windows = text_windows(model, spec, ctx, where=f"{self.name}.calibration")
        return list(windows.split(spec.batch_size))


def text_windows(model: ModelHandle, spec: TextWindows, ctx: StageContext, where: str) -> torch.Tensor:
    """(samples, seq_len) token ids drawn as `spec` says; DataError naming `where` when the text is too short."""
    seed = ctx.seed if spec.seed is None else spec.seed
    return calibration_windows(model.tokenizer, _window_text(spec, ctx, where), spec.samples, spec.seq_len, seed, where)


def _window_text(spec: TextWindows, ctx: StageContext, where: str) -> TextData:
    if spec.data is None:
        # Enough documents for the windows: short ones (C4's median is ~400 tokens) need many.
        return ctx.calibration_data(max(1000, 8 * spec.samples))
    return calibration_file(spec, ctx, where)


def calibration_file(spec: TextWindows, ctx: StageContext, where: str) -> TextData:
    """The rows of `spec.data` (a text file relative to the recipe, column `spec.text`); errors name `where.data`."""
    from compress.data.load import load_text_data

    data_spec = DataSpec(path=spec.data, text=spec.text, label=None)
    return load_text_data(data_spec, "train", task="causal-lm", base_dir=ctx.base_dir, where=f"{where}.data")
