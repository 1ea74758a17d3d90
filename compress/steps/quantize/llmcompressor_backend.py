"""`backend: llmcompressor` for the `gptq` and `awq` steps: run vLLM's llm-compressor (`oneshot`) on the model in
place, then swap its calibrated Linears for compress's `QuantizedLinear`s, so both implementations save one
checkpoint layout.

Conversion is done in memory and is exact: after `oneshot` each targeted Linear carries llm-compressor's
`weight_scale` / `weight_zero_point`, and its integer values are computed with compressed-tensors' own
`quantize` (what its `pack-quantized` compressor writes). Pinned and checked against llmcompressor 0.14.0.1 with
compressed-tensors 0.19.0; how our settings map onto its modifiers:

- gptq: `GPTQModifier(config_groups, targets, ignore, block_size, dampening_frac=dampening, actorder)`; actorder is
  None, or "static" for `act_order` (llm-compressor fixes group scales before reordering, i.e. our
  `static_groups: true`; compressed-tensors 0.19 removed g_idx ordering, so `static_groups: false` is refused).
- awq: `AWQModifier(n_grid=grid)` with its default Llama mappings (norm → q/k/v, v → o, norm → gate/up,
  up → down), then `QuantizationModifier(config_groups, targets, ignore)` to round. llm-compressor has no
  activation-aware clip search: `clip: true` selects its weight-MSE range search (observer `memoryless_mse`)
  over the same ratios, 1 down to 1 - max_shrink in `clip_grid` steps; `clip_tokens` is unused.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal
from unittest import mock

import torch
from torch import Tensor

from compress.errors import ConfigError, MissingExtra, ModelError
from compress.quantize.scheme import QuantizedWeight, QuantScheme
from compress.quantize.targets import select_linears
from compress.steps.quantize.peer_support import normalize_device, package_version

if TYPE_CHECKING:
    from compress.steps.quantize.awq import AWQConfig
    from compress.steps.quantize.gptq import GPTQConfig

log = logging.getLogger("compress")

PINNED_VERSION = "0.14.0.1"
Method = Literal["gptq", "awq"]


def require_llmcompressor(method: Method) -> ModuleType:
    """Import llmcompressor, or raise MissingExtra naming `<method>.backend` and how to install it."""
    try:
        return importlib.import_module("llmcompressor")
    except ImportError as exc:
        raise MissingExtra(
            f"backend 'llmcompressor' needs the llmcompressor package, which is not importable ({exc})",
            where=f"{method}.backend",
            fix=f"pip install llmcompressor=={PINNED_VERSION} (in its own environment: it pins transformers and "
            "compressed-tensors), or run `nox -s llmcompressor`; or use backend: native",
        ) from exc


def check_llmcompressor_config(method: Method, config: GPTQConfig | AWQConfig) -> None:
    """Refuse settings llm-compressor cannot honour, before any calibration work."""
    if method == "gptq" and config.act_order and not config.static_groups and config.group_size is not None:
        raise ConfigError(
            "llm-compressor (with compressed-tensors 0.19) has no act-order groups with a g_idx "
            "(actorder 'group'); it always fixes group scales before reordering",
            where=f"{method}.static_groups",
            fix="set static_groups: true (actorder 'static'), or use backend: native",
        )


def quantize_with_llmcompressor(
    method: Method,
    model: torch.nn.Module,
    tokenizer: Any,
    config: GPTQConfig | AWQConfig,
    batches: list[Tensor],
    device: torch.device,
    work_dir: Path,
) -> dict[str, Any]:
    """Quantize `model`'s selected Linears with llm-compressor's `method`, in place, into `QuantizedLinear`s.

    `batches` are the step's calibration windows ((batch, seq_len) int64 each), fed unchanged and unshuffled.
    llm-compressor onloads one layer at a time to its main device (the first accelerator, else the CPU) and leaves
    the weights where they were. Returns details for the step's record (versions, device, timing).
    """
    require_llmcompressor(method)
    check_llmcompressor_config(method, config)
    try:
        from compressed_tensors.offload import remove_dispatch
        from llmcompressor import oneshot  # noqa: F401  (the pinned API this module is written against)
        from llmcompressor.utils.dev import get_main_device
    except ImportError as exc:
        raise MissingExtra(
            f"this llmcompressor ({package_version('llmcompressor')}) lacks the API compress uses ({exc})",
            where=f"{method}.backend",
            fix=f"pip install llmcompressor=={PINNED_VERSION}",
        ) from exc
    expected = select_linears(model, config.targets, config.ignore, method)
    main = get_main_device()
    if normalize_device(main) != normalize_device(device):
        log.warning(
            "%s: llm-compressor calibrates on its main device %s, not %s (it takes the first accelerator; "
            "set CUDA_VISIBLE_DEVICES to choose another)",
            method,
            main,
            device,
        )
    started = time.perf_counter()
    try:
        modifiers = _run_oneshot(method, model, tokenizer, config, batches, work_dir)
    finally:
        # llm-compressor leaves the model offloaded (parameters behind an onload cache, wrapped forwards) and its
        # compressing save_pretrained attached, even when it fails: undo both so the model is a plain module again.
        remove_dispatch(model)
        model.__dict__.pop("save_pretrained", None)
    oneshot_seconds = time.perf_counter() - started
    quantized = _quantized_weights(model, expected, config.scheme, method)
    _swap(model, quantized)
    return {
        "backend": "llmcompressor",
        "llmcompressor_version": package_version("llmcompressor"),
        "compressed_tensors_version": package_version("compressed-tensors"),
        "llmcompressor_device": str(main),
        "llmcompressor_modifiers": modifiers,
        "oneshot_seconds": round(oneshot_seconds, 2),
    }


def _run_oneshot(
    method: Method,
    model: torch.nn.Module,
    tokenizer: Any,
    config: GPTQConfig | AWQConfig,
    batches: list[Tensor],
    work_dir: Path,
) -> list[str]:
    """Run llm-compressor's `oneshot` with the recipe for `method` on `model` in place; returns the modifiers."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.core import reset_session

    recipe = _recipe(method, config)
    ids = torch.cat([batch.detach().to("cpu", torch.int64) for batch in batches])
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    try:
        with _readable_config(model, work_dir), _no_pinning_without_accelerator():
            oneshot(
                model=model,
                tokenizer=tokenizer,
                recipe=recipe,
                dataset=dataset,
                num_calibration_samples=len(dataset),
                max_seq_length=ids.shape[1],
                batch_size=batches[0].shape[0],
                # The windows are already drawn at seeded random offsets; keep llm-compressor from redrawing.
                shuffle_calibration_samples=False,
            )
    except Exception as exc:
        exc.add_note(f"raised inside llm-compressor {package_version('llmcompressor')} (backend: llmcompressor)")
        raise
    finally:
        # The global session keeps the modifiers, their hooks and hessians, and a reference to the model.
        reset_session()
    return [type(m).__name__ for m in recipe]


def _recipe(method: Method, config: GPTQConfig | AWQConfig) -> list[Any]:
    """The llm-compressor modifiers equivalent to our step settings (see the module docstring)."""
    weights: dict[str, Any] = {
        "num_bits": config.bits,
        "type": "int",
        "symmetric": config.symmetric,
        "strategy": "channel" if config.group_size is None else "group",
        "group_size": config.group_size,
        "dynamic": False,
    }
    if method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        groups = {"group_0": {"targets": list(config.targets), "weights": weights}}
        return [
            GPTQModifier(
                config_groups=groups,
                targets=list(config.targets),
                ignore=list(config.ignore),
                block_size=config.block_size,
                dampening_frac=config.dampening,
                # Explicit None: llm-compressor's default is "static".
                actorder="static" if config.act_order else None,
            )
        ]
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    if config.clip:
        # Ratios 1 - i/grid for i < maxshrink·grid: the same clip_grid ratios from 1 down to ~1 - max_shrink.
        weights["observer"] = "memoryless_mse"
        weights["observer_kwargs"] = {"maxshrink": config.max_shrink, "grid": config.clip_grid / config.max_shrink}
    groups = {"group_0": {"targets": list(config.targets), "weights": weights}}
    return [
        AWQModifier(n_grid=config.grid),
        QuantizationModifier(config_groups=groups, targets=list(config.targets), ignore=list(config.ignore)),
    ]


@contextlib.contextmanager
def _readable_config(model: torch.nn.Module, work_dir: Path) -> Iterator[None]:
    """Point the model's `name_or_path` at a saved copy of its config for the duration of `oneshot`.

    oneshot re-reads the config from `model.config.name_or_path` to refuse foreign quantized checkpoints; a model
    built in memory has no path, and a hub id is not reachable offline.
    """
    folder = work_dir / "llmcompressor-config"
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    original = model.config._name_or_path
    model.config._name_or_path = str(folder)
    try:
        yield
    finally:
        model.config._name_or_path = original


@contextlib.contextmanager
def _no_pinning_without_accelerator() -> Iterator[None]:
    """llmcompressor 0.14.0.1's AWQ pins its cached activations unconditionally, which raises on a machine without
    an accelerator; pinning only speeds host-to-device copies, so skip it where there is no device."""
    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    with mock.patch.object(IntermediatesCache, "pin_memory", lambda *_args, **_kwargs: None):
        yield


def _quantized_weights(
    model: torch.nn.Module, expected: dict[str, torch.nn.Linear], scheme: QuantScheme, method: Method
) -> dict[str, QuantizedWeight]:
    """Our integer form of every Linear llm-compressor quantized, checked against the layers the step selected."""
    from compressed_tensors.quantization.lifecycle.forward import quantize

    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and getattr(module, "weight_scale", None) is not None
    }
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise ModelError(
            f"{method}: llm-compressor quantized other layers than the step selected "
            f"(not quantized: {missing[:5]}, unexpected: {extra[:5]})",
            fix="write targets/ignore as exact module names or `re:` regexes, which both select alike",
        )
    quantized = {}
    for name, module in found.items():
        args = module.quantization_scheme.weights
        group_size = args.group_size if args.strategy == "group" else None
        theirs = QuantScheme(bits=args.num_bits, group_size=group_size, symmetric=args.symmetric)
        if theirs != scheme or getattr(module, "weight_g_idx", None) is not None:
            raise ModelError(f"{method}: llm-compressor quantized '{name}' as {args}, not as {scheme}")
        with torch.no_grad():
            scale = module.weight_scale.detach()
            zero_point = getattr(module, "weight_zero_point", None)  # symmetric schemes may carry zeros or none
            zero_point = None if zero_point is None else zero_point.detach()
            # What compressed-tensors' pack-quantized compressor stores: round(W / scale + zp), clamped.
            values = quantize(x=module.weight.detach(), scale=scale, zero_point=zero_point, args=args, dtype=torch.int8)
        quantized[name] = QuantizedWeight(
            values=values,
            scale=scale.clone(),
            zero_point=None if scheme.symmetric or zero_point is None else zero_point.to(torch.int8),
            scheme=scheme,
        )
    return quantized


def _swap(model: torch.nn.Module, quantized: dict[str, QuantizedWeight]) -> None:
    """Replace each quantized Linear by a QuantizedLinear; llm-compressor's per-module state goes with it."""
    from compress.models.compressed_tensors import replace_linears

    replace_linears(model, quantized)
    # compressed-tensors leaves a `quantization_enabled` flag on every module it visited (its forward wrappers
    # read it); those wrappers went with the swapped Linears, so drop the flag rather than leave stale state.
    for module in model.modules():
        module.__dict__.pop("quantization_enabled", None)
