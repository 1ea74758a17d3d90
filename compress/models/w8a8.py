"""W8A8 Linear layers: int8 weights and int8 activations, multiplied in integer arithmetic.

The scheme is compressed-tensors' `W8A8` preset, saved in its `int-quantized` layout so that vLLM (and
transformers with compressed-tensors installed) loads the same folder:

    <name>.weight        int8  (out, in)  symmetric per output channel, see compress.quantize.rtn
    <name>.weight_scale  float (out, 1)   in the model's dtype
    <name>.bias          float (out,)     when the Linear has one

Activations are quantized at run time, one symmetric int8 scale per token, so a token's result never depends
on the other tokens of its batch. The scale is compressed-tensors' symmetric one, `absmax / 127.5` (the largest
positive value rounds to 128 and is clamped to 127), as for the weights (`compress.quantize.rtn`): transformers'
simulation of the checkpoint then matches to float rounding. vLLM's int8 kernel divides by 127 instead, which
moves some roundings by one level, a difference of the order of the quantization error itself. The products are
accumulated exactly, in integers, then scaled back: `y = (q_x @ q_wᵀ) * s_x * s_w + bias`. Three kernels compute
the integer product; all give the same integers and share the rescale, so the choice changes speed, not results
(the outputs are bit-identical, tested):

- `int_mm`: `torch._int_mm` (int8 x int8 -> int32). On CUDA it is cuBLAS' int8 GEMM, which needs more than 16
  rows and both other dimensions multiples of 8: inputs are padded with zeros to fit. On CPUs with AVX512-VNNI it
  was the fastest INT8 path measured (1.2-1.8x float32 at 512 tokens on a 16-core Xeon); on an AVX2 CPU without
  VNNI it is 25-70x slower than float32 `F.linear` at prefill sizes.
- `fbgemm` and `fbgemm_act`: fbgemm's CPU int8 GEMM through the op
  `quantized::linear_with_input_q_dq_qweight_dq_output_fp32`, which quantizes its float input to uint8 with the
  scale and zero point it is given (fused into its packing of the input), multiplies by the packed int8 weight
  and returns float32 after the zero-point compensation. The codes go in as integer-valued floats with scale 1,
  so its quantization only adds the zero point. Without VNNI fbgemm adds pairs of uint8 x int8 products in
  saturating int16 (`vpmaddubsw`), which overflows for full-range operands (255 * 127 * 2 > 2**15); the two
  kernels avoid that differently:
  `fbgemm` splits each weight into two halves in [-64, 64] (2x the output rows, summed afterwards; zero point
  128, pair sums within ±32640), which doubles the weight the GEMM streams; `fbgemm_act` splits each code c
  into trunc(c / 2) in [-64, 63] and the rest in [-64, 64] (2x the rows; zero point 64, so uint8 operands in
  [0, 128] against the full int8 weight, pair sums in [-32768, 32512]), which streams the weight once. Decoding
  one token is bound by reading the weights, so there the second row costs little; for many tokens both splits
  double the arithmetic. With AVX512-VNNI (uint8 x int8 straight into int32) neither splits. The float32
  results are exact integers while |sums| < 2**24; `fbgemm_act`'s halves differ by at most one per code, so
  each stays below 2**24 whenever the total does (for in_features < 2**17).

`kernel = "auto"` picks by the measurements of `python -m compress.models.w8a8` (tables in
docs/steps/smoothquant.md): `int_mm` on CUDA and on AVX512-VNNI CPUs, `fbgemm_act` on other CPUs whose torch has
fbgemm (the fastest exact path there at decode, and level with `fbgemm` for many tokens), `int_mm` anywhere else.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import math
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ModelError
from compress.quantize.rtn import rtn_quantize
from compress.quantize.scheme import QuantizedWeight, QuantScheme

FORMAT = "int-quantized"
WEIGHT_SCHEME = QuantScheme(bits=8, group_size=None, symmetric=True)
Kernel = Literal["auto", "int_mm", "fbgemm", "fbgemm_act"]
_KERNELS = ("auto", "int_mm", "fbgemm", "fbgemm_act")
# fbgemm's op that quantizes a float input with given qparams (scale 1: the identity on integer codes), GEMMs
# against the packed weight and returns float32 with the zero-point compensation applied.
_FBGEMM_OP = "linear_with_input_q_dq_qweight_dq_output_fp32"
# Inputs up to this many elements keep their `fbgemm_act` buffer between calls (2 x 128 KiB at most per layer).
_SCRATCH_MAX_ELEMENTS = 2**15
# compressed-tensors' symmetric scale divides the absmax by half the int8 range, (127 - (-128)) / 2.
_HALF_RANGE = 127.5
# Per-token scales of all-zero tokens: any positive value keeps x / scale finite (the codes are all 0).
_TINY = torch.finfo(torch.float32).tiny
_INF = float("inf")
# The same constants as 0-d CPU tensors: dividing by a Python number wraps it in a new tensor on every call,
# which at decode costs as much as the division itself; the float32 quotients are the same.
_HALF_RANGE_CPU = torch.tensor(_HALF_RANGE)
_TWO_CPU = torch.tensor(2.0)
# cuBLAS' int8 GEMM behind torch._int_mm on CUDA: rows > 16, inner and output dimensions multiples of 8.
_CUDA_MIN_ROWS = 17
_CUDA_ALIGN = 8


def quantize_per_token(x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row of `x` (..., K) and its scale (..., 1): `x ≈ codes * scale`.

    Codes are integer-valued float32 (what the fbgemm kernels feed their op; `.to(torch.int8)` is exact),
    written into `out` when given. The scale is absmax / 127.5, compressed-tensors' symmetric convention.
    """
    x = x.float()
    half_range = _HALF_RANGE_CPU if x.device.type == "cpu" else _HALF_RANGE
    # ord=inf is max |x| in one reduction (abs then amax is two passes over the activations); dividing the
    # reduction's fresh output in place saves an allocation and computes the same float32 quotient
    scale = torch.linalg.vector_norm(x, ord=_INF, dim=-1, keepdim=True).div_(half_range).clamp_(min=_TINY)
    codes = torch.div(x, scale, out=out) if out is not None else x / scale
    return codes.round_().clamp_(-128, 127), scale


@functools.cache
def fbgemm_available() -> bool:
    """fbgemm is in this torch build, with the op that quantizes its float input with given qparams."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, _FBGEMM_OP)


def _fbgemm_linear(x: torch.Tensor, zero_point: int, packed: Any) -> torch.Tensor:
    """fbgemm's u8 x s8 GEMM of integer-valued float32 `x` (..., K), quantized by the op with scale 1 (so the
    uint8 operand is x + zero_point exactly), as float32 (..., N): exact integers below 2**24."""
    return getattr(torch.ops.quantized, _FBGEMM_OP)(x, 1.0, zero_point, packed)


@functools.cache
def _has_vnni() -> bool:
    """AVX512-VNNI multiplies uint8 x int8 straight into int32 (no saturating int16 pair sums to avoid)."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else False


def _pad_to(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class W8A8Linear(nn.Module):
    """A Linear computing with int8 weights and per-token dynamic int8 activations (see the module docstring).

    Each kernel's prepared weight (fbgemm's packed weight or halves, the padded transpose for CUDA) and the
    rescale's float32 weight scales are built on first use and kept outside the state dict; they are dropped
    whenever the buffers are replaced (`to()`, `load_state_dict`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.kernel: Kernel = "auto"
        self._prepared: dict[str, Any] = {}
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, quantized: QuantizedWeight | None = None) -> W8A8Linear:
        """Quantize `linear`'s weight symmetrically per output channel (or take `quantized`, of that scheme)."""
        qw = quantized or rtn_quantize(linear.weight.detach().float(), WEIGHT_SCHEME)
        if qw.scheme != WEIGHT_SCHEME or tuple(qw.values.shape) != tuple(linear.weight.shape):
            raise ValueError(f"need an int8 symmetric per-channel weight of shape {tuple(linear.weight.shape)}")
        dtype = linear.weight.dtype
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=dtype, device="cpu")
        with torch.no_grad():
            layer.weight.copy_(qw.values)
            layer.weight_scale.copy_(qw.scale.reshape(-1, 1))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) float32 weight the integers stand for, e.g. to compare with the original."""
        return self.weight.float() * self.weight_scale.float()

    def resolved_kernel(self) -> str:
        if self.kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}")
        if self.kernel != "auto":
            return self.kernel
        auto = self._prepared.get("auto")  # decided once per placement: this runs on every forward
        if auto is None:
            on_avx2 = self.weight.device.type == "cpu" and not _has_vnni() and fbgemm_available()
            auto = self._prepared["auto"] = "fbgemm_act" if on_avx2 else "int_mm"
        return auto

    def _prepare(self, kernel: str) -> Any:
        prepared = self._prepared.get(kernel)
        if prepared is not None:
            return prepared
        if kernel in ("fbgemm", "fbgemm_act"):
            if self.weight.device.type != "cpu" or not fbgemm_available():
                raise ValueError(f"the {kernel} kernel needs a CPU layer and a torch build with fbgemm")
            w = self.weight
            if kernel == "fbgemm" and not _has_vnni():
                wide = w.to(torch.int16)
                low = torch.div(wide, 2, rounding_mode="floor")  # w = low + (w - low), both halves in [-64, 64]
                w = torch.cat([low, wide - low]).to(torch.int8)
            previous = torch.backends.quantized.engine
            try:
                torch.backends.quantized.engine = "fbgemm"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's deprecation notice for quantized tensors
                    prepared = torch.ops.quantized.linear_prepack(
                        torch._make_per_tensor_quantized_tensor(w, 1.0, 0), None
                    )
            finally:
                torch.backends.quantized.engine = previous
        elif self.weight.device.type == "cuda":
            rows, cols = _pad_to(self.out_features, _CUDA_ALIGN), _pad_to(self.in_features, _CUDA_ALIGN)
            prepared = F.pad(self.weight, (0, cols - self.in_features, 0, rows - self.out_features)).t()
        else:
            prepared = self.weight.t()
        self._prepared[kernel] = prepared
        return prepared

    def _weight_scale_row(self) -> torch.Tensor:
        """(out,) float32 weight scales for the rescale (broadcast over any leading dimensions), made once
        rather than converted on every call."""
        row = self._prepared.get("weight_scale")
        if row is None:
            row = self._prepared["weight_scale"] = self.weight_scale.float().reshape(-1)
        return row

    def accumulate(self, codes: torch.Tensor, kernel: str | None = None) -> torch.Tensor:
        """Exact integer products `codes @ weightᵀ` (M, out) of int8-range codes (M, in), as float32.

        `codes` may be int8 or integer-valued floats. The values are exact integers whenever they stay below
        2**24 in magnitude (always for in_features <= 1024, and for real activations far beyond).
        """
        kernel = self.resolved_kernel() if kernel in (None, "auto") else kernel
        if kernel == "fbgemm_act":
            buf = torch.empty((2, *codes.shape), dtype=torch.float32)
            buf[1].copy_(codes)
            return self._fbgemm_act(buf, buf[0], buf[1])
        if kernel == "fbgemm":
            return self._fbgemm(codes.float())
        return self._int_mm(codes)

    def _fbgemm(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer products of float codes (..., K) with fbgemm's whole weight (VNNI) or its halves (AVX2).

        The op's uint8 operand is codes + 128 in [0, 255]; against halves in [-64, 64] every AVX2 pair sum
        stays within ±32640, below int16's limit.
        """
        flat = codes.reshape(-1, self.in_features)  # the op takes 2-D and more
        out = _fbgemm_linear(flat, 128, self._prepare("fbgemm"))
        if not _has_vnni():
            out = out[:, : self.out_features] + out[:, self.out_features :]
        return out.reshape(*codes.shape[:-1], self.out_features)

    def _act_buffer(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A (2, *shape) float32 buffer and its two rows for `_fbgemm_act`, kept per thread for the last shape
        when small: at decode every call has the same shape, and the allocation and row views cost as much as a
        small op; large inputs (prefill) get a fresh buffer, so that no layer holds on to megabytes."""
        if shape.numel() > _SCRATCH_MAX_ELEMENTS:
            buf = torch.empty((2, *shape), dtype=torch.float32)
            return buf, buf[0], buf[1]
        scratch = self._prepared.get("scratch")
        if scratch is None:
            scratch = self._prepared["scratch"] = threading.local()  # concurrent forwards get their own buffer
        cached = getattr(scratch, "buffer", None)
        if cached is None or cached[0] != shape:
            # A normal tensor even when made under inference_mode, so that it can be written outside it too.
            with torch.inference_mode(False):
                buf = torch.empty((2, *shape), dtype=torch.float32)
                cached = scratch.buffer = (shape, buf, buf[0], buf[1])
        return cached[1], cached[2], cached[3]

    def _fbgemm_act(self, buf: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Integer products (..., out) of the float codes in `high` = `buf[1]` of a (2, ..., K) float32 buffer,
        with fbgemm's whole weight; `low` = `buf[0]` is scratch (the forward quantizes straight into `high`).

        On AVX2 the codes are split in two rows, c = trunc(c / 2) + (c - trunc(c / 2)), in [-64, 63] and
        [-64, 64]: with the op's zero point 64 its uint8 operands lie in [0, 128] and, against weights in
        [-128, 127], every pair sum in [-32768, 32512], within int16. At decode the GEMM streams the weight
        once for both rows, which costs about as much as one row. The halves differ by at most 1 per code, so
        each stays below 2**24 whenever their sum does (for K < 2**17): their float32 sum is then exact.
        """
        packed = self._prepare("fbgemm_act")
        if _has_vnni():  # no saturation to avoid: the codes as they are, uint8 operand c + 128
            return _fbgemm_linear(high.reshape(-1, self.in_features), 128, packed).reshape(
                *high.shape[:-1], self.out_features
            )
        torch.div(high, _TWO_CPU, rounding_mode="trunc", out=low)  # trunc: half the cost of floor here
        high.sub_(low)
        return torch.sum(_fbgemm_linear(buf, 64, packed), 0)  # one op for both rows: a + b, as add would

    def _int_mm(self, codes: torch.Tensor) -> torch.Tensor:
        prepared = self._prepare("int_mm")
        a = codes.to(torch.int8)
        rows = a.shape[0]
        if a.device.type == "cuda":
            pad_cols, pad_rows = prepared.shape[0] - self.in_features, max(rows, _CUDA_MIN_ROWS) - rows
            if pad_cols or pad_rows:  # zero codes add nothing to the products
                a = F.pad(a, (0, pad_cols, 0, pad_rows))
            return torch._int_mm(a, prepared)[:rows, : self.out_features].float()
        return torch._int_mm(a, prepared).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.resolved_kernel()
        if kernel == "fbgemm_act":
            self._prepare(kernel)  # off the CPU, fails here with a clear message rather than in a copy
            # The codes go straight into the kernel's buffer, in x's shape (the op takes any leading dimensions).
            buf, low, high = self._act_buffer(x.shape)
            _, scale = quantize_per_token(x, out=high)
            out = self._fbgemm_act(buf, low, high)
        else:
            flat = x.reshape(-1, self.in_features)
            codes, scale = quantize_per_token(flat)
            out = self._fbgemm(codes) if kernel == "fbgemm" else self._int_mm(codes)
            out, scale = out.reshape(*x.shape[:-1], self.out_features), scale.reshape(*x.shape[:-1], 1)
        out.mul_(scale).mul_(self._weight_scale_row())
        if self.bias is not None:
            out.add_(self.bias.float())
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _apply(self, fn: Any, recurse: bool = True) -> W8A8Linear:
        self._prepared = {}  # `.to()` rewrites the buffers: a weight prepared before would be stale
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._prepared = {}
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # fbgemm's packed weights are rebuilt on first use; copies (deepcopy, pickle) need not carry them.
        state = dict(super().__getstate__())
        state["_prepared"] = {}
        return state

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, w8a8 per-channel/per-token, "
            f"kernel={self.kernel}, bias={self.bias is not None}"
        )


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def replace_with_w8a8(root: nn.Module, names: Iterable[str]) -> dict[str, W8A8Linear]:
    """Swap each named nn.Linear under `root` for a W8A8Linear quantized from its current weight, in place."""
    replaced = {}
    for name in names:
        linear = root.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ModelError(f"'{name}' is a {type(linear).__name__}, not an nn.Linear")
        replaced[name] = W8A8Linear.from_linear(linear)
        _set_module(root, name, replaced[name])
    return replaced


def _scheme() -> dict[str, dict[str, Any]]:
    # Only fields every compressed-tensors release knows (its schema forbids unknown keys); the values are its
    # W8A8 preset: int8 symmetric weights per channel, int8 symmetric dynamic activations per token.
    common = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "actorder": None}
    return {
        "weights": {**common, "strategy": "channel", "dynamic": False},
        "input_activations": {**common, "strategy": "token", "dynamic": True},
    }


def w8a8_quantization_config(targets: Sequence[str], ignore: Sequence[str] = ()) -> dict[str, Any]:
    """config.json's `quantization_config` for W8A8Linears in compressed-tensors' `int-quantized` format."""
    from compress.models.compressed_tensors import checkpoint_config

    group = {"targets": list(targets), **_scheme(), "output_activations": None, "format": FORMAT}
    return checkpoint_config(FORMAT, {"group_0": group}, ignore)


def _check_group(name: str, group: Mapping[str, Any]) -> None:
    expected = _scheme()
    problems = []
    for part in ("weights", "input_activations"):
        args = group.get(part) or {}
        for key in ("num_bits", "type", "symmetric", "strategy", "dynamic"):
            if args.get(key, expected[part][key]) != expected[part][key]:
                problems.append(f"{part}.{key}={args.get(key)!r}")
        if not args:
            problems.append(f"no {part}")
    if group.get("output_activations"):
        problems.append("output activations")
    if group.get("format") not in (None, FORMAT):
        problems.append(f"format {group.get('format')}")
    if problems:
        raise ModelError(
            f"quantization config group '{name}' is not W8A8 int8 per-channel / per-token dynamic "
            f"({', '.join(problems)}), which compress cannot load"
        )


def build_w8a8_skeleton(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """Swap the Linears an `int-quantized` `config` targets for empty W8A8Linears, in place (then load_state_dict).

    Matching is compressed-tensors' (exact name, `re:` regex, class name; `ignore` wins), as for
    `build_quantized_skeleton`, which hands `int-quantized` configs here.
    """
    from compress.models.compressed_tensors import _matches

    groups = config.get("config_groups", {})
    for name, group in groups.items():
        _check_group(name, group)
    targets = [target for group in groups.values() for target in group["targets"]]
    ignore = config.get("ignore") or []
    replacements = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(_matches(module_name, module, target) is not None for target in ignore):
            continue
        if any(_matches(module_name, module, target) is not None for target in targets):
            replacements[module_name] = W8A8Linear(
                module.in_features,
                module.out_features,
                bias=module.bias is not None,
                dtype=module.weight.dtype,
                device=module.weight.device,
            )
    for module_name, layer in replacements.items():
        _set_module(model, module_name, layer)
    return model


# --- kernel measurement (`python -m compress.models.w8a8`), recorded in docs/steps/smoothquant.md -----------

SMOLLM2_SHAPES = ((576, 1536), (1536, 576), (576, 576), (576, 192))  # (in, out): gate/up, down, q/o, k/v of 135M


def _best_time(candidates: dict[str, Callable[[], object]], seconds: float, sync: Callable[[], None]) -> dict:
    """Best time of each candidate over interleaved rounds (each round runs every candidate once), so load from
    other processes on a shared machine hits all of them alike and the minimum is the least disturbed run."""
    best = dict.fromkeys(candidates, float("inf"))
    for fn in candidates.values():
        fn()  # warm-up: prepacking, allocator, cuBLAS heuristics
    sync()
    deadline = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < deadline or rounds < 3:
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
        rounds += 1
    return best


def _stock_fbgemm(linear: nn.Linear, layer: W8A8Linear) -> Any:
    """fbgemm's own dynamic Linear on the same int8 weight: per-tensor activations, 7-bit (`reduce_range`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(
            layer.weight, layer.weight_scale.double().flatten(), torch.zeros(linear.out_features, dtype=torch.long), 0
        )
        return torch.ops.quantized.linear_prepack(qweight, None)


def _round_robin(fns: Sequence[Callable[[], object]]) -> Callable[[], object]:
    """One callable that runs the next of `fns` at each call."""
    cycle = itertools.cycle(fns)
    return lambda: next(cycle)()


def _candidates(linears: Sequence[nn.Linear], x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """What to time, the float baseline first: on CUDA bf16 against W8A8 (whole forward, and the GEMM alone);
    on the CPU float32 against the W8A8 kernels and, for reference, fbgemm's stock per-tensor Linear. Each
    call takes the next of `linears` (copies of one shape with their own weights): with enough of them the
    weights come from memory rather than cache, as in a decode step through a whole model."""
    on_cpu = x.device.type == "cpu"
    kernels = ("int_mm", "fbgemm", "fbgemm_act") if on_cpu and fbgemm_available() else ("int_mm",)
    layers: dict[str, list[W8A8Linear]] = {kernel: [] for kernel in kernels}
    for linear in linears:
        for kernel in kernels:
            layers[kernel].append(W8A8Linear.from_linear(linear))
            layers[kernel][-1].kernel = kernel
    candidates: dict[str, Callable[[], object]] = {
        f"{str(x.dtype).removeprefix('torch.')} F.linear": _round_robin(
            [functools.partial(F.linear, x, linear.weight) for linear in linears]
        )
    }
    for kernel, copies in layers.items():
        candidates[f"W8A8 {kernel}"] = _round_robin([functools.partial(layer, x) for layer in copies])
    if x.device.type == "cuda":
        codes = quantize_per_token(x)[0].to(torch.int8)
        candidates["int8 GEMM alone"] = _round_robin(
            [functools.partial(layer.accumulate, codes) for layer in layers["int_mm"]]
        )
    elif "fbgemm" in layers:
        stock = [_stock_fbgemm(linear, layer) for linear, layer in zip(linears, layers["fbgemm"], strict=True)]
        candidates["stock fbgemm (per-tensor, 7-bit)"] = _round_robin(
            [functools.partial(torch.ops.quantized.linear_dynamic, x, packed, True) for packed in stock]
        )
    return candidates


def benchmark(
    shapes: Sequence[tuple[int, int]] = SMOLLM2_SHAPES,
    tokens: Sequence[int] = (1, 512),
    seconds: float = 5.0,
    device: str = "cpu",
    weights_mib: float = 0.0,
) -> list[dict[str, Any]]:
    """µs per call of the float Linear and the W8A8 forwards (quantize, integer GEMM, rescale), per shape and
    token count. The stock fbgemm Linear (CPU) is faster but does not compute the checkpoint's per-token int8
    scheme, so it is timed for reference only. With `weights_mib`, calls cycle through copies of each shape
    holding at least that many MiB of float weights (0: one copy, its weights hot in cache)."""
    rows = []
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for in_features, out_features in shapes:
        size_mib = in_features * out_features * dtype.itemsize / 2**20
        copies = max(1, math.ceil(weights_mib / size_mib))
        linears = [nn.Linear(in_features, out_features, bias=False).to(device, dtype) for _ in range(copies)]
        for m in tokens:
            x = torch.randn(m, in_features, device=device, dtype=dtype)
            with torch.no_grad():
                times = _best_time(_candidates(linears, x), seconds, sync)
            rows.append({"in": in_features, "out": out_features, "tokens": m, **{k: v * 1e6 for k, v in times.items()}})
    return rows


def decode_benchmark(
    folder: str,
    gguf_file: str | None = None,
    rounds: int = 8,
    new_tokens: int = 16,
    prompt_tokens: int = 32,
    kernels: Sequence[str] = ("auto",),
) -> dict[str, list[dict[str, float]]]:
    """Decode speed (batch 1, `compress.evaluate.decode.measure_decode`) of a causal LM in float32 and of W8A8
    copies (every Linear but lm_head, RTN; one copy per kernel), measured in alternating rounds so that load
    from other processes hits every model alike. Returns each model's `measure_decode` results, one per round."""
    from transformers import AutoModelForCausalLM

    from compress.evaluate.decode import measure_decode

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra).eval()
    names = [name for name, module in fp32.named_modules() if isinstance(module, nn.Linear) and name != "lm_head"]
    models = {"float32": fp32}
    for kernel in kernels:
        model = copy.deepcopy(fp32)
        for layer in replace_with_w8a8(model, names).values():
            layer.kernel = kernel
        models[f"W8A8 {kernel}"] = model
    torch.manual_seed(0)
    prompt = torch.randint(0, fp32.config.vocab_size, (1, prompt_tokens))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            results[name].append(measure_decode(model, prompt, new_tokens, repeats=1))
    return results


def _print_decode(results: dict[str, list[dict[str, float]]]) -> None:
    """Best and median over rounds of tokens/s, and the best per-step median latency (the least disturbed
    round's typical step), each with its ratio to float32."""
    rows = {}
    for name, rounds in results.items():
        speeds = [r["decode_tokens_per_s"] for r in rounds]
        rows[name] = (max(speeds), statistics.median(speeds), min(r["decode_p50_ms"] for r in rounds))
    base = rows["float32"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {len(results['float32'])} rounds")
    print("| model | tokens/s, best round | tokens/s, median round | step P50 ms, best round |")
    print("|---|---|---|---|")
    for name, (best, median, p50) in rows.items():
        print(
            f"| {name} | {best:.1f} ({best / base[0]:.2f}x) | {median:.1f} ({median / base[1]:.2f}x) | "
            f"{p50:.1f} ({base[2] / p50:.2f}x) |"
        )
    for name, rounds in results.items():
        print(f"{name} tokens/s per round: " + ", ".join(f"{r['decode_tokens_per_s']:.1f}" for r in rounds))


def _main() -> None:
    parser = argparse.ArgumentParser(description="Time the W8A8 kernels on SmolLM2-135M's Linear shapes.")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per shape and token count")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", default=None, help="e.g. 4096x11008,11008x4096 (in x out); default SmolLM2's")
    parser.add_argument("--tokens", default="1,512", help="token counts (rows), comma-separated")
    parser.add_argument(
        "--weights-mib", type=float, default=0.0, help="cycle through copies of each shape holding this many MiB"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--decode", default=None, help="instead: whole-model decode of this model folder")
    parser.add_argument("--gguf-file", default=None, help="with --decode: the GGUF file in that folder")
    parser.add_argument("--rounds", type=int, default=8, help="with --decode: alternating rounds")
    parser.add_argument("--kernels", default="auto", help="with --decode: W8A8 kernels to compare, comma-separated")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode:
        _print_decode(decode_benchmark(args.decode, args.gguf_file, args.rounds, kernels=args.kernels.split(",")))
        return
    shapes = SMOLLM2_SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(","))
    tokens = tuple(int(t) for t in args.tokens.split(","))
    rows = benchmark(shapes, tokens, args.seconds, args.device, args.weights_mib)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    weights = f", weights cycled over ≥ {args.weights_mib:g} MiB of copies" if args.weights_mib else ""
    print(
        f"torch {torch.__version__}, {where}{weights}; best of interleaved runs, µs per call "
        "(speed-up vs the first column)"
    )
    names = [k for k in rows[0] if k not in ("in", "out", "tokens")]
    print("| in → out | tokens | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in rows:
        base = row[names[0]]
        cells = [f"{base:,.0f}"] + [f"{row[k]:,.0f} ({base / row[k]:.2f}x)" for k in names[1:]]
        print(f"| {row['in']} → {row['out']} | {row['tokens']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    _main()
