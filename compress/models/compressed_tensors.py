"""Quantized Linear layers stored in the compressed-tensors `pack-quantized` layout.

A quantized model is saved as its ordinary `state_dict()` plus a `quantization_config` entry in config.json.
Each quantized Linear contributes the tensors compressed-tensors names and shapes exactly this way:

    <name>.weight_packed      int32 (out, ceil(in * bits / 32))   values, see compress.quantize.pack
    <name>.weight_scale       float (out, groups)                 in the model's dtype
    <name>.weight_zero_point  int32 (ceil(out * bits / 32), groups)  asymmetric only, packed along dim 0
    <name>.weight_shape       int64 (2,)                          [out, in]
    <name>.weight_g_idx       int32 (in,)                         act-order groups only (actorder "group")
    <name>.bias               float (out,)                        when the Linear has one

so `transformers.AutoModelForCausalLM.from_pretrained` reads the directory when compressed-tensors is installed,
and compress reads it back into `QuantizedLinear`s with `build_quantized_skeleton` + `load_state_dict`.
What plain transformers can load depends on the installed compressed-tensors; with 0.19.0:
symmetric checkpoints load as is; asymmetric ones need
`quantization_config=CompressedTensorsConfig(dequantize=True)` (its compress-on-meta step leaves the zero point
unpacked, so the shapes clash); act-order (`weight_g_idx`) ones are refused, since 0.19.0 removed actorder "group".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ModelError
from compress.quantize.pack import pack_int, pack_zero_point, packed_size, unpack_int, unpack_zero_point
from compress.quantize.scheme import QuantizedWeight, QuantScheme

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
# Written when compressed-tensors is not installed: the release whose layout this module was checked against.
_FALLBACK_VERSION = "0.19.0"
_ACTORDERS = (None, "static", "group")


class QuantizedLinear(nn.Module):
    """A Linear whose weight is held packed; `forward` runs on the dequantized weight.

    Memory trade-off: the first forward dequantizes the weight into a dense tensor of the compute dtype (the
    dtype of `weight_scale`, i.e. the model's) and keeps it, so later calls cost one `F.linear`, the same as
    an unquantized layer, but the layer then holds the dense weight in memory on top of the packed one. The
    checkpoint on disk stays small either way. Set `cache_weight = False` (or call `clear_cache()` after a
    batch) where memory matters more than speed. The cache is dropped when the buffers change (`to()`,
    `load_state_dict`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: QuantScheme,
        *,
        bias: bool,
        act_order: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if scheme.group_size is not None and in_features % scheme.group_size:
            # compressed-tensors rejects a ragged last group when it decompresses, so never write one.
            raise ValueError(f"in_features {in_features} is not a multiple of group_size {scheme.group_size}")
        if act_order and scheme.group_size is None:
            raise ValueError("act-order groups (g_idx) need a group_size")
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme
        self.cache_weight = True
        self._dense: torch.Tensor | None = None
        groups = scheme.groups(in_features)
        words = packed_size(in_features, scheme.bits)
        self.register_buffer("weight_packed", torch.zeros(out_features, words, dtype=torch.int32, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=dtype, device=device))
        if not scheme.symmetric:
            zp_words = packed_size(out_features, scheme.bits)
            self.register_buffer("weight_zero_point", torch.zeros(zp_words, groups, dtype=torch.int32, device=device))
        else:
            self.weight_zero_point = None
        self.register_buffer("weight_shape", torch.tensor([out_features, in_features], device=device))
        if act_order:
            self.register_buffer("weight_g_idx", torch.zeros(in_features, dtype=torch.int32, device=device))
        else:
            self.weight_g_idx = None
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_quantized(
        cls, qw: QuantizedWeight, bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32
    ) -> QuantizedLinear:
        """Pack `qw`; `dtype` is the compute dtype, in which the scale and bias are stored."""
        out_features, in_features = qw.values.shape
        scheme = qw.scheme
        act_order = qw.g_idx is not None
        layer = cls(
            in_features,
            out_features,
            scheme,
            bias=bias is not None,
            act_order=act_order,
            dtype=dtype,
            device=qw.values.device,
        )
        expected = (out_features, layer.weight_scale.shape[1])
        if tuple(qw.scale.shape) != expected:
            raise ValueError(f"scale has shape {tuple(qw.scale.shape)}, the scheme {scheme} needs {expected}")
        if (qw.zero_point is None) != scheme.symmetric:
            raise ValueError(f"zero_point must be {'None' if scheme.symmetric else 'given'} for {scheme}")
        with torch.no_grad():
            layer.weight_packed.copy_(pack_int(qw.values, scheme.bits))
            layer.weight_scale.copy_(qw.scale)
            if qw.zero_point is not None:
                if tuple(qw.zero_point.shape) != expected:
                    raise ValueError(f"zero_point has shape {tuple(qw.zero_point.shape)}, expected {expected}")
                layer.weight_zero_point.copy_(pack_zero_point(qw.zero_point.to(torch.int8), scheme.bits))
            if act_order:
                layer.weight_g_idx.copy_(qw.g_idx)
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def to_quantized(self) -> QuantizedWeight:
        """The integer form back, e.g. for another exporter."""
        zero_point = None
        if self.weight_zero_point is not None:
            zero_point = unpack_zero_point(self.weight_zero_point, self.scheme.bits, self.out_features)
        return QuantizedWeight(
            values=unpack_int(self.weight_packed, self.scheme.bits, self.in_features),
            scale=self.weight_scale.detach().clone(),
            zero_point=zero_point,
            scheme=self.scheme,
            g_idx=None if self.weight_g_idx is None else self.weight_g_idx.clone(),
        )

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) weight in the scale's dtype, computed as compressed-tensors does: `(q - zp) * scale`."""
        if self._dense is not None:
            return self._dense
        dtype = self.weight_scale.dtype
        values = unpack_int(self.weight_packed, self.scheme.bits, self.in_features).to(dtype)
        if self.weight_g_idx is not None:
            index = self.weight_g_idx.long()
        else:
            size = self.scheme.group_size or self.in_features
            index = torch.arange(self.in_features, device=values.device) // size
        if self.weight_zero_point is not None:
            zero_point = unpack_zero_point(self.weight_zero_point, self.scheme.bits, self.out_features)
            values = values - zero_point.to(dtype)[:, index]
        weight = values * self.weight_scale[:, index]
        if self.cache_weight:
            self._dense = weight
        return weight

    def clear_cache(self) -> None:
        self._dense = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        # `.to(dtype/device)` rewrites the buffers; a cached weight from before would be stale.
        self._dense = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._dense = None
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        group = "channel" if self.scheme.group_size is None else f"group_size={self.scheme.group_size}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.scheme.bits}, {group}, "
            f"symmetric={self.scheme.symmetric}, act_order={self.weight_g_idx is not None}, "
            f"bias={self.bias is not None}"
        )


def _installed_version() -> str:
    try:
        return metadata.version("compressed-tensors")
    except metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


def _weight_args(scheme: QuantScheme, actorder: str | None) -> dict[str, Any]:
    if actorder not in _ACTORDERS:
        raise ValueError(f"actorder must be one of {_ACTORDERS}, got {actorder!r}")
    channel = scheme.group_size is None
    if actorder == "group" and channel:
        raise ValueError("actorder 'group' needs a group_size")
    # Only the fields every compressed-tensors release knows: the schema forbids unknown keys, so newer
    # fields (scale_dtype, zp_dtype, ...) would break older readers; their defaults are what we mean anyway.
    return {
        "num_bits": scheme.bits,
        "type": "int",
        "symmetric": scheme.symmetric,
        "strategy": "channel" if channel else "group",
        "group_size": None if channel else scheme.group_size,
        "dynamic": False,
        "actorder": actorder,
    }


def quantization_config(
    schemes_by_target: Mapping[str, QuantScheme],
    ignore: Sequence[str] = (),
    *,
    actorder: Mapping[str, str | None] | str | None = None,
) -> dict[str, Any]:
    """The `quantization_config` entry of config.json for weight-only int Linears in `pack-quantized` format.

    `schemes_by_target` maps a compressed-tensors target ("Linear", an exact module name, or "re:<regex>"
    matched from the start of the name) to its scheme; targets with equal scheme and actorder share a config
    group. `ignore` names modules the targets would match but that stay dense (e.g. "lm_head"). `actorder`
    (one value for all, or per target) is None, "static" (GPTQ ordering during calibration, plain layout) or
    "group" (the layer stores `weight_g_idx`).
    """
    groups: dict[tuple[QuantScheme, str | None], list[str]] = {}
    for target, scheme in schemes_by_target.items():
        order = actorder.get(target) if isinstance(actorder, Mapping) else actorder
        groups.setdefault((scheme, order), []).append(target)
    config_groups = {
        f"group_{i}": {
            "targets": targets,
            "weights": _weight_args(scheme, order),
            "input_activations": None,
            "output_activations": None,
            "format": FORMAT,
        }
        for i, ((scheme, order), targets) in enumerate(groups.items())
    }
    return checkpoint_config(FORMAT, config_groups, ignore)


def checkpoint_config(format: str, config_groups: dict[str, Any], ignore: Sequence[str]) -> dict[str, Any]:
    """The `quantization_config` envelope around config groups, as compressed-tensors writes it."""
    return {
        "quant_method": QUANT_METHOD,
        "format": format,
        "config_groups": config_groups,
        "ignore": list(ignore),
        "quantization_status": "compressed",
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
        "version": _installed_version(),
    }


def dense_sparsity_config(
    structure: str, global_sparsity: float, targets: Sequence[str], ignore: Sequence[str]
) -> dict[str, Any]:
    """`sparsity_config` of a pruned model stored dense (zeros in the packed codes): compressed-tensors' `dense`
    format, whose `sparsity_structure` ("2:4" or "unstructured") tells vLLM which kernels may run it."""
    return {
        "format": "dense",
        "global_sparsity": round(global_sparsity, 4),
        "sparsity_structure": structure,
        "targets": list(targets),
        "ignore": list(ignore),
    }


def _name_regex(names: Sequence[str]) -> str:
    return "re:^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def quantization_config_for(model: nn.Module, quantized: Mapping[str, QuantizedWeight]) -> dict[str, Any]:
    """`quantization_config` describing exactly the layers in `quantized` (module name → weight) of `model`.

    One scheme for every quantized Linear gives the usual `targets: ["Linear"]` with the other Linears
    (lm_head, ...) in `ignore`; otherwise each group targets a regex of its exact module names.
    Layers with a g_idx get actorder "group".
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear | QuantizedLinear)]
    unknown = sorted(set(quantized) - set(linears))
    if unknown:
        raise ModelError(f"not Linear layers of the model: {unknown[:5]}")
    kinds: dict[tuple[QuantScheme, str | None], list[str]] = {}
    for name in linears:
        if name in quantized:
            qw = quantized[name]
            kinds.setdefault((qw.scheme, None if qw.g_idx is None else "group"), []).append(name)
    ignore = [name for name in linears if name not in quantized]
    if len(kinds) == 1:
        ((scheme, order),) = kinds
        return quantization_config({"Linear": scheme}, ignore, actorder=order)
    targets = {_name_regex(names): scheme for (scheme, _), names in kinds.items()}
    orders = {_name_regex(names): order for (_, order), names in kinds.items()}
    return quantization_config(targets, [], actorder=orders)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _tied_output(model: nn.Module) -> nn.Module | None:
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "get_output_embeddings"):
        return model.get_output_embeddings()
    return None


def replace_linears(
    model: nn.Module, quantized: Mapping[str, QuantizedWeight], dtype: torch.dtype | None = None
) -> nn.Module:
    """Swap each named nn.Linear for a QuantizedLinear holding its packed weight, in place; returns `model`.

    `dtype` is the compute dtype of the new layers (default: each Linear's own weight dtype).
    """
    tied = _tied_output(model)
    for name, qw in quantized.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError as error:
            raise ModelError(f"the model has no module '{name}'") from error
        if not isinstance(linear, nn.Linear):
            raise ModelError(f"'{name}' is a {type(linear).__name__}, not an nn.Linear")
        if linear is tied:
            # Its weight is the input embedding too; packing it would silently untie (or corrupt) the embedding.
            raise ModelError(f"'{name}' shares its weight with the input embedding", fix=f"leave '{name}' dense")
        if tuple(qw.values.shape) != tuple(linear.weight.shape):
            raise ModelError(f"'{name}': quantized shape {tuple(qw.values.shape)} != {tuple(linear.weight.shape)}")
        layer = QuantizedLinear.from_quantized(qw, linear.bias, dtype or linear.weight.dtype)
        _set_module(model, name, layer.to(linear.weight.device))
    return model


def _parse_scheme(name: str, group: Mapping[str, Any]) -> tuple[QuantScheme, bool]:
    weights = group.get("weights") or {}
    unsupported = []
    if group.get("input_activations") or group.get("output_activations"):
        unsupported.append("activation quantization")
    if weights.get("type", "int") != "int":
        unsupported.append(f"type {weights.get('type')}")
    if weights.get("dynamic"):
        unsupported.append("dynamic weights")
    strategy = weights.get("strategy") or ("group" if (weights.get("group_size") or 0) > 0 else "tensor")
    if strategy not in ("group", "channel"):
        unsupported.append(f"strategy {strategy}")
    if group.get("format") not in (None, FORMAT):
        unsupported.append(f"format {group.get('format')}")
    if unsupported:
        raise ModelError(
            f"quantization config group '{name}' uses {', '.join(unsupported)}, which compress cannot load"
        )
    scheme = QuantScheme(
        bits=int(weights.get("num_bits", 8)),
        group_size=int(weights["group_size"]) if strategy == "group" else None,
        symmetric=bool(weights.get("symmetric", True)),
    )
    return scheme, weights.get("actorder") in ("group", "dynamic", True)


def _matches(name: str, module: nn.Module, target: str) -> int | None:
    """compressed-tensors' match rank: 0 exact name, 1 regex (`re.match`), 2 class name in the MRO, None: no match."""
    if target == name:
        return 0
    if target.startswith("re:"):
        return 1 if re.match(target[3:], name) else None
    return 2 if any(cls.__name__ == target for cls in type(module).__mro__) else None


def build_quantized_skeleton(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """Swap the Linears that `config` quantizes for empty QuantizedLinears, in place, so `load_state_dict` fills them.

    `config` is the saved `quantization_config` dict (or a whole config.json dict holding one). Matching follows
    compressed-tensors: a module matches a target by exact name, `re:` regex or class name, the most specific
    target decides its group, and `ignore` entries (same syntax) win over all targets.
    """
    config = config.get("quantization_config", config)
    if config.get("quant_method") != QUANT_METHOD:
        raise ModelError(f"quantization_config is {config.get('quant_method')!r}, not {QUANT_METHOD!r}")
    from compress.models.w8a8 import FORMAT as W8A8_FORMAT

    if config.get("format") == W8A8_FORMAT:  # W8A8 (smoothquant): int8 weights and per-token int8 activations
        from compress.models.w8a8 import build_w8a8_skeleton

        return build_w8a8_skeleton(model, config)
    if config.get("format") not in (None, FORMAT, "mixed-precision"):
        raise ModelError(f"quantization format {config.get('format')!r} is not {FORMAT!r}, which compress cannot load")
    groups = {name: _parse_scheme(name, group) for name, group in config.get("config_groups", {}).items()}
    targets = [(target, name) for name, group in config.get("config_groups", {}).items() for target in group["targets"]]
    ignore = config.get("ignore") or []
    replacements: dict[str, QuantizedLinear] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(_matches(module_name, module, target) is not None for target in ignore):
            continue
        ranked = [
            (rank, group) for target, group in targets if (rank := _matches(module_name, module, target)) is not None
        ]
        if not ranked:
            continue
        scheme, act_order = groups[min(ranked, key=lambda item: item[0])[1]]
        replacements[module_name] = QuantizedLinear(
            module.in_features,
            module.out_features,
            scheme,
            bias=module.bias is not None,
            act_order=act_order,
            dtype=module.weight.dtype,
            device=module.weight.device,
        )
    for module_name, layer in replacements.items():
        _set_module(model, module_name, layer)
    return model
