"""Models spread over devices as they load (`model.device_map`, accelerate's big-model inference).

Such a model carries accelerate hooks that move each block's inputs to its device and, for weights mapped to
`disk` or `meta`, load them just in time. Evaluation runs through the hooks as they are. Steps that rewrite weights
need real tensors in ordinary modules: `collect_on_host` removes the hooks and brings every weight to host memory,
from which the layer-by-layer engine moves one layer at a time to the accelerator.
"""

from __future__ import annotations

import torch

from compress.errors import ConfigError


def spread_over_devices(model: torch.nn.Module) -> bool:
    """True when accelerate dispatched the model (hooks place its parts); moving it with `.to()` would break it."""
    device_map = getattr(model, "hf_device_map", None)
    return bool(device_map) and len(set(device_map.values())) > 1


def collect_on_host(model: torch.nn.Module, where: str) -> None:
    """Undo the dispatch in place: hooks removed, every weight on the CPU. Refuses weights offloaded to disk."""
    if not spread_over_devices(model):
        return
    offloaded = sorted(name for name, device in model.hf_device_map.items() if device in ("disk", "meta"))
    if offloaded:
        raise ConfigError(
            f"{len(offloaded)} module(s) of the model are offloaded to disk (e.g. {offloaded[0]}); quantizing needs "
            "their weights in memory",
            where=where,
            fix="give the CPU room for the whole model (`model.max_memory`: {cpu: ...}) or drop `model.device_map`: "
            "calibrated steps move one layer at a time to the GPU anyway",
        )
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(model, recurse=True)
    model.to("cpu")
    del model.hf_device_map
