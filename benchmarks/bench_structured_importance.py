"""Structured pruning one-shot, weight-based against activation-based importance, each pair from the same source:
the flagship's MiniLM-L6 teacher on SST-2 (`benchmarks/recipes/prune-structured-importance.yaml`), or SmolLM2-135M
on a WikiText-2 slice (`--llm`: `benchmarks/recipes/prune-structured-llm.yaml`); or MiniLM with recovery
distillation after pruning (`--recovery`: `benchmarks/recipes/prune-structured-importance-recovery.yaml`).

    python benchmarks/bench_structured_importance.py [--output RUN]     # a flagship run folder serves the teacher
    python benchmarks/bench_structured_importance.py --llm --model <GGUF folder>
    python benchmarks/bench_structured_importance.py --recovery [--output RUN]   # + recovery distillation (~40 min)

Writes benchmarks/results/prune-structured-importance[-llm|-recovery].json and its docs/benchmarks page.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recipe_bench import REPO, parse_args, recipe_overrides, run_benchmark, throughput

from compress.result import StageResult


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    """Per setting (the label after `weights-` / `activations-`): both metrics and the change importance made."""
    ok = {s.name: s for s in stages if s.status == "ok"}
    metric = stages[-1].primary_metric or "accuracy"
    pairs: dict[str, Any] = {}
    for name, stage in ok.items():
        if not name.startswith("weights-") or f"activations-{name[8:]}" not in ok:
            continue
        by_weights, by_activations = stage.metrics[metric], ok[f"activations-{name[8:]}"].metrics[metric]
        pairs[name[8:]] = {
            "weights": by_weights,
            "activations": by_activations,
            # in the metric's better direction: positive = activations better
            "gain": round((by_activations - by_weights) * (1 if stage.higher_is_better else -1), 4),
            "parameters": stage.num_parameters,
        }
    reference = ok.get("teacher", ok.get("baseline"))  # what the pairs were pruned from
    exported = ok.get("export:teacher-ort-fp32")  # --recovery: every model also in ONNX Runtime FP32
    for setting, pair in pairs.items():
        for importance in ("weights", "activations"):
            student = ok.get(f"export:{importance}-{setting}-ort-fp32")
            if exported is not None and student is not None and reference is not None:
                pair[f"{importance}_accuracy_ratio"] = round(student.metrics[metric] / reference.metrics[metric], 4)
                pair[f"{importance}_ort_speedup_batch32"] = round(throughput(student, 32) / throughput(exported, 32), 2)
    return {
        "metric": metric,
        "reference": reference.name if reference else None,
        "reference_metric": reference.metrics.get(metric) if reference else None,
        "settings": pairs,
        "activations_better_everywhere": bool(pairs) and all(p["gain"] > 0 for p in pairs.values()),
    }


VARIANTS = {  # option → (results name, recipe file, title)
    "one_shot": ("prune-structured-importance", "prune-structured-importance.yaml",
                 "one-shot: MiniLM-L6 teacher, SST-2 dev"),
    "llm": ("prune-structured-importance-llm", "prune-structured-llm.yaml",
            "one-shot: SmolLM2-135M, WikiText-2 (first 300 test rows)"),
    "recovery": ("prune-structured-importance-recovery", "prune-structured-importance-recovery.yaml",
                 "with recovery distillation: MiniLM-L6 teacher, SST-2 dev, ONNX Runtime FP32"),
}  # fmt: skip


def add_variant_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--llm", action="store_true", help="SmolLM2-135M on WikiText-2 instead of MiniLM on SST-2")
    group.add_argument("--recovery", action="store_true", help="half the heads and neurons, then recovery distill")


def main() -> None:
    args = parse_args(__doc__, extra=add_variant_options)
    name, recipe_file, what = VARIANTS["llm" if args.llm else "recovery" if args.recovery else "one_shot"]
    recipe = REPO / "benchmarks" / "recipes" / recipe_file
    title = f"Structured pruning, weight- vs activation-based importance, {what}"
    record = run_benchmark(
        name, recipe, args.output or Path(f"runs/bench-{name}"), summarize, recipe_overrides(args), title=title
    )
    print(record["summary"])


if __name__ == "__main__":
    main()
