"""What the peer backends (llm-compressor, auto-round) share: device naming and installed versions."""

from __future__ import annotations

from importlib import metadata

import torch


def normalize_device(device: torch.device | str) -> torch.device:
    """`cuda` → `cuda:0`: the peers compare devices by index."""
    device = torch.device(device)
    if device.type != "cpu" and device.index is None:
        return torch.device(device.type, 0)
    return device


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
