"""Evaluate one exported artifact on this machine: `compress eval <export folder>`.

An export (ONNX, OpenVINO, TensorRT, Core ML, torch_compile, AOTInductor) opens through the runtime registry by the
format recorded beside it and is measured exactly as a recipe measures its stages — the task metric, latency
percentiles and throughput per batch size, peak memory — so an artifact trained and exported on one machine (a GPU
host, say) gets its accuracy and speed on another, with that machine's kernels.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from compress.artifacts import artifact_format, open_artifact
from compress.config import DataSpec, EvalSpec
from compress.data.provider import DataProvider
from compress.environment import environment
from compress.evaluate.evaluator import evaluate
from compress.export.base import METADATA_FILE, read_metadata
from compress.io import atomic_write_text
from compress.result import Evaluation

RESULT_FILE = "eval.json"


def is_export(path: Path) -> bool:
    return (path / METADATA_FILE).is_file()


def export_label_names(path: Path) -> list[str] | None:
    """The class names an export recorded (its model's head), so data labels are scored against the head's ids."""
    names = read_metadata(path).get("label_names")
    return list(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def evaluate_artifact(
    path: Path, data: DataSpec, spec: EvalSpec, base_dir: Path, output: Path, *, progress: bool = True
) -> Evaluation:
    """Measure the export at `path` on `data`'s evaluation split; `output/eval.json` holds the figures."""
    runtime = open_artifact(path, device=spec.device, threads=spec.threads)
    try:
        texts = DataProvider(data, runtime.task, base_dir, seed=0).eval
        evaluation, _ = evaluate(runtime, texts, spec, progress=progress)
    finally:
        runtime.close()
    record = {
        "artifact": str(path),
        "format": artifact_format(path),
        "machine_name": platform.node(),
        "machine": environment(),
        "data": {"source": texts.source, "rows": len(texts)},
        "evaluation": evaluation.model_dump(mode="json"),
    }
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return evaluation


def evaluation_table(evaluation: Evaluation) -> str:
    """The metric and one row per batch size, as Markdown."""
    metric = evaluation.metrics[evaluation.primary_metric]
    lines = [
        f"{evaluation.runtime}/{evaluation.device}, {evaluation.threads} threads, {evaluation.eval_samples} samples: "
        f"{evaluation.primary_metric} {metric:.4f}, size {evaluation.size_mb:.1f} MB, peak memory "
        f"{evaluation.peak_memory_mb:,.0f} MB",
        "",
        "| batch | P50 ms | P95 ms | P99 ms | samples/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batch, s in evaluation.latency.items():
        lines.append(f"| {batch} | {s.p50_ms:.2f} | {s.p95_ms:.2f} | {s.p99_ms:.2f} | {s.throughput_per_s:,.1f} |")
    return "\n".join(lines)
