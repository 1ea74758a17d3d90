"""AOTInductor runtime: a `.pt2` package (compiled kernels + weights) loaded without the model's Python code."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.errors import NotEvaluable
from compress.runtime.base import Runtime, RuntimeOptions, graph_inputs


class AOTInductorRuntime(Runtime):
    name = "aotinductor"

    def __init__(
        self,
        package: Path,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        max_length: int | None,
        *,
        input_names: list[str],
        device: str,
        precision: str,
    ) -> None:
        super().__init__(tokenizer, task, max_length)
        if device == "cuda" and not torch.cuda.is_available():
            raise NotEvaluable(
                f"{package.name} holds CUDA kernels and this machine has no CUDA GPU",
                fix="benchmark it on a GPU machine, or export it again with `evaluate.device: cpu`",
            )
        self.package, self.input_names, self.device, self.precision = Path(package), input_names, device, precision
        self.compiled = torch._inductor.aoti_load_package(str(self.package))

    @torch.inference_mode()
    def predict(self, batch: Mapping[str, np.ndarray]) -> torch.Tensor:
        feed = graph_inputs(batch, self.input_names, self.package.name)
        inputs = [torch.from_numpy(feed[name]).to(self.device) for name in self.input_names]
        return self.compiled(*inputs).float()

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def size_bytes(self) -> int:
        return self.package.stat().st_size

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "device": self.device, "precision": self.precision}


def open_aoti(artifact_dir: Path, options: RuntimeOptions) -> AOTInductorRuntime:
    """The package on the device it was compiled for (its kernels are that device's)."""
    from transformers import AutoTokenizer

    from compress.export.base import read_metadata

    meta = read_metadata(artifact_dir)
    return AOTInductorRuntime(
        artifact_dir / meta["model_file"],
        AutoTokenizer.from_pretrained(artifact_dir),
        meta["task"],
        meta["max_length"],
        input_names=meta["input_names"],
        device=meta["device"],
        precision=meta["precision"],
    )
