"""What a result was measured on: hardware and library versions, recorded in every report and benchmark."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

LIBRARIES = (
    "compress",
    "torch",
    "transformers",
    "datasets",
    "onnxruntime",
    "openvino",
    "nncf",
    "coremltools",
    "triton",
    "compressed-tensors",
    "llmcompressor",
    "auto-round",
    "bitsandbytes",
    "tensorrt",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":  # Apple Silicon reports only "arm" through platform
        import subprocess

        try:
            brand = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            brand = ""
        if brand:
            return brand
    return platform.processor() or platform.machine()


def gpu_driver() -> str | None:
    """The NVIDIA driver version through NVML (nvidia-ml-py), where both exist."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no driver, no GPU: nothing to record
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if info["cuda"]:
        info["gpu_driver"] = gpu_driver()
        info["cuda_runtime"] = torch.version.cuda
    for lib in LIBRARIES:
        try:
            info[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return info
