"""2:4-sparse Linear layers on CUDA through cuSPARSELt, each chosen over dense by measurement.

cuSPARSELt (`torch._cslt_sparse_mm`) runs a 2:4 weight on sparse tensor cores, up to twice the dense rate, but
every call builds its matmul plan on the host (about 0.9 ms on an H200 with torch 2.11): more than a small layer's
whole dense matmul. So a layer runs sparse only where it is measured faster at the shape it will see, with the
algorithm cuSPARSELt's own search picks for that shape. Under CUDA graphs (`graphs=True`, for a caller that replays
the model through `torch.cuda.CUDAGraph`) the host work is paid once at capture, so both sides are timed as graph
replays and far more layers win.

The switch is in place and reversible: a chosen layer keeps its dense weight (the model still saves, and a later
step may still change it) and gains a non-persistent buffer with the compressed weight and an instance `forward`;
`restore_dense` removes both. A weight changed after the switch is noticed and runs dense again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.prune.sparsity import follows_n_m

HALF_DTYPES = (torch.float16, torch.bfloat16)
# cuSPARSELt's shape rules for 16-bit operands: the sparse weight's sides multiples of 16, the dense input's of 8.
WEIGHT_MULTIPLE, TOKEN_MULTIPLE = 16, 8
PACKED = "semi_structured_packed"  # the buffer a switched layer gains
NOT_2OF4 = "weight does not follow 2:4"


@dataclass(frozen=True)
class LayerChoice:
    """What the measurement found for one 2:4 Linear at `tokens` input rows."""

    name: str
    out_features: int
    in_features: int
    tokens: int
    dense_ms: float | None
    sparse_ms: float | None
    alg_id: int | None
    sparse: bool
    reason: str | None = None

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.sparse_ms if self.dense_ms and self.sparse_ms else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"speedup": None if self.speedup is None else round(self.speedup, 3)}


def cusparselt_available() -> bool:
    return torch.cuda.is_available() and torch.backends.cusparselt.is_available()


def unsupported_reason(linear: nn.Linear) -> str | None:
    """Why `linear` cannot run through cuSPARSELt (None: it can)."""
    weight = linear.weight
    if weight.device.type == "meta" or not follows_n_m(weight.detach(), 2, 4):
        return NOT_2OF4
    if not weight.is_cuda:
        return "not on a CUDA device"
    if weight.dtype not in HALF_DTYPES:
        return f"{str(weight.dtype).removeprefix('torch.')}: cuSPARSELt runs 16-bit weights here; cast to bfloat16"
    if weight.shape[0] % WEIGHT_MULTIPLE or weight.shape[1] % WEIGHT_MULTIPLE:
        return f"shape {tuple(weight.shape)}: both sides must be multiples of {WEIGHT_MULTIPLE}"
    return None


def sparse_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, alg_id: int) -> torch.Tensor:
    """`F.linear(x, W, bias)` with W compressed by `torch._cslt_compress`: computed as (W @ xᵀ)ᵀ, the transpose
    fused into the kernel's output, the rows padded to cuSPARSELt's multiple."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    pad = -rows % TOKEN_MULTIPLE
    if pad:
        flat = F.pad(flat, (0, 0, 0, pad))
    out = torch._cslt_sparse_mm(packed, flat.t(), bias, transpose_result=True, alg_id=alg_id)
    return out[:rows].reshape(*x.shape[:-1], out.shape[-1])


def search_algorithm(packed: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> int:
    """cuSPARSELt's fastest algorithm for this weight at `x`'s shape (0, its default, where the search is absent)."""
    try:
        with warnings.catch_warnings():  # torch 2.11 marks it deprecated for a private successor: use it while it lasts
            warnings.simplefilter("ignore", UserWarning)
            return int(torch._cslt_sparse_mm_search(packed, x.t(), bias, transpose_result=True))
    except (AttributeError, NotImplementedError, RuntimeError):  # removed or unsupported in this build
        return 0


def time_cuda_ms(fn: Callable[[], object], *, repeats: int = 20, graphs: bool = False) -> float:
    """Median milliseconds of `fn` on the current CUDA stream, as eager calls or as replays of a captured graph."""
    for _ in range(3):  # warm-up: plans, workspaces, autotuning
        fn()
    if graphs:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn()
        call: Callable[[], object] = graph.replay
    else:
        call = fn
    call()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure_layer(
    name: str, linear: nn.Linear, tokens: int, *, graphs: bool = False, repeats: int = 20
) -> tuple[LayerChoice, torch.Tensor | None]:
    """Dense vs cuSPARSELt (searched algorithm) for `linear` at `tokens` rows; the compressed weight too."""
    out_features, in_features = linear.weight.shape
    reason = unsupported_reason(linear)
    if reason is not None:
        return LayerChoice(name, out_features, in_features, tokens, None, None, None, False, reason), None
    weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    x = torch.randn(tokens, in_features, device=weight.device, dtype=weight.dtype)
    with torch.inference_mode():
        dense_ms = time_cuda_ms(lambda: F.linear(x, weight, bias), repeats=repeats, graphs=graphs)
        packed = torch._cslt_compress(weight)
        alg_id = search_algorithm(packed, F.pad(x, (0, 0, 0, -tokens % TOKEN_MULTIPLE)), bias)
        sparse_ms = time_cuda_ms(lambda: sparse_linear(x, packed, bias, alg_id), repeats=repeats, graphs=graphs)
    return LayerChoice(name, out_features, in_features, tokens, dense_ms, sparse_ms, alg_id, False), packed


def _switched_forward(linear: nn.Linear, alg_id: int, version: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if linear.weight._version != version:  # changed in place since the switch: the packed copy is stale
            return F.linear(x, linear.weight, linear.bias)
        return sparse_linear(x, getattr(linear, PACKED), linear.bias, alg_id)

    return forward


def switch_to_sparse(linear: nn.Linear, alg_id: int, packed: torch.Tensor | None = None) -> None:
    """Run `linear` through cuSPARSELt with algorithm `alg_id` (its weight compressed now unless `packed` is given)."""
    if packed is None:
        packed = torch._cslt_compress(linear.weight.detach())
    linear.register_buffer(PACKED, packed, persistent=False)
    linear.forward = _switched_forward(linear, alg_id, linear.weight._version)


def accelerate_semi_structured(
    model: nn.Module, tokens: int, *, graphs: bool = False, min_speedup: float = 1.03, repeats: int = 20
) -> list[LayerChoice]:
    """Switch each 2:4 Linear of `model` to cuSPARSELt where measured ≥ `min_speedup`x its dense matmul at `tokens`
    input rows (the margin keeps timing noise from picking a layer that is no faster); returns every 2:4-candidate
    Linear's measurement. Layers already switched are measured again."""
    restore_dense(model)
    choices = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        choice, packed = measure_layer(name, module, tokens, graphs=graphs, repeats=repeats)
        if choice.reason == NOT_2OF4:
            continue  # a dense layer is not a candidate: no row for it
        if packed is not None and choice.speedup is not None and choice.speedup >= min_speedup:
            switch_to_sparse(module, choice.alg_id or 0, packed)
            choice = LayerChoice(**{**asdict(choice), "sparse": True})
        choices.append(choice)
    return choices


def restore_dense(model: nn.Module) -> int:
    """Undo `accelerate_semi_structured`: every switched layer runs its dense weight again; returns how many."""
    restored = 0
    for module in model.modules():
        if PACKED in module._buffers:
            del module._buffers[PACKED]
            module.__dict__.pop("forward", None)
            restored += 1
    return restored
