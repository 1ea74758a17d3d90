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
accumulated exactly, in integers, then scaled back: `y = (q_x @ q_wᵀ) * s_x * s_w + bias`. Two kernels compute
the integer product; both give the same integers, so the choice changes speed, not results:

- `int_mm`: `torch._int_mm` (int8 x int8 -> int32). On CUDA it is cuBLAS' int8 GEMM, which needs more than 16
  rows and both other dimensions multiples of 8: inputs are padded with zeros to fit. On CPUs with AVX512-VNNI it
  was the fastest INT8 path measured (1.2-1.8x float32 at 512 tokens on a 16-core Xeon); on an AVX2 CPU without
  VNNI it is 25-70x slower than float32 `F.linear` at prefill sizes.
- `fbgemm`: the CPU int8 GEMM behind `torch.ops.quantized.linear_dynamic`. That op quantizes its float input
  itself, per tensor, to uint8, and without VNNI adds pairs of uint8 x int8 products in saturating int16
  (`vpmaddubsw`), which overflows for full-range int8 operands. Both are sidestepped so that the integers are
  exactly those of `int_mm`: the per-token codes are given as floats with one extra row spanning [-128, 127]
  (so the op's own quantization is the identity: scale 1, zero point 128), and, without VNNI, each int8 weight
  is split into two halves in [-64, 64] (stacked as 2x the output rows, summed afterwards), which keeps every
  pair sum below 2**15. The split doubles the GEMM's work; on AVX2 it is still far faster than `int_mm`.

`kernel = "auto"` picks by those measurements (`python -m compress.models.w8a8`, tables in
docs/steps/smoothquant.md): `int_mm` on CUDA and on AVX512-VNNI CPUs, `fbgemm` on other CPUs whose torch has it,
`int_mm` anywhere else.
"""

from __future__ import annotations

import argparse
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
Kernel = Literal["auto", "int_mm", "fbgemm"]
_KERNELS = ("auto", "int_mm", "fbgemm")
# compressed-tensors' symmetric scale divides the absmax by half the int8 range, (127 - (-128)) / 2.
_HALF_RANGE = 127.5
# Per-token scales of all-zero tokens: any positive value keeps x / scale finite (the codes are all 0).
_TINY = torch.finfo(torch.float32).tiny
# cuBLAS' int8 GEMM behind torch._int_mm on CUDA: rows > 16, inner and output dimensions multiples of 8.
_CUDA_MIN_ROWS = 17
_CUDA_ALIGN = 8


def quantize_per_token(x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row of `x` (..., K) and its scale (..., 1): `x ≈ codes * scale`.

    Codes are integer-valued float32 (what the fbgemm path feeds its kernel; `.to(torch.int8)` is exact),
    written into `out` when given. The scale is absmax / 127.5, compressed-tensors' symmetric convention.
    """
    x = x.float()
    # ord=inf is max |x| in one reduction (abs then amax is two passes over the activations)
    scale = (torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True) / _HALF_RANGE).clamp_(min=_TINY)
    codes = torch.div(x, scale, out=out) if out is not None else x / scale
    return codes.round_().clamp_(-128, 127), scale


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def _has_vnni() -> bool:
    """AVX512-VNNI multiplies uint8 x int8 straight into int32 (no saturating int16 pair sums to avoid)."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else False


def _pad_to(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class W8A8Linear(nn.Module):
    """A Linear computing with int8 weights and per-token dynamic int8 activations (see the module docstring).

    The kernel's prepared weight (fbgemm's packed halves, or the padded transpose for CUDA) is built on first
    use and kept outside the state dict; it is dropped whenever the buffers change (`to()`, `load_state_dict`).
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
        self._prepared: tuple[str, Any] | None = None
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
        if self.weight.device.type != "cpu" or _has_vnni():
            return "int_mm"
        return "fbgemm" if fbgemm_available() and self.in_features > 1 else "int_mm"

    def _prepare(self, kernel: str) -> Any:
        if self._prepared is not None and self._prepared[0] == kernel:
            return self._prepared[1]
        if kernel == "fbgemm":
            if self.weight.device.type != "cpu" or self.in_features < 2:
                raise ValueError("the fbgemm kernel needs a CPU layer with at least 2 input features")
            split = not _has_vnni()
            w = self.weight
            if split:
                wide = w.to(torch.int16)
                low = torch.div(wide, 2, rounding_mode="floor")  # w = low + (w - low), both halves in [-64, 64]
                w = torch.cat([low, wide - low]).to(torch.int8)
            previous = torch.backends.quantized.engine
            try:
                torch.backends.quantized.engine = "fbgemm"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's deprecation notice for quantized tensors
                    packed = torch.ops.quantized.linear_prepack(
                        torch._make_per_tensor_quantized_tensor(w, 1.0, 0), None
                    )
            finally:
                torch.backends.quantized.engine = previous
            pin = torch.zeros(self.in_features)
            pin[0], pin[1] = -128.0, 127.0
            prepared = (packed, split, pin)
        elif self.weight.device.type == "cuda":
            rows, cols = _pad_to(self.out_features, _CUDA_ALIGN), _pad_to(self.in_features, _CUDA_ALIGN)
            prepared = F.pad(self.weight, (0, cols - self.in_features, 0, rows - self.out_features)).t()
        else:
            prepared = self.weight.t()
        self._prepared = (kernel, prepared)
        return prepared

    def accumulate(self, codes: torch.Tensor, kernel: str | None = None) -> torch.Tensor:
        """Exact integer products `codes @ weightᵀ` (M, out) of int8-range codes (M, in), as float32.

        `codes` may be int8 or integer-valued floats. The values are exact integers whenever they stay below
        2**24 in magnitude (always for in_features <= 1024, and for real activations far beyond).
        """
        kernel = self.resolved_kernel() if kernel in (None, "auto") else kernel
        if kernel == "fbgemm":
            pinned = self._pinned_rows(codes.shape[0])
            pinned[1:].copy_(codes)
            return self._fbgemm(pinned)
        return self._int_mm(codes)

    def _pinned_rows(self, rows: int) -> torch.Tensor:
        """(1 + rows, in) float32 buffer whose first row spans [-128, 127], so that fbgemm's own per-tensor
        quantization of the codes below it is the identity (scale 1, zero point 128)."""
        pinned = torch.empty(rows + 1, self.in_features, dtype=torch.float32)
        pinned[0] = self._prepare("fbgemm")[2]
        return pinned

    def _fbgemm(self, pinned: torch.Tensor) -> torch.Tensor:
        packed, split, _ = self._prepare("fbgemm")
        out = torch.ops.quantized.linear_dynamic(pinned, packed, False)[1:]
        return out[:, : self.out_features] + out[:, self.out_features :] if split else out

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
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if self.resolved_kernel() == "fbgemm":
            pinned = self._pinned_rows(flat.shape[0])
            _, scale = quantize_per_token(flat, out=pinned[1:])  # codes go straight into the kernel's input
            out = self._fbgemm(pinned)
        else:
            codes, scale = quantize_per_token(flat)
            out = self._int_mm(codes)
        out.mul_(scale).mul_(self.weight_scale.float().t())
        if self.bias is not None:
            out.add_(self.bias.float())
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _apply(self, fn: Any, recurse: bool = True) -> W8A8Linear:
        self._prepared = None  # `.to()` rewrites the buffers: a weight prepared before would be stale
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._prepared = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # fbgemm's packed weight is rebuilt on first use; copies (deepcopy, pickle) need not carry it.
        state = dict(super().__getstate__())
        state["_prepared"] = None
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

SMOLLM2_SHAPES = ((576, 1536), (1536, 576), (576, 576))  # (in, out): gate/up, down, q/o projections of 135M


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


def _candidates(linear: nn.Linear, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """What to time, the float baseline first: on CUDA bf16 against W8A8 (whole forward, and the GEMM alone);
    on the CPU float32 against both W8A8 kernels and, for reference, fbgemm's stock per-tensor Linear."""
    layers = {}
    for kernel in ("int_mm", "fbgemm") if x.device.type == "cpu" else ("int_mm",):
        layers[kernel] = W8A8Linear.from_linear(linear)
        layers[kernel].kernel = kernel
    weight = linear.weight
    candidates: dict[str, Callable[[], object]] = {
        f"{str(x.dtype).removeprefix('torch.')} F.linear": lambda: F.linear(x, weight)
    }
    for kernel, layer in layers.items():
        candidates[f"W8A8 {kernel}"] = lambda layer=layer: layer(x)
    if x.device.type == "cuda":
        codes = quantize_per_token(x)[0].to(torch.int8)
        candidates["int8 GEMM alone"] = lambda: layers["int_mm"].accumulate(codes)
    elif fbgemm_available():
        stock = _stock_fbgemm(linear, layers["fbgemm"])
        candidates["stock fbgemm (per-tensor, 7-bit)"] = lambda: torch.ops.quantized.linear_dynamic(x, stock, True)
    else:
        del candidates["W8A8 fbgemm"]
    return candidates


def benchmark(
    shapes: Sequence[tuple[int, int]] = SMOLLM2_SHAPES,
    tokens: Sequence[int] = (1, 512),
    seconds: float = 5.0,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """µs per call of the float Linear and the W8A8 forwards (quantize, integer GEMM, rescale), per shape and
    token count. The stock fbgemm Linear (CPU) is faster but does not compute the checkpoint's per-token int8
    scheme, so it is timed for reference only."""
    rows = []
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for in_features, out_features in shapes:
        linear = nn.Linear(in_features, out_features, bias=False).to(device, dtype)
        for m in tokens:
            x = torch.randn(m, in_features, device=device, dtype=dtype)
            with torch.no_grad():
                times = _best_time(_candidates(linear, x), seconds, sync)
            rows.append({"in": in_features, "out": out_features, "tokens": m, **{k: v * 1e6 for k, v in times.items()}})
    return rows


def _main() -> None:
    parser = argparse.ArgumentParser(description="Time the W8A8 kernels on SmolLM2-135M's Linear shapes.")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per shape and token count")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", default=None, help="e.g. 4096x11008,11008x4096 (in x out); default SmolLM2's")
    parser.add_argument("--tokens", default="1,512", help="token counts (rows), comma-separated")
    args = parser.parse_args()
    shapes = SMOLLM2_SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(","))
    tokens = tuple(int(t) for t in args.tokens.split(","))
    rows = benchmark(shapes, tokens, args.seconds, args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; best of interleaved runs, µs per call (speed-up vs the first column)")
    names = [k for k in rows[0] if k not in ("in", "out", "tokens")]
    print("| in → out | tokens | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in rows:
        base = row[names[0]]
        cells = [f"{base:,.0f}"] + [f"{row[k]:,.0f} ({base / row[k]:.2f}x)" for k in names[1:]]
        print(f"| {row['in']} → {row['out']} | {row['tokens']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    _main()
