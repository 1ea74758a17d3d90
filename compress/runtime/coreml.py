"""Core ML runtime: an .mlpackage run through coremltools' `predict`, which exists only on macOS."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from compress.config import Task
from compress.errors import NotEvaluable
from compress.models.size import directory_bytes
from compress.optional import import_optional
from compress.runtime.base import Runtime, graph_inputs

COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}


def coreml_unavailable_reason() -> str | None:
    """Why Core ML cannot run here, or None when it can."""
    if sys.platform != "darwin":
        return f"needs macOS (Core ML's runtime exists only on Apple platforms; this is {sys.platform})"
    try:
        import coremltools.libcoremlpython  # noqa: F401  (the native bridge to Core ML.framework)
    except ImportError:
        return "needs macOS with coremltools' native library (coremltools.libcoremlpython did not import)"
    return None


class CoreMLRuntime(Runtime):
    name = "coreml"

    def __init__(
        self,
        package: Path,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        max_length: int | None,
        *,
        compute_units: str = "all",
        precision: str = "float32",
    ) -> None:
        super().__init__(tokenizer, task, max_length)
        ct = import_optional("coremltools", "coreml")
        reason = coreml_unavailable_reason()
        if reason is not None:
            raise NotEvaluable(
                f"not evaluated: {reason}; {Path(package).name} was converted and validated (spec, inputs, outputs)",
                fix="evaluate the artifact on a Mac (`compress` there runs it with Core ML)",
            )
        self.package = Path(package)
        self.precision = precision
        self.device = compute_units
        self.model = ct.models.MLModel(
            str(self.package), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        )
        self.input_names = [i.name for i in self.model.get_spec().description.input]

    def predict(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        # Core ML has no int64 inputs
        feed = graph_inputs(batch, self.input_names, self.package.name, dtype=np.int32)
        return np.asarray(self.model.predict(feed)["logits"], dtype=np.float32)

    def size_bytes(self) -> int:
        return directory_bytes(self.package)

    def close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "device": self.device, "precision": self.precision}
