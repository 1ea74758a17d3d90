"""OpenVINO's sparse-weight decompression on the CPU (issue 16): the flagship's MiniLM teacher pruned to 70 %
unstructured (magnitude), NNCF INT8, with and without `sparse_weights_decompression_rate`, beside the dense INT8
teacher, side by side in one run (`benchmarks/recipes/ov-sparse-amx.yaml`). The CPU plugin applies the setting only
with AMX, so the record says whether this CPU has it.

    python benchmarks/bench_ov_sparse.py --model <local MiniLM>        # CPU, 2 threads (about 5 minutes on 2 cores)

Writes benchmarks/results/ov-sparse-amx.json and docs/benchmarks/ov-sparse-amx.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_bench import REPO, parse_args, recipe_overrides, run_benchmark, throughput

from compress.environment import cpu_flags
from compress.result import StageResult

NAME = "ov-sparse-amx"
DENSE, SPARSE, DECOMPRESSED = "export:dense-int8", "export:sparse70-int8", "export:sparse70-int8-decompressed"


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    by_name = {s.name: s for s in stages}
    if not all(n in by_name for n in (DENSE, SPARSE, DECOMPRESSED)):
        return {"finished_stages": list(by_name)}
    summary: dict[str, Any] = {"cpu_has_amx": "amx_int8" in cpu_flags()}
    for batch in (1, 32):
        dense, sparse, decompressed = (throughput(by_name[n], batch) for n in (DENSE, SPARSE, DECOMPRESSED))
        summary[f"decompressed_vs_sparse_batch{batch}"] = round(decompressed / sparse, 2)
        summary[f"decompressed_vs_dense_batch{batch}"] = round(decompressed / dense, 2)
    summary["same_predictions"] = by_name[DECOMPRESSED].metrics == by_name[SPARSE].metrics
    summary["sparse_accuracy_drop_points"] = round(
        100 * (by_name["teacher"].metrics["accuracy"] - by_name[SPARSE].metrics["accuracy"]), 2
    )
    summary["target_decompression_faster_batch32"] = summary["decompressed_vs_sparse_batch32"] > 1.0
    return summary


def main() -> None:
    args = parse_args(__doc__)
    record = run_benchmark(
        NAME,
        REPO / "benchmarks" / "recipes" / f"{NAME}.yaml",
        args.output or Path(f"runs/bench-{NAME}"),
        summarize,
        recipe_overrides(args),
        title="OpenVINO sparse-weight decompression: MiniLM-L6 teacher at 70 % unstructured, INT8 (CPU)",
    )
    print(record["summary"])


if __name__ == "__main__":
    main()
