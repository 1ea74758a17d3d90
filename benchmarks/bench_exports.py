"""Export benchmark: PyTorch FP32/INT8 vs ONNX Runtime FP32/INT8 vs OpenVINO FP32/INT8 (+ TensorRT, Core ML
where they run) on one fine-tuned SST-2 classifier, side by side in one run.

    python benchmarks/bench_exports.py                      # CPU → benchmarks/results/exports-cpu.json
    python benchmarks/bench_exports.py --gpu                # CUDA paths → exports-gpu.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_bench import ROOT, parse_args, recipe_overrides, run_benchmark, throughput

from compress.result import StageResult


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    torch_fp32 = next(s for s in stages if s.name == "finetune")
    base = throughput(torch_fp32, 32)
    int8 = [s for s in stages if "int8" in s.name and s.status == "ok" and throughput(s, 32)]
    best = max(int8, key=lambda s: throughput(s, 32) or 0.0, default=None)
    summary: dict[str, Any] = {
        "torch_fp32_accuracy": torch_fp32.metrics.get("accuracy"),
        "torch_fp32_throughput_batch32": base,
    }
    if best is not None and base:
        summary |= {
            "best_int8_runtime": best.name,
            "best_int8_speedup_vs_torch_fp32": round(throughput(best, 32) / base, 3),
            "accuracy_drop_points": round(100 * (torch_fp32.metrics["accuracy"] - best.metrics["accuracy"]), 2),
            "target_2x_at_le_1_point": throughput(best, 32) / base >= 2.0
            and 100 * (torch_fp32.metrics["accuracy"] - best.metrics["accuracy"]) <= 1.0,
        }
    summary["speedups_batch32_vs_torch_fp32"] = {
        s.name: round(throughput(s, 32) / base, 3) for s in stages if base and throughput(s, 32)
    }
    return summary


def main() -> None:
    args = parse_args(__doc__)
    name = "exports-gpu" if args.gpu else "exports-cpu"
    record = run_benchmark(
        name,
        ROOT / "recipes" / "exports-cpu.yaml",
        args.output or Path(f"runs/bench-{name}"),
        summarize,
        recipe_overrides(args),
        title=f"Export benchmark ({'GPU' if args.gpu else 'CPU'})",
    )
    print(record["summary"])


if __name__ == "__main__":
    main()
