"""The GPU path side by side (issue 15): the flagship's teacher and student on one CUDA GPU, SST-2 dev's real
sentences, the teacher's fp32 eager throughput = 1.0.

    python benchmarks/bench_distill.py --gpu --output /tmp/runs/flagship      # trains the stages (once)
    python benchmarks/bench_gpu_path.py --run /tmp/runs/flagship               # this benchmark
    python benchmarks/bench_gpu_path.py --combine TEACHER.json STUDENT.json    # records of runs cut short, joined

Per model (teacher, student = the truncate stage) and batch size (32, 256): PyTorch fp32 eager, bf16 eager,
plain bf16 + `torch.compile(mode="reduce-overhead")` on the real (dynamically padded) shapes, compress's
`torch_compile` path (bf16, SDPA, bucketed static shapes) with torch.compile's CUDA graph trees
(`cuda_graphs: torch`) and with its own per-bucket CUDA graphs (`cuda_graphs: static`, the default), each also
with 8-token length buckets, the `aoti` package (last: its compile is the slowest), and ONNX Runtime's CUDA provider
where onnxruntime-gpu is installed (else an unavailable row). Each row's accuracy is scored from its own
predictions. Targets: student ≥ 20x at batch 256 and ≥ 10x at 32 with accuracy within 0.2 points of its CPU twin;
teacher ≥ 5x; compress's path ≥ 1.3x plain bf16 + torch.compile on the same model.

Writes benchmarks/results/gpu-path.json and docs/benchmarks/gpu-path.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recipe_bench import read_record, read_report, stage_folder

from compress.artifacts import open_artifact
from compress.bench.measure import REAL, Plan, measure_point
from compress.config import DataSpec
from compress.data.provider import DataProvider
from compress.environment import environment
from compress.evaluate.batching import tokenize_batches
from compress.export.base import Exporter
from compress.io import atomic_write_text
from compress.models.serialize import load_handle
from compress.runtime.base import Runtime
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext

ROOT = Path(__file__).resolve().parent
NAME = "gpu-path"
BATCHES = (32, 256)
PLAN = Plan(passes=3, warmup=5, min_batches=20, min_seconds=1.0, max_seconds=20.0)


RUN_LAST = ("compress aoti",)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a flagship run folder (bench_distill.py --gpu)")
    parser.add_argument(
        "--combine", type=Path, nargs="+", default=None, metavar="RECORD",
        help="join the rows of gpu-path records from runs each cut short (e.g. one with the teacher's rows, one "
        "with the student's) into one record that names every run; its ratios then span runs, and it says so",
    )  # fmt: skip
    parser.add_argument("--teacher", default="teacher")
    parser.add_argument("--student", default="truncate")
    parser.add_argument("--models", default="teacher,student", help="teacher,student to measure, in this order")
    parser.add_argument("--skip", default="", help="comma-separated variants to leave out (e.g. 'compress aoti')")
    parser.add_argument("--data", default=str(ROOT.parent / "evals" / "data" / "sst2" / "dev.tsv"))
    parser.add_argument("--cpu-twin", default="export:ort-fp32",
                        help="the run's stage with the student on the CPU (ONNX Runtime) to compare with")  # fmt: skip
    return parser.parse_args()


def stage_model(run: Path, stage: str) -> Path:
    (found,) = [s for s in read_report(run)["stages"] if s["name"] == stage]
    return stage_folder(run, found["artifact"])


def accuracy(runtime: Runtime, data: Any, batch: int) -> float:
    predictions = []
    for item in tokenize_batches(runtime.tokenizer, data, batch, runtime.max_length or 512):
        logits = runtime.predict(item.inputs)
        logits = logits.float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        predictions.append(logits.argmax(-1))
    return float(np.mean(np.concatenate(predictions) == np.asarray(data.labels)))


def plain_compiled(folder: Path) -> TorchRuntime:
    """bf16 + torch.compile(reduce-overhead) as a user would write it: no buckets, the real shapes."""
    handle = load_handle(folder, "cuda")
    handle.model.to(torch.bfloat16)
    runtime = TorchRuntime(handle, "cuda")
    runtime._forward = torch.compile(runtime._forward, mode="reduce-overhead")
    runtime.compiles_per_shape = True  # timed like ours: after one pass over every shape
    return runtime


def variants(folder: Path, work: Path, onnx: Path | None) -> dict[str, Callable[[], Runtime]]:
    def eager(dtype: torch.dtype) -> Callable[[], Runtime]:
        def make() -> Runtime:
            handle = load_handle(folder, "cuda")
            handle.model.to(dtype)
            return TorchRuntime(handle, "cuda")

        return make

    def exported(exporter: type[Exporter], prefix: str, **settings: Any) -> Runtime:
        """The stage exported as `compress run` would (a folder `compress bench` opens too), then opened."""
        out = work / f"{prefix}-{folder.parent.name}"
        out.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(train_data=None, eval_data=None, calibration_data=None, score=None,  # type: ignore[arg-type]
                           eval_spec=None, device=torch.device("cuda"), work_dir=work, seed=0)  # fmt: skip
        exporter(max_batch=max(BATCHES), **settings).export(load_handle(folder, "cuda"), ctx, out)
        return open_artifact(out, device="cuda")

    def ours() -> Runtime:
        from compress.export.torch_compiled import TorchCompiledExporter

        return exported(TorchCompiledExporter, "torch_compile", cuda_graphs="torch")

    def ours_fine_buckets() -> Runtime:
        """Length buckets every 8 tokens up to 128: less padding per batch, more shapes to compile."""
        from compress.export.torch_compiled import TorchCompiledExporter

        buckets = [*range(8, 129, 8), 256, 512]
        return exported(TorchCompiledExporter, "torch_compile8", cuda_graphs="torch", length_buckets=buckets)

    def ours_static_graphs(buckets: list[int] | None = None) -> Callable[[], Runtime]:
        """One CUDA graph per bucket captured by compress: a copy and a replay per call, no torch.compile guards."""
        from compress.export.torch_compiled import TorchCompiledExporter

        extra = {"length_buckets": buckets} if buckets else {}
        name = "torch_compile_static" + ("8" if buckets else "")
        return lambda: exported(TorchCompiledExporter, name, cuda_graphs="static", **extra)

    def aoti() -> Runtime:
        from compress.export.aoti import AOTInductorExporter

        return exported(AOTInductorExporter, "aoti")

    def ort_cuda() -> Runtime:
        from compress.export.onnx import open_onnx
        from compress.runtime.base import RuntimeOptions

        if onnx is None:
            raise RuntimeError("no ONNX export of this stage in the run")
        runtime = open_onnx(onnx, RuntimeOptions(device="cuda"))
        if runtime.device != "cuda":
            raise RuntimeError("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)")
        return runtime

    return {
        "fp32 eager": eager(torch.float32),
        "bf16 eager": eager(torch.bfloat16),
        "bf16 + torch.compile (plain)": lambda: plain_compiled(folder),
        "compress torch_compile": ours,
        "compress torch_compile, 8-token buckets": ours_fine_buckets,
        "compress torch_compile, static graphs": ours_static_graphs(),
        "compress torch_compile, static graphs, 8-token buckets": ours_static_graphs([*range(8, 129, 8), 256, 512]),
        "onnxruntime CUDA": ort_cuda,
        "compress aoti": aoti,
    }


def main() -> None:
    args = parse_args()
    if args.combine:
        records = [read_record(path, "command", "hardware", "rows", "summary") for path in args.combine]
        rows = [row | {"run": record["command"]} for record in records for row in record["rows"]]
        twin = next((r["summary"]["cpu_twin_accuracy"] for r in records if r["summary"].get("cpu_twin_accuracy")), None)
        record = write_record(rows, twin, [r["command"] for r in records], records[0]["hardware"])
        print(json.dumps(record["summary"], indent=2))
        return
    if args.run is None:
        sys.exit("give --run RUN_FOLDER (or --combine RECORD...)")
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    data = DataProvider(DataSpec(path=args.data, text="sentence", label="label"), "text-classification", Path.cwd(),
                        seed=0).eval  # fmt: skip
    rows: list[dict[str, Any]] = []
    work = Path("/tmp/compress-gpu-path")
    # The run's FP32 ONNX export is of the final (student) stage; the teacher has none.
    models = {"teacher": (args.teacher, None), "student": (args.student, "export:ort-fp32")}
    roles = args.models.split(",")  # in the order given: the part that matters most first
    # AOTInductor's compile goes after every other row: it is the slowest to set up, and on the H200 (2026-12-02)
    # the process ended without a traceback inside the teacher's, losing the student's rows that were to follow.
    passes = [(role, last) for last in (False, True) for role in roles]
    for role, last in passes:
        stage, onnx = models[role]
        folder = stage_model(args.run, stage)
        for variant, make in variants(folder, work, onnx and stage_model(args.run, onnx)).items():
            if variant in args.skip.split(",") or (variant in RUN_LAST) != last:
                continue
            torch._dynamo.reset()  # each variant compiles as in a process of its own (limits count per process)
            started = time.perf_counter()
            try:
                runtime = make()
                score = accuracy(runtime, data, 256)
            except Exception as exc:  # a path this machine lacks: a row saying so
                rows.append({"model": role, "variant": variant, "unavailable": f"{type(exc).__name__}: {exc}"[:300]})
                print(rows[-1], flush=True)
                write_record(rows, stage_accuracy(args.run, args.cpu_twin))
                continue
            setup_s = time.perf_counter() - started
            for batch in BATCHES:
                point = measure_point(runtime, data, batch, REAL, PLAN, artifact=f"{role}:{variant}")
                rows.append({"model": role, "variant": variant, "batch_size": batch, "accuracy": score,
                             "setup_seconds": round(setup_s, 1)} | point.model_dump())  # fmt: skip
                print({k: rows[-1][k] for k in ("model", "variant", "batch_size", "accuracy", "throughput_per_s",
                                                "p99_ms")}, flush=True)  # fmt: skip
            runtime.close()
            del runtime
            torch.cuda.empty_cache()
            # After every variant: a run cut short keeps its rows.
            record = write_record(rows, stage_accuracy(args.run, args.cpu_twin))
    print(json.dumps(record["summary"], indent=2))


def stage_accuracy(run: Path, stage: str) -> float | None:
    report = read_report(run)
    return next((s["metrics"].get("accuracy") for s in report["stages"] if s["name"] == stage), None)


def write_record(
    rows: list[dict[str, Any]], cpu_twin: float | None, runs: list[str] | None = None, hardware: Any = None
) -> dict[str, Any]:
    """`runs`, `hardware`: the commands and machine of the runs whose rows were joined (`--combine`)."""
    record = {
        "name": NAME,
        "command": shlex.join(["python", "benchmarks/bench_gpu_path.py", *sys.argv[1:]]),
        "hardware": hardware or environment(),
        "rows": rows,
        "summary": summarize(rows, cpu_twin) | {"runs": len(runs) if runs else 1},
    }
    if runs:
        record["runs"] = runs
    atomic_write_text(ROOT / "results" / f"{NAME}.json", json.dumps(record, indent=2) + "\n")
    write_docs(record)
    return record


def summarize(rows: list[dict[str, Any]], twin: float | None) -> dict[str, Any]:
    """`twin`: the student's accuracy on the CPU (the same run's ONNX Runtime FP32 export of it)."""

    def throughput(model: str, variant: str, batch: int) -> float | None:
        found = [r for r in rows if (r["model"], r["variant"], r.get("batch_size")) == (model, variant, batch)]
        return found[0]["throughput_per_s"] if found else None

    def best_ours(model: str, batch: int) -> tuple[str | None, float | None]:
        """compress's fastest `torch_compile` setting for this model and batch (the one to make the default)."""
        found = [(r["variant"], r["throughput_per_s"]) for r in rows if r["model"] == model
                 and r.get("batch_size") == batch and r["variant"].startswith("compress torch_compile")]  # fmt: skip
        return max(found, key=lambda item: item[1], default=(None, None))

    base = {b: throughput("teacher", "fp32 eager", b) for b in BATCHES}
    summary: dict[str, Any] = {}
    for model in ("teacher", "student"):
        for batch in BATCHES:
            variant, ours = best_ours(model, batch)
            plain = throughput(model, "bf16 + torch.compile (plain)", batch)
            summary[f"{model}_best_variant_b{batch}"] = variant
            summary[f"{model}_speedup_b{batch}"] = round(ours / base[batch], 2) if ours and base[batch] else None
            summary[f"{model}_vs_plain_compile_b{batch}"] = round(ours / plain, 2) if ours and plain else None
    chosen = summary["student_best_variant_b256"] or "compress torch_compile"
    student = next((r["accuracy"] for r in rows if r["model"] == "student" and r["variant"] == chosen), None)
    summary["student_accuracy"] = student
    summary["cpu_twin_accuracy"] = twin
    summary["accuracy_delta_points"] = round(100 * (student - twin), 2) if student is not None and twin else None
    summary |= {
        "target_student_ge_20x_b256": (summary["student_speedup_b256"] or 0) >= 20,
        "target_student_ge_10x_b32": (summary["student_speedup_b32"] or 0) >= 10,
        "target_teacher_ge_5x": (summary["teacher_speedup_b256"] or 0) >= 5,
        "target_ge_1.3x_plain_compile": min(
            summary[f"{m}_vs_plain_compile_b{b}"] or 0 for m in ("teacher", "student") for b in BATCHES
        )
        >= 1.3,
    }
    return summary


def write_docs(record: dict[str, Any]) -> None:
    lines = ["| model | variant | batch | accuracy | samples/s | × teacher fp32 eager | P50 ms | P99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    base = {r["batch_size"]: r["throughput_per_s"] for r in record["rows"]
            if r["model"] == "teacher" and r["variant"] == "fp32 eager" and "batch_size" in r}  # fmt: skip
    for r in record["rows"]:
        if "unavailable" in r:
            lines.append(f"| {r['model']} | {r['variant']} | — | — | not available: {r['unavailable']} | | | |")
            continue
        ratio = r["throughput_per_s"] / base[r["batch_size"]] if base.get(r["batch_size"]) else None
        variant = r["variant"] + (f" (**{r['caveat']}**)" if r.get("caveat") else "")
        lines.append(f"| {r['model']} | {variant} | {r['batch_size']} | {r['accuracy']:.2%} | "
                     f"{r['throughput_per_s']:,.0f} | {'—' if ratio is None else f'{ratio:.1f}x'} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")  # fmt: skip
    runs = [f"- `{command}`" for command in record.get("runs", [])]
    joined = ["Rows joined from these runs (same machine kind, same deterministic flagship; ratios between their "
              "rows span runs):\n", *runs, ""] if runs else []  # fmt: skip
    body = [f"# GPU path: {record['hardware']['cuda']}\n", f"Command: `{record['command']}`\n", *joined,
            "\n".join(lines), "\n## Summary\n",
            "\n".join(f"- `{k}`: {v}" for k, v in record["summary"].items())]  # fmt: skip
    atomic_write_text(ROOT.parent / "docs" / "benchmarks" / f"{NAME}.md", "\n".join(body) + "\n")


if __name__ == "__main__":
    main()
