"""`backend: auto-round` for the `autoround` step: run Intel's auto-round package (SignRound) on the model in place,
on compress's own calibration windows, then swap its tuned Linears for compress's `QuantizedLinear`s, so both
implementations save one checkpoint layout (compressed-tensors `pack-quantized`).

Pinned and checked against auto-round 0.15.1 (with transformers 5.24, torch 2.13). auto-round is driven through its
Python API without an export format: `AutoRound(...).quantize()` leaves every tuned Linear fake-quantized (its
weight replaced by the dequantized grid values) with the grid beside it as plain attributes, `scale` (out, groups)
and `zp`. Those are converted in memory:

- asymmetric: auto-round's codes are unsigned, q ∈ [0, 2**bits - 1], with an unsigned integer zero point, and
  w = scale · (q - zp). compressed-tensors (and compress) store signed codes and a signed zero point; both are
  shifted by 2**(bits-1), which leaves q - zp, hence every dequantized weight, unchanged;
- symmetric: auto-round uses the grid's extra negative level for each group's largest magnitude, whichever its
  sign, by making the group's scale negative when that value is positive (codes in [-2**(bits-1), 2**(bits-1) - 1],
  w = scale · q). compressed-tensors dequantizes with the same `values × scale`, so the signed scales are stored as
  they are (auto-round's own compressed-tensors export does the same); compress's native grid keeps scales positive
  and clamps the largest positive value to qmax instead.

The integers are recovered as round(weight / scale) from the fake-quantized weight; every one is checked to lie on
the grid and in range, so a package release that changed its conventions fails loudly instead of saving garbage.
How our settings map onto auto-round's is in `docs/steps/autoround.md` ("backend: auto-round").
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import time
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from compress.architectures.decoder import decoder_map
from compress.errors import ConfigError, MissingExtra, ModelError
from compress.quantize.rtn import grouped
from compress.quantize.scheme import QuantizedWeight, QuantScheme
from compress.quantize.targets import select_linears
from compress.steps.quantize.peer_support import normalize_device, package_version

if TYPE_CHECKING:
    from compress.steps.quantize.autoround import AutoRoundConfig

log = logging.getLogger("compress")

PINNED_VERSION = "0.15.1"
# auto-round 0.15.1 silently keeps in full precision every integer-quantized Linear whose input or output width is
# not a multiple of 32 (its packing unit): such targets are refused here rather than left dense behind our back.
WIDTH_MULTIPLE = 32
# How far from an integer weight / scale may land before the layer counts as off the grid. A fake-quantized
# bfloat16 weight is off by at most |q - zp| · 2**-9 < 0.06 steps; a wrong convention is off by whole steps.
_GRID_TOLERANCE = 0.25
_FIX_INSTALL = f'pip install "compress[autoround]" (auto-round=={PINNED_VERSION}), or use backend: native'


def require_autoround(where: str) -> ModuleType:
    """Import auto_round and the API this module uses, or raise MissingExtra at `where` with the install fix."""
    try:
        module = importlib.import_module("auto_round")
        from auto_round import AutoRound, RTNConfig, SignRoundConfig  # noqa: F401  (the pinned API)
        from auto_round.context.compress import CompressContext  # noqa: F401
        from auto_round.context.model import ModelContext  # noqa: F401
        from auto_round.schemes import QuantizationScheme  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(
            f"backend 'auto-round' needs the auto-round package, which is not importable ({exc})",
            where=where,
            fix=_FIX_INSTALL,
        ) from exc
    installed = package_version("auto-round")
    if installed != PINNED_VERSION:
        log.warning("auto-round %s is installed; backend 'auto-round' is checked against %s", installed, PINNED_VERSION)
    return module


def check_autoround_config(step: str, linears: dict[str, nn.Linear], layers_prefix: str) -> None:
    """Refuse, before any calibration work, targets auto-round would not quantize the way the step promises."""
    outside = sorted(name for name in linears if not name.startswith(f"{layers_prefix}."))
    if outside:
        raise ConfigError(
            f"the auto-round backend quantizes only Linears inside the decoder layers; {len(outside)} selected "
            f"layer(s) lie outside them, e.g. {outside[0]} (auto-round would tune them on their own inputs, the "
            "native step rounds them to nearest)",
            where=f"{step}.ignore",
            fix=f"add {outside[:3]} to ignore (lm_head is there by default), or use backend: native",
        )
    narrow = {
        name: (m.in_features, m.out_features)
        for name, m in linears.items()
        if m.in_features % WIDTH_MULTIPLE or m.out_features % WIDTH_MULTIPLE
    }
    if narrow:
        name, (width_in, width_out) = next(iter(narrow.items()))
        raise ConfigError(
            f"auto-round {PINNED_VERSION} keeps in full precision every integer Linear whose input or output width "
            f"is not a multiple of {WIDTH_MULTIPLE}: {len(narrow)} selected layer(s), e.g. {name} "
            f"({width_in} -> {width_out})",
            where=f"{step}.targets",
            fix=f"add them to ignore (e.g. {sorted(narrow)[:3]}), or use backend: native",
        )


def quantize_with_autoround(
    step: str,
    model: nn.Module,
    tokenizer: Any,
    config: AutoRoundConfig,
    batches: list[Tensor],
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Quantize `model`'s selected Linears with auto-round's SignRound, in place, into `QuantizedLinear`s.

    `batches` are the step's calibration windows ((batch, seq_len) int64 each), fed in order as auto-round's
    dataset; auto-round tunes on `device`, `seed` seeds its batch sampling. The model comes back in the dtypes,
    devices, `requires_grad` flags and training mode it had, without auto-round's attributes on its modules, and
    the process's RNG states and deterministic-algorithms setting are restored. Returns details for the step's
    record: versions, the settings auto-round ran with, and its wall time (`backend_seconds`).
    """
    require_autoround(f"{step}.backend")
    expected = select_linears(model, config.targets, config.ignore, step)
    prefix = decoder_map(model).layers
    check_autoround_config(step, expected, prefix)
    dtypes = {name: m.weight.dtype for name, m in expected.items()}
    parameter = next(model.parameters())
    model_dtype, home = parameter.dtype, parameter.device
    windows = [batch.detach().to("cpu", torch.int64) for batch in batches]
    with _contained(model):
        compressor, seconds = _run_autoround(model, tokenizer, config, windows, expected, device, seed)
        settings = _settings(compressor, config, model_dtype)
        settings["tuning_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        del compressor
        quantized = _quantized_weights(model, expected, config.scheme, step)
        # Swap while the Linears still carry auto-round's grid; each new layer computes in its Linear's old dtype.
        from compress.models.compressed_tensors import replace_linears

        for dtype in set(dtypes.values()):
            replace_linears(model, {n: q for n, q in quantized.items() if dtypes[n] == dtype}, dtype)
    if next(model.parameters()).device != home:
        model.to(home)  # auto-round hands the model back on the CPU
    return {
        "backend": "auto-round",
        "auto_round_version": package_version("auto-round"),
        "autoround_device": str(device),
        "autoround_settings": settings,
        **seconds,
    }


def _run_autoround(
    model: nn.Module,
    tokenizer: Any,
    config: AutoRoundConfig,
    windows: list[Tensor],
    expected: dict[str, nn.Linear],
    device: torch.device,
    seed: int,
) -> tuple[Any, dict[str, float]]:
    """Build auto-round's compressor for our settings and run its `quantize()` on `model` in place (no export).

    Returns the compressor (for the settings it resolved) and its wall times: `backend_seconds` covers auto-round's
    whole run (building, which loads the model into its contexts, plus `quantize()`), `backend_quantize_seconds`
    the `quantize()` call alone (calibration caching, block tuning).
    """
    from auto_round import AutoRound, RTNConfig, SignRoundConfig
    from auto_round.context.compress import CompressContext
    from auto_round.context.model import ModelContext
    from auto_round.schemes import QuantizationScheme

    prefix = decoder_map(model).layers
    # Linears inside the decoder layers that the step does not select stay dense (auto-round's own "fp" entry).
    dense = {"bits": 16, "act_bits": 16, "data_type": "float", "act_data_type": "float"}
    keep = {
        name: dict(dense)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(f"{prefix}.") and name not in expected
    }
    scheme = QuantizationScheme.from_dict(
        {
            "bits": config.bits,
            "group_size": -1 if config.group_size is None else config.group_size,  # -1: per output channel
            "sym": config.symmetric,
            "data_type": "int",
            "act_bits": 16,  # weight-only
        }
    )
    # iters 0 is plain round-to-nearest in the native step; auto-round's counterpart is RTN without its
    # "optimized RTN" scale search (a different, data-driven method).
    algorithm = (
        SignRoundConfig(iters=config.iters, lr=config.learning_rate, minmax_lr=config.minmax_learning_rate)
        if config.iters
        else RTNConfig(disable_opt_rtn=True)
    )
    model_dtype = next(model.parameters()).dtype
    try:
        started = time.perf_counter()
        compressor = AutoRound(
            model,
            tokenizer,
            scheme=scheme,
            alg_configs=algorithm,
            layer_config=keep,
            dataset=windows,
            nsamples=sum(w.shape[0] for w in windows),
            seqlen=windows[0].shape[1],
            batch_size=config.batch_size,
            seed=seed,
            device_map=str(normalize_device(device)),
            # amp would tune a float32 model in bfloat16; the native step tunes in the model's own dtype.
            amp=model_dtype != torch.float32,
            # The checkpoint stores scales in the model's dtype: computing them in it makes the conversion exact
            # (auto-round's default float16 scales would be rounded again for a bfloat16 model).
            scale_dtype=model_dtype,
            # On a CPU, torch.compile needs a C++ toolchain and its compile time outweighs small runs; on an
            # accelerator auto-round's own default (on) is kept, as part of its own speed.
            enable_torch_compile=None if device.type != "cpu" else False,
            # The model is already in memory; auto-round's block offloading to disk would only add I/O.
            low_cpu_mem_usage=False,
        )
        built = time.perf_counter()
        compressor.quantize()
        finished = time.perf_counter()
    except Exception as exc:
        exc.add_note(f"raised inside auto-round {package_version('auto-round')} (backend: auto-round)")
        raise
    finally:
        # auto-round keeps its model and compression contexts as process-wide singletons: drop them, so the model
        # (and the cached activations) are not held until the next auto-round run.
        ModelContext.reset_context()
        CompressContext.reset_context()
    seconds = {
        "backend_seconds": round(finished - started, 2),
        "backend_quantize_seconds": round(finished - built, 2),
    }
    return compressor, seconds


def _settings(compressor: Any, config: AutoRoundConfig, model_dtype: torch.dtype) -> dict[str, Any]:
    """What auto-round ran with, as it resolved it (learning rates default to 1/iters there too)."""
    algorithm = compressor.quantize_config
    return {
        "algorithm": type(algorithm).__name__,
        "iters": config.iters,
        "lr": getattr(algorithm, "lr", None),
        "minmax_lr": getattr(algorithm, "minmax_lr", None),
        "batch_size": compressor.calibration_context.batch_size,
        "nsamples": compressor.calibration_context.nsamples,
        "seqlen": compressor.calibration_context.seqlen,
        "seed": compressor.seed,
        "scale_dtype": str(model_dtype).removeprefix("torch."),
        "amp": bool(compressor.model_context.amp),
        "torch_compile": bool(compressor.enable_torch_compile),
    }


def _quantized_weights(
    model: nn.Module, expected: dict[str, nn.Linear], scheme: QuantScheme, step: str
) -> dict[str, QuantizedWeight]:
    """Our integer form of every Linear auto-round quantized, checked against the layers the step selected."""
    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and getattr(module, "scale", None) is not None
    }
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise ModelError(
            f"{step}: auto-round quantized other layers than the step selected "
            f"(not quantized: {missing[:5]}, unexpected: {extra[:5]})",
            fix="write targets/ignore as exact module names or `re:` regexes, or use backend: native",
        )
    return {name: _integer_form(name, module, scheme, step) for name, module in found.items()}


def _integer_form(name: str, module: nn.Linear, scheme: QuantScheme, step: str) -> QuantizedWeight:
    group_size = None if module.group_size == -1 else module.group_size
    theirs = QuantScheme(bits=module.bits, group_size=group_size, symmetric=bool(module.sym))
    if theirs != scheme or module.data_type != "int":
        raise ModelError(f"{step}: auto-round quantized '{name}' as {theirs} ({module.data_type}), not as {scheme}")
    with torch.no_grad():
        scale = module.scale.detach()
        steps = grouped(module.weight.detach().float(), scheme) / scale.float()[..., None]
        codes = torch.round(steps)
        off_grid = float((steps - codes).abs().max())
        offset = 2 ** (scheme.bits - 1)
        if scheme.symmetric:
            values, zero_point = codes, None
        else:
            zp = torch.as_tensor(module.zp).detach().float().reshape(scale.shape)
            if not torch.equal(zp, zp.round()):
                raise ModelError(f"{step}: auto-round's zero point of '{name}' is not an integer")
            # Unsigned [0, 2**bits - 1] codes and zero point -> the signed ones compressed-tensors stores.
            values, zero_point = codes + zp[..., None] - offset, (zp - offset).to(torch.int8)
        low, high = float(values.min()), float(values.max())
    if off_grid > _GRID_TOLERANCE or low < scheme.qmin or high > scheme.qmax:
        raise ModelError(
            f"{step}: auto-round {package_version('auto-round')} left '{name}' off compress's grid (largest distance "
            f"to an integer step {off_grid:.3f}, codes {low:.0f}..{high:.0f} for [{scheme.qmin}, {scheme.qmax}])",
            fix=f"pip install auto-round=={PINNED_VERSION} (the conventions this backend converts), "
            "or use backend: native",
        )
    return QuantizedWeight(
        values=values.reshape(module.weight.shape).to(torch.int8),
        scale=scale.clone(),
        zero_point=zero_point,
        scheme=scheme,
    )


@contextlib.contextmanager
def _contained(model: nn.Module) -> Iterator[None]:
    """Undo what auto-round changes beyond the quantized Linears, on the model and in the process.

    On the model: it casts parameters and buffers to its tuning dtype (float32 for a bfloat16 model on a CPU
    without bf16 support), turns `requires_grad` off everywhere, leaves attributes on every module it visited
    (`global_name`, the scheme fields, a patched `forward` on the first decoder layer) and calls `eval()`. In the
    process: it reseeds the global RNGs and turns deterministic algorithms on (warn-only).
    """
    modules = {id(m): set(m.__dict__) for m in model.modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    kinds = {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}
    training = model.training
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        for module in model.modules():
            before = modules.get(id(module))
            if before is not None:  # new modules (our QuantizedLinears) are left alone
                for key in set(module.__dict__) - before:
                    del module.__dict__[key]
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                if name in kinds and tensor.dtype != kinds[name]:
                    tensor.data = tensor.data.to(kinds[name])
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))
        model.train(training)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
