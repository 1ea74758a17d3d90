"""AutoRound (Cheng et al. 2023, "Optimize Weight Rounding via Signed Gradient Descent for the Quantization of LLMs").

RTN rounds every weight to its nearest grid point and takes each group's range from its min and max. AutoRound
learns, one decoder layer ("block") at a time, a rounding offset V ∈ [-0.5, 0.5] for every weight and two clip
factors per group, α on the group's max and β on its min, both in [0.5, 1]:

    scale, zp = qparams(β · min(W_g, 0), α · max(W_g, 0))          (the grid of `rtn.compute_qparams`)
    q(W) = scale · (clamp(round(W / scale + zp + V), qmin, qmax) - zp)

and minimises the mean squared error between the block's outputs with its full-precision weights and with q(W),
over the calibration windows. `round` is a straight-through estimator (the zero point's too, so the clip factors
get a gradient through it), `clamp` passes gradients inside the range only, and the update is signed gradient
descent, p ← p - lr_t · sign(∂L/∂p), with lr_t decaying linearly from lr to 0. The parameters with the lowest loss
seen are kept. Defaults follow intel/auto-round (`SignRoundConfig`, `SignRoundQuantizer.quantize_block`): 200
iterations, lr = 1/iters for V and for α/β, `LinearLR(1 → 0)`, batches of 8 windows drawn without replacement
from a reshuffled order, loss `MSELoss(reduction="mean")` in float32, best loss tracked over the iterations (each
iteration's loss is measured on its own batch, before that iteration's update, as the package does).

Deliberate differences from the auto-round package:
- Targets are the full-precision layer's outputs on the inputs the layer is tuned on, i.e. on the outputs of the
  layers already quantized (`sequential.py` keeps one activation stream, as GPTQ does). auto-round's default also
  carries the full-precision model's stream and aims at fp_block(fp_inputs); that needs a second copy of every
  window's activations.
- α and β stay in [0.5, 1] as in the paper; auto-round ≥ 0.4 allows (0, 1]. With lr = 1/iters the linear decay
  lets a parameter travel at most ~0.5 in total, so the bounds only bind for a larger learning rate. V is clamped
  to [-0.5, 0.5] for the same reason (auto-round relies on the lr budget alone).
- The grid is compressed-tensors' (that of `rtn.py`), and the zero point is added before rounding as
  `rtn.quantize_columns` does, so V = 0, α = β = 1 is exactly RTN (auto-round rounds W/scale + V, then adds zp:
  the same but at exact ties).

Precision: V, α, β, the fake-quantized weights and the loss are float32; the block runs in its own dtype (each
fake-quantized weight is cast to its Linear's dtype), so a bfloat16 model on a GPU tunes in bfloat16 as with
auto-round's amp, and a float32 model in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from compress.quantize.rtn import _SCALE_EPS, grouped
from compress.quantize.scheme import QuantizedWeight, QuantScheme

# One call of a block as the calibration engine made it: positional args (hidden states first) and keyword args
# (attention mask, rotary tables, ...), which stay shaped for that call's windows.
BlockCall = tuple[tuple[Any, ...], dict[str, Any]]

# Bounds of the learned parameters (see the module docstring).
V_BOUND = 0.5
CLIP_BOUNDS = (0.5, 1.0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through). The value is exactly round(x): round(x) - x is exact
    (Sterbenz) whenever round(x) != 0, and adding x back then lands on round(x)."""
    return x + (torch.round(x) - x).detach()


@dataclass
class LearnedRounding:
    """The tuned parameters of one (out, in) weight: V (out, in), α on the max and β on the min (out, groups)."""

    v: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    @classmethod
    def initial(cls, weight: torch.Tensor, scheme: QuantScheme) -> LearnedRounding:
        """V = 0, α = β = 1: plain RTN."""
        rows, columns = weight.shape
        groups = (rows, scheme.groups(columns))
        device = weight.device
        return cls(
            torch.zeros(rows, columns, device=device),
            torch.ones(groups, device=device),
            torch.ones(groups, device=device),
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.v, self.alpha, self.beta

    def detached(self) -> LearnedRounding:
        return LearnedRounding(*(t.detach().clone() for t in self.tensors()))

    def clamp_(self) -> None:
        with torch.no_grad():
            self.v.clamp_(-V_BOUND, V_BOUND)
            self.alpha.clamp_(*CLIP_BOUNDS)
            self.beta.clamp_(*CLIP_BOUNDS)


def _learned_grid(
    weight: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, scheme: QuantScheme
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Integer codes as float (out, groups, size), scale (out, groups) and zero point (out, groups) or None.

    The formulas are `rtn.compute_qparams` / `rtn.quantize_columns` with min scaled by β, max by α and V added before
    rounding; everything stays differentiable in V, α and β.
    """
    w = grouped(weight.float(), scheme)
    zeros = torch.zeros(w.shape[:-1], device=w.device)
    # Including 0 keeps zero representable, as in RTN.
    low = torch.minimum(w.amin(dim=-1), zeros) * beta
    high = torch.maximum(w.amax(dim=-1), zeros) * alpha
    qmin, qmax = scheme.qmin, scheme.qmax
    zero_point: torch.Tensor | None = None
    if scheme.symmetric:
        scale = (torch.maximum(low.abs(), high.abs()) / ((qmax - qmin) / 2)).clamp(min=_SCALE_EPS)
        scaled = w / scale[..., None]
    else:
        scale = ((high - low) / (qmax - qmin)).clamp(min=_SCALE_EPS)
        zero_point = round_ste(qmin - low / scale).clamp(qmin, qmax)
        scaled = w / scale[..., None] + zero_point[..., None]
    codes = round_ste(scaled + v.reshape(w.shape)).clamp(qmin, qmax)
    return codes, scale, zero_point


def fake_quantize_learned(
    weight: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, scheme: QuantScheme
) -> torch.Tensor:
    """q(W) (out, in) float32 under the learned offset and clip factors, differentiable in V, α and β.

    Bit for bit what `final_quantize(...).dequantize()` returns, and for V = 0, α = β = 1 what RTN returns.
    """
    codes, scale, zero_point = _learned_grid(weight, v, alpha, beta, scheme)
    if zero_point is not None:
        codes = codes - zero_point[..., None]
    return (codes * scale[..., None]).reshape(weight.shape)


def final_quantize(
    weight: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, scheme: QuantScheme
) -> QuantizedWeight:
    """The integer form of `fake_quantize_learned(weight, v, alpha, beta, scheme)`."""
    if weight.ndim != 2:
        raise ValueError(f"expected an (out, in) weight matrix, got shape {tuple(weight.shape)}")
    with torch.no_grad():
        codes, scale, zero_point = _learned_grid(weight, v, alpha, beta, scheme)
    values = codes.reshape(weight.shape).to(torch.int8)
    zp = None if zero_point is None else zero_point.to(torch.int8)
    return QuantizedWeight(values=values, scale=scale.detach(), zero_point=zp, scheme=scheme)


def _hidden_states(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def capture_calls(block: nn.Module, replay: Callable[[], list[torch.Tensor]]) -> tuple[list[BlockCall], list[Any]]:
    """Run `replay` once, keeping what `block` was called with and what it returned (the fp targets).

    The calls hold the very tensors the calibration engine holds, so keeping them costs no memory.
    """
    calls: list[BlockCall] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, kwargs))

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        outputs = replay()
    finally:
        handle.remove()
    if len(calls) != len(outputs):
        raise RuntimeError(f"replay called the block {len(calls)} times for {len(outputs)} outputs")
    return calls, outputs


class _CallSampler:
    """Batches of call indices holding at least `windows` windows, without replacement, reshuffled when spent.

    A call is one calibration batch and cannot be split: its kwargs (masks, rotary tables) are shaped for it.
    """

    def __init__(self, sizes: Sequence[int], windows: int, seed: int) -> None:
        self.sizes = list(sizes)
        self.windows = min(windows, sum(self.sizes))
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next_batch(self) -> list[int]:
        if sum(self.sizes[i] for i in self.order) < self.windows:
            self.order = torch.randperm(len(self.sizes), generator=self.generator).tolist()
        batch: list[int] = []
        while sum(self.sizes[i] for i in batch) < self.windows:
            batch.append(self.order.pop(0))
        return batch


@dataclass
class TunedBlock:
    quantized: dict[str, QuantizedWeight]  # per Linear name (relative to the block)
    params: dict[str, LearnedRounding]  # the kept (lowest-loss) parameters
    initial_loss: float | None  # the first iteration's loss: RTN's, on that iteration's batch
    best_loss: float | None
    best_step: int | None


def tune_block(
    block: nn.Module,
    calls: Sequence[BlockCall],
    targets: Sequence[torch.Tensor],
    linears: dict[str, nn.Linear],
    scheme: QuantScheme,
    *,
    iters: int = 200,
    lr: float | None = None,
    minmax_lr: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> TunedBlock:
    """Tune V, α, β of `linears` (named relative to `block`) so that `block` under q(W) reproduces `targets`.

    `calls[i]` is what the block was called with, `targets[i]` its full-precision output then (windows first).
    Each iteration runs calls holding at least `batch_size` windows (whole calls), one backward per call.
    `lr` (default 1/iters) drives V, `minmax_lr` (default `lr`) α and β. The block is not modified; its
    parameters' `requires_grad` is restored. Returns the quantized weights of the lowest-loss iteration.
    """
    if iters < 0 or batch_size < 1:
        raise ValueError(f"iters must be >= 0 and batch_size >= 1, got {iters}, {batch_size}")
    if len(calls) != len(targets) or not calls:
        raise ValueError(f"need one target per call and at least one call, got {len(calls)} and {len(targets)}")
    for name, module in linears.items():
        if block.get_submodule(name) is not module:
            raise ValueError(f"'{name}' is not the given Linear inside the block")
        scheme.check(module.in_features)
    lr = 1.0 / max(iters, 1) if lr is None else lr
    minmax_lr = lr if minmax_lr is None else minmax_lr
    dtypes = {name: module.weight.dtype for name, module in linears.items()}
    # Every step fake-quantizes every weight: Linears of one input width are stacked along their rows and
    # quantized as one matrix (the grid is per row and group, so the result is the same), which turns seven small
    # chains of kernels per step into two on a Llama layer. Tuning is launch-bound on a GPU.
    stacks: dict[int, list[str]] = {}
    for name, module in linears.items():
        stacks.setdefault(module.in_features, []).append(name)
    names = list(stacks.values())
    rows = [[linears[n].out_features for n in group] for group in names]
    weights = [torch.cat([linears[n].weight.detach().float() for n in group]) for group in names]
    params = [LearnedRounding.initial(w, scheme) for w in weights]
    best = [p.detached() for p in params]
    initial_loss: float | None = None
    best_loss, best_step = math.inf, None
    sampler = _CallSampler([t.shape[0] for t in targets], batch_size, seed)

    # Only V, α, β need gradients: freezing the block keeps autograd from computing (and storing) the others'.
    trainable = [p for p in block.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    for p in params:
        for t in p.tensors():
            t.requires_grad_(True)
    try:
        with torch.enable_grad():
            for step in range(iters):
                batch = sampler.next_batch()
                elements = sum(targets[i].numel() for i in batch)
                loss = 0.0
                for i in batch:
                    substitutes = {}
                    for group, sizes, weight, p in zip(names, rows, weights, params, strict=True):
                        parts = fake_quantize_learned(weight, *p.tensors(), scheme).split(sizes)
                        substitutes.update(
                            {f"{n}.weight": part.to(dtypes[n]) for n, part in zip(group, parts, strict=True)}
                        )
                    args, kwargs = calls[i]
                    output = _hidden_states(functional_call(block, substitutes, args, kwargs))
                    squared = (output.float() - targets[i].float()).pow(2).sum()
                    # Divided by the whole batch's size, the per-call gradients add up to the batch mean's.
                    (squared / elements).backward()
                    loss += float(squared.item()) / elements
                if step == 0:
                    initial_loss = loss
                if loss < best_loss:
                    best_loss, best_step = loss, step
                    best = [p.detached() for p in params]
                decay = 1.0 - step / iters  # torch's LinearLR(start_factor=1, end_factor=0, total_iters=iters)
                with torch.no_grad():
                    for p in params:
                        for tensor, rate in ((p.v, lr), (p.alpha, minmax_lr), (p.beta, minmax_lr)):
                            if tensor.grad is not None:
                                tensor.sub_(rate * decay * tensor.grad.sign())
                                tensor.grad = None
                        p.clamp_()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    quantized: dict[str, QuantizedWeight] = {}
    kept: dict[str, LearnedRounding] = {}
    for group, sizes, weight, p in zip(names, rows, weights, best, strict=True):
        quantized.update(zip(group, final_quantize(weight, *p.tensors(), scheme).split_rows(sizes), strict=True))
        pieces = zip(*(t.split(sizes) for t in p.tensors()), strict=True)
        kept.update({n: LearnedRounding(*(t.clone() for t in piece)) for n, piece in zip(group, pieces, strict=True)})
    return TunedBlock(
        quantized=quantized,
        params=kept,
        initial_loss=initial_loss,
        best_loss=None if best_step is None else best_loss,
        best_step=best_step,
    )
