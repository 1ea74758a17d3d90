"""Pre-flight memory estimate for a calibrated quantization run (users ask for it: llm-compressor#1718).

Before an hour of calibration, add up what the run will hold at its peak — the model, the activations between
two layers for every calibration window, one layer's statistics (GPTQ's Hessians or AWQ's captured inputs),
one layer's forward scratch — on the host and, when calibrating on a GPU, on the device. Compared with what is
free now, it refuses a run that cannot fit, naming the settings that shrink it. The figures are estimates
(allocator overhead and fragmentation are not modelled); the report records the measured peak beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import torch

from compress.errors import CompressError
from compress.evaluate.memory import MIB

# Real runs need headroom for the allocator, the CUDA context and Python itself.
HEADROOM = 1.15


@dataclass
class MemoryEstimate:
    host_bytes: int  # needed on top of what the process holds now
    device_bytes: int  # needed on the calibration device (0 on CPU)
    host_free: int
    device_free: int | None
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {size / MIB:,.0f} MB" for name, size in self.parts.items())
        text = f"estimated peak: host +{self.host_bytes / MIB:,.0f} MB (free {self.host_free / MIB:,.0f} MB)"
        if self.device_free is not None:
            text += f", device {self.device_bytes / MIB:,.0f} MB (free {self.device_free / MIB:,.0f} MB)"
        return f"{text} [{parts}]"

    def as_dict(self) -> dict[str, float | None]:
        return {
            "host_mb": self.host_bytes / MIB,
            "device_mb": self.device_bytes / MIB,
            "host_free_mb": self.host_free / MIB,
            "device_free_mb": None if self.device_free is None else self.device_free / MIB,
        }


def _module_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_layerwise(
    model: torch.nn.Module,
    layers: torch.nn.ModuleList,
    *,
    samples: int,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    statistics_bytes: int,
) -> MemoryEstimate:
    """`statistics_bytes`: what the algorithm keeps for the largest layer (Hessians, captured inputs)."""
    config = model.config
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    activation_size = next(model.parameters()).element_size()
    layer_bytes = max(_module_bytes(layer) for layer in layers)
    non_layer_bytes = _module_bytes(model) - sum(_module_bytes(layer) for layer in layers)
    parts = {
        # layer inputs and outputs of every window, kept between layers
        "activations": 2 * samples * seq_len * hidden * activation_size,
        # one batch through one layer: MLP intermediates and (eager) attention scores, in float32
        "forward scratch": batch_size * seq_len * (3 * intermediate + heads * seq_len) * 4,
        "statistics": statistics_bytes,
        # the layer being quantized: its float32 working copy plus the quantized weights being built
        "layer": 2 * layer_bytes,
        # embeddings, final norm and head move to the device for the capture (it stops before any logits)
        "embeddings and head": non_layer_bytes,
    }
    on_device = sum(parts.values())
    host_free = psutil.virtual_memory().available
    if device.type == "cuda":
        device_free, _ = torch.cuda.mem_get_info(device)
        # the host keeps the quantized copy of each finished layer beside the model until the old weights go
        host = layer_bytes
        return MemoryEstimate(int(host * HEADROOM), int(on_device * HEADROOM), host_free, device_free, parts)
    return MemoryEstimate(int(on_device * HEADROOM), 0, host_free, None, parts)


def check_fits(estimate: MemoryEstimate, where: str) -> None:
    """Refuse before any work when the estimate exceeds what is free, with the settings that shrink it."""
    problems = []
    if estimate.host_bytes > estimate.host_free:
        problems.append(
            f"host memory: needs ~{estimate.host_bytes / MIB:,.0f} MB, {estimate.host_free / MIB:,.0f} free"
        )
    if estimate.device_free is not None and estimate.device_bytes > estimate.device_free:
        problems.append(
            f"device memory: needs ~{estimate.device_bytes / MIB:,.0f} MB, {estimate.device_free / MIB:,.0f} free"
        )
    if problems:
        raise CompressError(
            "this quantization run will not fit: " + "; ".join(problems) + f" ({estimate.describe()})",
            where=f"{where}.calibration",
            fix=f"lower {where}.calibration.samples, .seq_len or .batch_size; or calibrate on another device "
            "(evaluate.device); or load the model in bfloat16 (model.dtype)",
        )
