"""Structured pruning one-shot, weight-based against activation-based importance, each pair from the same source:
the flagship's MiniLM-L6 teacher on SST-2 (`benchmarks/recipes/prune-structured-importance.yaml`), or SmolLM2-135M
on a WikiText-2 slice (`--llm`: `benchmarks/recipes/prune-structured-llm.yaml`).

    python benchmarks/bench_structured_importance.py [--output RUN]     # a flagship run folder serves the teacher
    python benchmarks/bench_structured_importance.py --llm --model <GGUF folder>

Writes benchmarks/results/prune-structured-importance[-llm].json and its docs/benchmarks page.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recipe_bench import REPO, parse_args, recipe_overrides, run_benchmark

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
    return {
        "metric": metric,
        "reference": reference.name if reference else None,
        "reference_metric": reference.metrics.get(metric) if reference else None,
        "settings": pairs,
        "activations_better_everywhere": bool(pairs) and all(p["gain"] > 0 for p in pairs.values()),
    }


def add_llm_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", action="store_true", help="SmolLM2-135M on WikiText-2 instead of MiniLM on SST-2")


def main() -> None:
    args = parse_args(__doc__, extra=add_llm_option)
    name = "prune-structured-importance" + ("-llm" if args.llm else "")
    recipe = REPO / "benchmarks" / "recipes" / ("prune-structured-llm.yaml" if args.llm else f"{name}.yaml")
    title = "Structured pruning, weight- vs activation-based importance, one-shot: " + (
        "SmolLM2-135M, WikiText-2 (first 300 test rows)" if args.llm else "MiniLM-L6 teacher, SST-2 dev"
    )
    record = run_benchmark(
        name, recipe, args.output or Path(f"runs/bench-{name}"), summarize, recipe_overrides(args), title=title
    )
    print(record["summary"])


if __name__ == "__main__":
    main()
