"""`aoti`: an AOTInductor package (`model.pt2`): the stage traced by `torch.export` with dynamic batch and sequence
axes and compiled ahead of time by Inductor for the device the recipe evaluates on, in bf16/fp16 on CUDA. It loads
with `torch._inductor.aoti_load_package` — no transformers, no model code — and is evaluated like every export.
Compiling takes minutes (about 100 s even for a tiny model on 2 CPU cores)."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field

from compress.errors import ExportError
from compress.export.base import ExportConfig, Exporter, options_for, write_metadata
from compress.export.deploy import write_deploy_notes
from compress.export.tracing import (
    LogitsOnly,
    example_inputs,
    inference_max_length,
    onnx_input_names,
    reject_torch_int8,
)
from compress.models.handle import ModelHandle
from compress.runtime.aoti import open_aoti
from compress.runtime.base import Runtime
from compress.runtime.compiled import DTYPES
from compress.steps.base import StageContext

MODEL_FILE = "model.pt2"
FALLBACK = "export with `torch_compile` (the same Inductor kernels, compiled when loaded) or to ONNX instead"


class AOTInductorConfig(ExportConfig):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and compute; `auto`: bfloat16 on CUDA, float32 on CPU."
    )
    max_batch: int = Field(1024, ge=2, description="Largest batch the package accepts (its dynamic batch axis).")


def child_load_command(package: Path, device: str, inputs: int) -> list[str]:
    """A fresh interpreter that loads the package and runs one small batch through it."""
    code = (
        "import sys, torch; runner = torch._inductor.aoti_load_package(sys.argv[1]); "
        "ids = torch.ones((2, 8), dtype=torch.long, device=sys.argv[2]); runner(*[ids] * int(sys.argv[3]))"
    )
    return [sys.executable, "-c", code, str(package), device, str(inputs)]


def check_package_loads(package: Path, device: str, inputs: int, where: str) -> None:
    """Load and run the package in a child process first: torch's AOTInductor loader can kill the process
    (SIGSEGV inside `aoti_load_package`, torch 2.11 + CUDA 13 on an H200, a BERT-shaped bf16 package, 2026-12-02),
    and a crash here must be a clear export error, not the end of the recipe that was evaluating it."""
    try:
        done = subprocess.run(child_load_command(package, device, inputs), capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"loading {package.name} did not finish in 600 s", where=where, fix=FALLBACK) from exc
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ExportError(
            f"loading the compiled {package.name} kills the process ({name}) with torch {torch.__version__} on "
            f"{device}: a fault in torch's AOTInductor loader on this machine",
            where=where,
            fix=FALLBACK,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ExportError(f"the compiled {package.name} does not load and run: {last}", where=where, fix=FALLBACK)


class AOTInductorExporter(Exporter):
    """Ahead-of-time compiled PyTorch (`.pt2`) for the evaluation device."""

    name: ClassVar[str] = "aoti"
    Config = AOTInductorConfig
    config: AOTInductorConfig

    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        where = f"exports.{self.label}"
        reject_torch_int8(model, where, converter="torch.export", fix="set `source:` to the stage before it")
        device = ctx.device.type
        dtype = self.config.dtype if self.config.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
        input_names = onnx_input_names(model)
        module = model.model
        parameter = next(module.parameters())
        original_device, original_dtype = parameter.device, parameter.dtype
        module.to(device, DTYPES[dtype])
        max_length = inference_max_length(model, ctx)
        batch = torch.export.Dim("batch", min=1, max=self.config.max_batch)
        length = torch.export.Dim("sequence", min=2, max=max_length)
        wrapper = LogitsOnly(module, input_names, model.task).eval()
        inputs = tuple(t.to(device) for t in example_inputs(model, input_names))
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                # LogitsOnly takes `*inputs`: one varargs entry holding a shape spec per input
                axes = tuple({0: batch, 1: length} for _ in inputs)
                exported = torch.export.export(wrapper, inputs, dynamic_shapes=(axes,))
                torch._inductor.aoti_compile_and_package(exported, package_path=str(out_dir / MODEL_FILE))
        except Exception as exc:
            raise ExportError(
                f"torch.export / AOTInductor could not compile the model: {str(exc).strip().splitlines()[0]}",
                where=where,
                fix="export to ONNX instead, or remove the step that introduced the failing op",
            ) from exc
        finally:
            module.to(original_device, original_dtype)  # the stage's model stays as later stages expect it
        check_package_loads(out_dir / MODEL_FILE, device, len(input_names), where)
        write_metadata(
            model, out_dir, format="aoti", model_file=MODEL_FILE, input_names=input_names, device=device,
            precision=dtype, max_batch=self.config.max_batch, max_sequence=max_length,
        )  # fmt: skip
        write_deploy_notes(out_dir, f"AOTInductor package ({dtype}, {device})", self._sample(input_names), [
            f"Compiled for {device}: load it on the same kind of device, with the same torch version.",
            f"Dynamic axes: batch 1–{self.config.max_batch}, sequence 2–{max_length} tokens.",
        ])  # fmt: skip

    def _sample(self, input_names: list[str]) -> str:
        args = ", ".join(f'torch.from_numpy(batch["{name}"])' for name in input_names)
        return f"""\
import torch
from transformers import AutoTokenizer

artifact = "path/to/this/folder"
tokenizer = AutoTokenizer.from_pretrained(artifact)
model = torch._inductor.aoti_load_package(f"{{artifact}}/{MODEL_FILE}")
batch = tokenizer(["a gripping, beautifully made film"], padding=True, return_tensors="np")
logits = model({args})"""

    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        return open_aoti(artifact_dir, options_for(ctx))
