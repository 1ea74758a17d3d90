"""`compress bench`: open each artifact on this machine, sweep batch sizes and lengths, search the SLA batch, offer
served load, and write one results file that `merge` can combine with other machines' files.

Artifacts that cannot run here (a TensorRT engine without TensorRT, a Core ML package off macOS) become
`unavailable` rows with the reason, so a merged report shows what each machine could and could not run.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from compress.artifacts import REPORT, artifact_format, open_artifact, run_artifacts
from compress.bench.measure import REAL, Plan, Point, measure_point
from compress.bench.served import ServedPoint, serve
from compress.bench.sla import SlaResult, search_sla_batch
from compress.data.text_data import TextData
from compress.environment import environment
from compress.errors import ModelError, NotEvaluable
from compress.runtime.base import Runtime

SCHEMA_VERSION = 1
# Formats whose runtime can run on CUDA: asked for a GPU and opened on the CPU, they get an `unavailable` row too
# (e.g. onnxruntime without its GPU build). OpenVINO and Core ML are CPU/Apple runtimes by design.
CUDA_FORMATS = {"onnx", "pytorch", "transformers", "torch_compile"}


class Unavailable(BaseModel):
    artifact: str
    format: str | None = None
    reason: str


class BenchResults(BaseModel):
    """One `compress bench` run on one machine (the file `merge` reads)."""

    schema_version: int = SCHEMA_VERSION
    machine_name: str = Field(description="Who measured: --machine-name, or the host name.")
    machine: dict[str, Any] = Field(description="CPU model and flags, cores, GPU and driver, library versions.")
    created: str
    command: str
    data: dict[str, Any] = Field(description="The texts measured: source file and row count.")
    plan: dict[str, Any]
    points: list[Point] = Field(default_factory=list)
    sla: list[SlaResult] = Field(default_factory=list)
    served: list[ServedPoint] = Field(default_factory=list)
    unavailable: list[Unavailable] = Field(default_factory=list)
    not_measured: list[str] = Field(
        default_factory=list,
        description="Artifacts still to measure when this file was written: a run cut short keeps what it measured.",
    )


@dataclass
class BenchSpec:
    batch_sizes: list[int]
    lengths: list[str] = field(default_factory=lambda: [REAL])
    plan: Plan = field(default_factory=Plan)
    sla_p99_ms: float | None = None
    max_batch: int = 1024
    served_rates: list[float] = field(default_factory=list)
    window_ms: float = 10.0
    served_requests: int = 2000
    device: str = "auto"
    threads: int | None = None
    task: str | None = None
    coreml_compute_units: list[str] = field(default_factory=list)  # empty: the units each package was made for


def expand(paths: list[Path]) -> list[tuple[str, Path]]:
    """(label, folder) per artifact; a run folder expands to its stages' artifacts, labelled `<run>/<stage>`."""
    found = []
    for path in paths:
        if (path / REPORT).is_file():
            found += [(f"{path.name}/{stage}", folder) for stage, folder in run_artifacts(path).items()]
        else:
            found.append((_label(path), path))
    return found


def _label(folder: Path) -> str:
    """One stage's artifact inside a run folder is labelled `<run>/<stage>` too; any other folder by its path."""
    run = folder.parent.parent.parent
    if folder.parent.parent.name == "stages" and (run / REPORT).is_file():
        for stage, artifact in run_artifacts(run).items():
            if artifact.resolve() == folder.resolve():
                return f"{run.name}/{stage}"
    return str(folder)


def bench(
    paths: list[Path],
    data: TextData,
    spec: BenchSpec,
    *,
    command: str,
    machine_name: str | None = None,
    log: Callable[[str], None] = print,
    measured: Callable[[BenchResults], None] | None = None,
) -> BenchResults:
    """Measure every artifact in `paths`; `measured` gets the results so far after each one (to write them)."""
    results = BenchResults(
        machine_name=machine_name or platform.node() or "this machine",
        machine=environment(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command=command,
        data={"source": data.source, "rows": len(data)},
        plan=vars(spec.plan) | {"lengths": spec.lengths, "batch_sizes": spec.batch_sizes},
    )
    variants = _variants(expand(paths), spec)
    results.not_measured = [label for label, _, _ in variants]
    for label, folder, units in variants:
        _bench_artifact(label, folder, units, data, spec, results, log)
        results.not_measured.remove(label)
        if measured is not None:
            measured(results)
    return results


def _bench_artifact(
    label: str,
    folder: Path,
    units: str | None,
    data: TextData,
    spec: BenchSpec,
    results: BenchResults,
    log: Callable[[str], None],
) -> None:
    try:
        runtime = open_artifact(folder, device=spec.device, threads=spec.threads, task=spec.task, compute_units=units)
    except (NotEvaluable, ModelError) as exc:  # cannot run here, or damaged: a row saying why, then the next
        results.unavailable.append(Unavailable(artifact=label, format=artifact_format(folder), reason=str(exc)))
        log(f"{label}: not available here: {exc}")
        return
    fmt = artifact_format(folder)
    if _wants_cuda(spec.device) and fmt in CUDA_FORMATS and runtime.device == "cpu":
        results.unavailable.append(Unavailable(
            artifact=label, format=fmt,
            reason=f"{runtime.name} has no CUDA path on this machine (for ONNX Runtime: pip install "
            "onnxruntime-gpu); measured on the CPU instead",
        ))  # fmt: skip
    try:
        _bench_runtime(runtime, label, data, spec, results, log)
    finally:
        runtime.close()


def _wants_cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def _variants(artifacts: list[tuple[str, Path]], spec: BenchSpec) -> list[tuple[str, Path, str | None]]:
    """A Core ML package once per requested compute units (labelled with them); every other artifact once."""
    variants: list[tuple[str, Path, str | None]] = []
    for label, folder in artifacts:
        if spec.coreml_compute_units and artifact_format(folder) == "coreml":
            variants += [(f"{label} ({units})", folder, units) for units in spec.coreml_compute_units]
        else:
            variants.append((label, folder, None))
    return variants


def _bench_runtime(
    runtime: Runtime, label: str, data: TextData, spec: BenchSpec, results: BenchResults, log: Callable[[str], None]
) -> None:
    measured_points: dict[tuple[int, str], Point] = {}

    def point(batch: int, length: str) -> Point:
        """Measured once per (batch, length): the SLA search reuses what the sweep measured."""
        if (batch, length) in measured_points:
            return measured_points[batch, length]
        measured = measure_point(runtime, data, batch, length, spec.plan, artifact=label, threads=spec.threads)
        measured_points[batch, length] = measured
        log(
            f"{label} [{runtime.name}/{runtime.device}] batch {batch}, length {length}: "
            f"P50 {measured.p50_ms:.2f} ms, P99 {measured.p99_ms:.2f} ms, {measured.throughput_per_s:,.1f}/s"
            + (" (P99 from few samples)" if measured.p99_from_few_samples else "")
        )
        return measured

    for length in spec.lengths:
        for batch in spec.batch_sizes:
            results.points.append(point(batch, length))
    if spec.sla_p99_ms is not None:
        for length in spec.lengths:
            found = search_sla_batch(partial(point, length=length), spec.sla_p99_ms, max_batch=spec.max_batch)
            results.sla.append(found)
            best = found.best
            log(
                f"{label}: SLA P99 ≤ {spec.sla_p99_ms} ms at length {length}: "
                + (f"batch {best.batch_size}, {best.throughput_per_s:,.1f}/s" if best else "missed even at batch 1")
            )
    if spec.served_rates:
        best_sla = next((s.best for s in results.sla if s.artifact == label and s.best is not None), None)
        max_batch = best_sla.batch_size if best_sla else max(spec.batch_sizes)
        for rate in spec.served_rates:
            served = serve(
                runtime, data, rate_per_s=rate, window_ms=spec.window_ms, max_batch=max_batch,
                requests=spec.served_requests, artifact=label,
            )  # fmt: skip
            results.served.append(served)
            log(
                f"{label}: {rate:g} req/s offered → P50 {served.p50_ms:.1f} ms, P99 {served.p99_ms:.1f} ms, "
                f"mean batch {served.mean_batch:.1f}" + (" (saturated)" if served.saturated else "")
            )
