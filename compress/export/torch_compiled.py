"""`torch_compile`: a stage served by PyTorch itself in bf16/fp16, SDPA attention, `torch.compile` with CUDA graphs
over bucketed static shapes (`compress.runtime.compiled`). The artifact is the saved stage plus those settings;
the runtime compiles on first use, on the machine that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator

from compress.errors import ExportError
from compress.export.base import ExportConfig, Exporter, options_for, write_metadata
from compress.export.deploy import sample_io, write_deploy_notes
from compress.models.handle import ModelHandle
from compress.models.serialize import save_handle
from compress.runtime.base import Runtime
from compress.runtime.compiled import DEFAULT_LENGTHS, CudaGraphs, open_compiled
from compress.steps.base import StageContext
from compress.tasks import get_task

MODEL_DIR = "model"


class TorchCompiledConfig(ExportConfig):
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weights and compute (bf16 needs an Ampere-or-newer GPU or a recent CPU)."
    )
    mode: Literal["reduce-overhead", "max-autotune", "default"] = Field(
        "reduce-overhead",
        description="torch.compile mode: `reduce-overhead` replays CUDA graphs; `max-autotune` also searches "
        "GEMM kernels (long compiles); `default` compiles kernels only.",
    )
    cuda_graphs: CudaGraphs = Field(
        "static",
        description="With `reduce-overhead` on CUDA: `static` captures one graph per bucket itself and copies each "
        "batch in from pinned memory (less host work per call: the fastest variant at every point measured on an "
        "H200, docs/bench.md); `torch` replays torch.compile's own CUDA graph trees.",
    )
    length_buckets: list[PositiveInt] = Field(
        default_factory=lambda: list(DEFAULT_LENGTHS),
        description="Sequence lengths batches are padded up to (each compiled once); the model's limit is always one.",
    )
    max_batch: PositiveInt = Field(256, description="Largest batch; batches pad to the next power of two below it.")

    @field_validator("length_buckets")
    @classmethod
    def _sorted(cls, value: list[int]) -> list[int]:
        return sorted(set(value))


class TorchCompiledExporter(Exporter):
    """The stage in PyTorch, compiled for static shapes (GPU serving without leaving PyTorch)."""

    name: ClassVar[str] = "torch_compile"
    Config = TorchCompiledConfig
    config: TorchCompiledConfig

    def export(self, model: ModelHandle, ctx: StageContext, out_dir: Path) -> None:
        if 1 in get_task(model.task).logits_axes:
            raise ExportError(
                f"torch_compile pads sequences into buckets; {model.task} outputs carry the sequence axis",
                where=f"exports.{self.label}",
                fix="remove this export (the stage's own PyTorch evaluation covers it)",
            )
        if any(t["name"] == "dynamic_int8" for t in model.transforms):
            raise ExportError(
                "a dynamic-INT8 model runs on PyTorch's CPU kernels, which torch_compile's GPU path cannot use",
                where=f"exports.{self.label}",
                fix="set `source:` to the stage before dynamic_int8",
            )
        save_handle(model, out_dir / MODEL_DIR)
        cfg = self.config
        write_metadata(
            model, out_dir, format="torch_compile", model_dir=MODEL_DIR, dtype=cfg.dtype, mode=cfg.mode,
            cuda_graphs=cfg.cuda_graphs,
            length_buckets=cfg.length_buckets, max_batch=cfg.max_batch, precision=cfg.dtype,
        )  # fmt: skip
        write_deploy_notes(out_dir, f"PyTorch, torch.compile ({cfg.dtype}, {cfg.mode})", self._sample(model), [
            "Needs compress (it replays the saved stage's transforms) and torch; the first batch of each bucket "
            "compiles (seconds to minutes), later ones replay.",
            f"Batches are padded to lengths {cfg.length_buckets} (and the model's limit) and to powers of two "
            f"up to {cfg.max_batch} rows, so every shape is compiled once.",
        ])  # fmt: skip

    def _sample(self, model: ModelHandle) -> str:
        text, post, _ = sample_io(model)
        return f"""\
import compress

runtime = compress.open("path/to/this/folder", device="cuda")
batch = runtime.tokenizer({text}, padding=True, truncation=True, return_tensors="np")
logits = runtime.predict(dict(batch)).cpu().numpy()
{post}"""

    def load_runtime(self, artifact_dir: Path, ctx: StageContext) -> Runtime:
        return open_compiled(artifact_dir, options_for(ctx))
