"""What every weight-quantization step does around its algorithm: select modules, check shapes before any
work, quantize in place, and record the checkpoint's `quantization_config` (compressed-tensors layout)."""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.models.placement import collect_on_host
from compress.prune.sparsity import sparsity_structure, zero_share
from compress.quantize.scheme import QuantizedWeight
from compress.quantize.targets import check_patterns, select_linears
from compress.steps.base import StageContext, Step
from compress.steps.calibrated import CalibrationMixin
from compress.steps.quantize.config import CalibratedConfig, PeerBackendConfig, WeightQuantConfig

log = logging.getLogger("compress")


def check_group_size(linears: dict[str, torch.nn.Linear], group_size: int | None, where: str) -> None:
    """Every selected layer's input width must be a multiple of the group size (SmolLM2's 576 is not of 128)."""
    if group_size is None:
        return
    bad = {name: m.in_features for name, m in linears.items() if m.in_features % group_size}
    if bad:
        widths = sorted({m.in_features for m in linears.values()})
        fits = [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        name, width = next(iter(bad.items()))
        raise ConfigError(
            f"group_size {group_size} does not divide the input width of {len(bad)} layer(s), e.g. {name} ({width})",
            where=f"{where}.group_size",
            fix=f"use a group size that divides {widths}: {fits or 'none of 32/64/128/256'}, or null (per channel)",
        )


def already_quantized(model: torch.nn.Module) -> bool:
    config = getattr(model.config, "quantization_config", None)
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    return method is not None  # compressed-tensors (rtn, gptq, awq, …) or bitsandbytes


def unquantized_targets(model: ModelHandle, config: Any, where: str, *, refusal: str, fix: str) -> dict[str, Any]:
    """The Linears `config.targets` / `config.ignore` select, gathered into host memory, after checking the patterns
    and that no earlier step weight-quantized the model (`refusal` / `fix` say why that matters to the caller)."""
    check_patterns(config.targets, f"{where}.targets")
    check_patterns(config.ignore, f"{where}.ignore")
    if already_quantized(model.model):
        raise ConfigError(refusal, where=where, fix=fix)
    collect_on_host(model.model, where)
    return select_linears(model.model, config.targets, config.ignore, where)


class WeightQuantStep(Step):
    """Base of `rtn`, `gptq`, `awq`: quantizes the selected Linear layers of the model it is given, in place."""

    Config: ClassVar[type[WeightQuantConfig]] = WeightQuantConfig
    config: WeightQuantConfig
    evaluate_saved: ClassVar[bool] = True  # judged after save → reload of its compressed-tensors checkpoint

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        from compress.models.compressed_tensors import dense_sparsity_config, quantization_config

        where = self.name
        linears = unquantized_targets(
            model,
            self.config,
            where,
            refusal="the model is already weight-quantized by an earlier step",
            fix="quantize once per recipe: remove one of the quantization steps",
        )
        check_group_size(linears, self.config.group_size, where)
        count = len(linears)
        weights = [m.weight.detach() for m in linears.values()]
        zeros = zero_share(weights)
        structure = sparsity_structure(weights, zeros)  # of an earlier pruning step, recorded for vLLM's kernels
        del weights
        started = time.perf_counter()
        self.quantize(model, linears, ctx)
        scheme = self.config.scheme
        config = quantization_config(
            dict.fromkeys(self.config.targets, scheme), self.config.ignore, actorder=self.checkpoint_actorder()
        )
        if structure is not None:
            config["sparsity_config"] = dense_sparsity_config(structure, zeros, self.config.targets, self.config.ignore)
        model.model.config.quantization_config = config
        self._details.update(quantized_modules=count, quantize_seconds=round(time.perf_counter() - started, 2))
        return model

    def checkpoint_actorder(self) -> str | None:
        """The checkpoint's `actorder` field: None, or GPTQ's "static" / "group" column ordering."""
        return None

    @abstractmethod
    def quantize(self, model: ModelHandle, linears: dict[str, torch.nn.Linear], ctx: StageContext) -> None:
        """Replace each of `linears` in `model.model` by its quantized form (the dict may be consumed)."""


def take_layer(linears: dict[str, torch.nn.Linear], prefix: str, index: int) -> dict[str, torch.nn.Linear]:
    """Remove and return the targets of decoder layer `index`, named relative to the layer.

    Removing them matters: a step that kept every original Linear referenced until it finished would hold the
    whole float model in memory beside the quantized one.
    """
    start = f"{prefix}.{index}."
    names = [name for name in linears if name.startswith(start)]
    return {name[len(start) :]: linears.pop(name) for name in names}


def replace_in(root: torch.nn.Module, quantized: dict[str, QuantizedWeight]) -> None:
    """Swap each named Linear under `root` for a QuantizedLinear computing in the Linear's dtype."""
    from compress.models.compressed_tensors import replace_linears

    if not quantized:
        return
    dtype = root.get_submodule(next(iter(quantized))).weight.dtype
    replace_linears(root, quantized, dtype)


class CalibratedStep(CalibrationMixin, WeightQuantStep):
    """A method that observes activations (GPTQ, AWQ): calibration windows, memory check, layer by layer."""

    Config: ClassVar[type[CalibratedConfig]] = CalibratedConfig
    config: CalibratedConfig


class PeerBackedStep(CalibratedStep):
    """GPTQ and AWQ: `backend: llmcompressor` runs llm-compressor on the same windows, into the same checkpoint."""

    Config: ClassVar[type[PeerBackendConfig]] = PeerBackendConfig
    config: PeerBackendConfig

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        if self.config.backend == "llmcompressor":  # fail before any work when it cannot run
            from compress.steps.quantize.llmcompressor_backend import check_llmcompressor_config, require_llmcompressor

            require_llmcompressor(self.name)
            check_llmcompressor_config(self.name, self.config)
        return super().apply(model, ctx)

    def quantized_by_peer(self, model: ModelHandle, batches: list[torch.Tensor], ctx: StageContext) -> bool:
        """Run llm-compressor when the config asks for it; True when it did (the native algorithm is skipped)."""
        if self.config.backend != "llmcompressor":
            return False
        from compress.steps.quantize.llmcompressor_backend import quantize_with_llmcompressor

        self._details.update(
            quantize_with_llmcompressor(
                self.name, model.model, model.tokenizer, self.config, batches, ctx.device, ctx.work_dir
            )
        )
        return True
