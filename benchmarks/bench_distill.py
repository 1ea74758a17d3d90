"""Flagship benchmark: distill-BERT-then-INT8 vs its FP32 PyTorch teacher, every stage in one run.

    python benchmarks/bench_distill.py            # CPU → benchmarks/results/distill-bert-then-int8.json
    python benchmarks/bench_distill.py --gpu      # train and evaluate PyTorch stages on CUDA

Targets (issue): final artifact ≥ 99 % of the teacher's accuracy at ≥ 10x its throughput.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_bench import REPO, parse_args, recipe_overrides, run_benchmark, throughput

from compress.result import StageResult

FINAL = "export:ort-int8"


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    by_name = {s.name: s for s in stages}
    teacher, final = by_name["teacher"], by_name.get(FINAL)
    if final is None or final.status != "ok":
        return {
            "teacher_accuracy": teacher.metrics.get("accuracy"),
            "final": "did not run",
            "stopped_or_failed": final.message if final else "recipe stopped before the exports",
        }
    ratio = final.metrics["accuracy"] / teacher.metrics["accuracy"]
    speed32 = throughput(final, 32) / throughput(teacher, 32)
    speed1 = throughput(final, 1) / throughput(teacher, 1)
    contributions = {}
    for stage in stages[2:]:
        source = by_name.get(stage.source or "")
        if source and stage.status == "ok" and throughput(source, 32):
            contributions[stage.name] = {
                "speedup_batch32": round(throughput(stage, 32) / throughput(source, 32), 3),
                "accuracy_delta_points": round(100 * (stage.metrics["accuracy"] - source.metrics["accuracy"]), 2),
            }
    return {
        "teacher_accuracy": teacher.metrics["accuracy"],
        "final_stage": FINAL,
        "final_accuracy": final.metrics["accuracy"],
        "accuracy_ratio": round(ratio, 4),
        "speedup_batch32": round(speed32, 2),
        "speedup_batch1": round(speed1, 2),
        "teacher_p99_ms_batch1": teacher.latency["1"].p99_ms,
        "final_p99_ms_batch1": final.latency["1"].p99_ms,
        "target_accuracy_ratio_ge_0.99": ratio >= 0.99,
        "target_speedup_ge_10x_batch32": speed32 >= 10.0,
        "per_stage_vs_its_source": contributions,
    }


def main() -> None:
    args = parse_args(__doc__)
    name = "distill-bert-then-int8" + ("-gpu" if args.gpu else "")
    record = run_benchmark(
        name,
        REPO / "recipes" / "distill-bert-then-int8.yaml",
        args.output or Path(f"runs/bench-{name}"),
        summarize,
        recipe_overrides(args),
        title=f"distill-BERT-then-INT8 ({'GPU' if args.gpu else 'CPU'})",
    )
    print(record["summary"])


if __name__ == "__main__":
    main()
