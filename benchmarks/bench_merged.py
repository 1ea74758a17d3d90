"""The merged `compress bench` report (issue 15): this CPU's and the H200's results files as one, with the issue's
summary beside the rows.

    python benchmarks/bench_merged.py        # results/bench-cpu.json + results/bench-h200.json → bench-merged.json

The rows are `compress bench merge`'s (one per machine, artifact, runtime and batch); its HTML, Markdown and JSON
go to runs/bench-merged/ (through the same `write_report`). The GPU speedups are the side-by-side GPU-path
benchmark's (`gpu-path.json`, the teacher's fp32 eager = 1.0), the CPU INT8 speedup this CPU run's best INT8
runtime against the truncated student in PyTorch FP32 at batch 32, and its accuracy cost the flagship's CPU record
(`distill-bert-then-int8-12k.json`), since a bench file measures speed only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from recipe_bench import REPO, ROOT, command_line, read_record

from compress.bench.merge import load_runs, machine_line, write_report
from compress.bench.run import BenchResults
from compress.errors import ConfigError
from compress.io import atomic_write_text

RESULTS = ROOT / "results"
INPUTS = [RESULTS / "bench-cpu.json", RESULTS / "bench-h200.json"]
GPU_PATH = RESULTS / "gpu-path.json"
CPU_FLAGSHIP = RESULTS / "distill-bert-then-int8-12k.json"
STUDENT_FP32, INT8_STAGES = "truncate", ("export:ort-int8", "export:openvino-int8")


def rows(runs: list[BenchResults]) -> list[dict[str, Any]]:
    sla = {(run.machine_name, s.artifact, s.runtime, s.length): s.best for run in runs for s in run.sla}
    out = []
    for run in runs:
        for p in run.points:
            best = sla.get((run.machine_name, p.artifact, p.runtime, p.length))
            out.append({
                "machine": run.machine_name, "artifact": p.artifact, "runtime": p.runtime, "device": p.device,
                "batch": p.batch_size, "length": p.length, "p50_ms": p.p50_ms, "p95_ms": p.p95_ms,
                "p99_ms": p.p99_ms, "throughput_per_s": p.throughput_per_s, "samples": p.batches,
                "p99_from_few_samples": p.p99_from_few_samples, "sla_batch": best.batch_size if best else None,
            })  # fmt: skip
    return out


def cpu_int8_speedup(runs: list[BenchResults]) -> float | None:
    """The best INT8 artifact's batch-32 throughput over the truncated student's PyTorch FP32, on a CPU run."""
    points = [p for run in runs if not run.machine.get("cuda") for p in run.points if p.batch_size == 32]
    fp32 = [p.throughput_per_s for p in points if p.artifact.endswith("/" + STUDENT_FP32)]
    int8 = [p.throughput_per_s for p in points if p.artifact.endswith(INT8_STAGES)]
    return round(max(int8) / fp32[0], 2) if fp32 and int8 else None


def cpu_int8_drop_points() -> float | None:
    """Accuracy points the best INT8 export loses against the FP32 student, from the flagship's CPU record."""
    stages = {r["stage"]: r for r in read_record(CPU_FLAGSHIP, "rows")["rows"]}
    int8 = max((stages[s] for s in INT8_STAGES if s in stages), key=lambda r: r["throughput_per_s_batch32"])
    return round(100 * (stages[STUDENT_FP32]["accuracy"] - int8["accuracy"]), 2)


def summary(runs: list[BenchResults]) -> dict[str, Any]:
    gpu = read_record(GPU_PATH, "summary")["summary"]
    speedup, drop = cpu_int8_speedup(runs), cpu_int8_drop_points()
    found = {
        "machines": {run.machine_name: machine_line(run) for run in runs},
        "gpu_student_speedup_bs256": gpu["student_speedup_b256"],
        "gpu_student_speedup_bs32": gpu["student_speedup_b32"],
        "gpu_teacher_speedup_bs256": gpu["teacher_speedup_b256"],
        "vs_plain_compile_bs256": gpu["student_vs_plain_compile_b256"],
        "gpu_student_accuracy_delta_points": gpu["accuracy_delta_points"],
        "gpu_path_runs": gpu.get("runs", 1),
        "cpu_best_int8_speedup": speedup,
        "cpu_best_int8_drop_points": drop,
        "figures_from": {
            "gpu_*, vs_plain_compile_bs256": str(GPU_PATH.relative_to(REPO)),
            "cpu_best_int8_drop_points": str(CPU_FLAGSHIP.relative_to(REPO)),
        },
    }
    return found | {
        "target_gpu_student_ge_20x_bs256": (found["gpu_student_speedup_bs256"] or 0) >= 20,
        "target_gpu_student_ge_10x_bs32": (found["gpu_student_speedup_bs32"] or 0) >= 10,
        "target_gpu_teacher_ge_5x": (found["gpu_teacher_speedup_bs256"] or 0) >= 5,
        "target_vs_plain_compile_ge_1.3x": (found["vs_plain_compile_bs256"] or 0) >= 1.3,
        "target_cpu_int8_ge_2x_within_1_point": (speedup or 0) >= 2 and drop is not None and drop <= 1,
    }


def main() -> None:
    out = REPO / "runs" / "bench-merged"
    try:
        runs = load_runs(INPUTS)
    except ConfigError as exc:
        sys.exit(str(exc))
    write_report(runs, out)  # what `compress bench merge INPUTS... --output runs/bench-merged` writes
    record = {
        "name": "bench-merged",
        "command": command_line(),
        "merged_with": " ".join(
            ["compress bench merge", *(str(p.relative_to(REPO)) for p in INPUTS), "--output", "runs/bench-merged"]
        ),
        "not_measured": {run.machine_name: run.not_measured for run in runs if run.not_measured},
        "rows": rows(runs),
        "summary": summary(runs),
    }
    atomic_write_text(RESULTS / "bench-merged.json", json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
