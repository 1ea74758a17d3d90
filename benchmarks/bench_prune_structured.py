"""Structured pruning + recovery distillation of the flagship's MiniLM-L6 teacher on SST-2, teacher and pruned
student both in ONNX Runtime FP32 on this CPU (`benchmarks/recipes/prune-structured.yaml`).

    python benchmarks/bench_prune_structured.py            # CPU, 2 threads (about half an hour on 2 cores)

Writes benchmarks/results/prune-structured.json and docs/benchmarks/prune-structured.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_bench import REPO, parse_args, recipe_overrides, run_benchmark, throughput

from compress.result import StageResult

NAME = "prune-structured"


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    by_name = {s.name: s for s in stages}
    teacher, pruned = by_name.get("export:teacher-ort-fp32"), by_name.get("export:pruned-ort-fp32")
    summary: dict[str, Any] = {}
    if teacher is None or pruned is None:
        return summary
    teacher_accuracy, pruned_accuracy = teacher.metrics.get("accuracy"), pruned.metrics.get("accuracy")
    summary["teacher_accuracy"], summary["pruned_accuracy"] = teacher_accuracy, pruned_accuracy
    if teacher_accuracy and pruned_accuracy:
        summary["structured_accuracy_ratio"] = round(pruned_accuracy / teacher_accuracy, 4)
    for batch in (1, 32):
        fast, slow = throughput(pruned, batch), throughput(teacher, batch)
        summary[f"structured_cpu_speedup_batch{batch}"] = round(fast / slow, 2) if fast and slow else None
    summary["structured_cpu_speedup"] = summary["structured_cpu_speedup_batch32"]
    student = by_name.get("pruned")
    if student is not None:
        summary["pruned_shape"] = student.details.get("student")
        summary["parameters"] = {"teacher": by_name["teacher"].num_parameters, "pruned": student.num_parameters}
    ratio, speedup = summary.get("structured_accuracy_ratio"), summary["structured_cpu_speedup"]
    summary["target_accuracy_ratio_ge_0.99"] = None if ratio is None else ratio >= 0.99
    summary["target_speedup_ge_1.5"] = None if speedup is None else speedup >= 1.5
    return summary


def main() -> None:
    args = parse_args(__doc__)
    record = run_benchmark(
        NAME,
        REPO / "benchmarks" / "recipes" / f"{NAME}.yaml",
        args.output or Path(f"runs/bench-{NAME}"),
        summarize,
        recipe_overrides(args),
        title="Structured pruning + recovery distillation: MiniLM-L6 on SST-2, ONNX Runtime FP32 (CPU)",
    )
    print(record["summary"])


if __name__ == "__main__":
    main()
