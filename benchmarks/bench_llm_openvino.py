"""OpenVINO INT4 beside the PyTorch W4 stage: SmolLM2-135M as PyTorch FP32 (baseline) and RTN W4 g64, and as
OpenVINO FP32 and NNCF INT4 (asymmetric, group 64, ratio 1.0) IRs, every stage scored by WikiText-2 perplexity in
its own runtime on the CPU, in one run (`benchmarks/recipes/llm-openvino-cpu.yaml`).

    python benchmarks/bench_llm_openvino.py                # the recipe's slice of WikiText-2 test
    python benchmarks/bench_llm_openvino.py --rows 0       # the whole test set (hours on 2 cores)

Writes benchmarks/results/llm-openvino-cpu.json and docs/benchmarks/llm-openvino-cpu.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

from recipe_bench import REPO, ROOT, recipe_overrides, run_benchmark

from compress.io import atomic_write_text
from compress.result import StageResult

NAME = "llm-openvino-cpu"
RECIPE = REPO / "benchmarks" / "recipes" / f"{NAME}.yaml"
# Stage names in the recipe → the summary's keys.
KEYS = {
    "baseline": "baseline",
    "rtn": "rtn",
    "export:openvino-fp32": "openvino_fp32",
    "export:openvino-int4": "openvino_int4",
}


# What the table's columns cannot say; the figures themselves are all from the run.
NOTES = """\
- s / window: one 2048-token forward pass at batch 1 (prefill, no KV cache). PyTorch's excludes the LM head (its
  runtime hands the reduction the final hidden states and the head, applied in chunks outside the clock);
  OpenVINO's includes it, since the IR returns logits. The machine's 2 cores are shared, so times move by tens of
  percent between runs; perplexities do not.
- make s: the step (RTN) or the export (trace to an IR, plus NNCF for INT4); peak RSS is the whole process's,
  which also holds the PyTorch baseline while the exports run.
- NNCF (`int4_asym`, `group_size: 64`, `ratio: 1.0`, defaults otherwise: `all_layers` off, backup mode
  `INT8_ASYM`) put 210 of the 211 weights (every Linear of the 30 layers) in INT4 and the tied embedding / LM head
  (one shared constant, 21 % of the parameters) in INT8 asymmetric per output channel (its log of the recorded
  run); RTN keeps that pair in float32 (`ignore: [lm_head]`).
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="override data.limit: WikiText-2 test rows (0 = all)")
    parser.add_argument("--model", default=None, help="override model.source (e.g. a folder with the GGUF)")
    parser.add_argument("--output", type=Path, default=Path(f"runs/bench-{NAME}"))
    # recipe_overrides reads these; the OpenVINO stages run on the CPU, so the PyTorch ones do too.
    parser.set_defaults(gpu=False, train_limit=None)
    return parser.parse_args()


def weights(stage: StageResult) -> str:
    config = stage.config
    if stage.kind == "baseline":
        return "fp32 (dequantized Q4_1 GGUF)"
    if stage.kind == "step":
        scheme = "sym" if config.get("symmetric") else "asym"
        # The embedding is no Linear, so only an ignored lm_head keeps the tied pair in float.
        kept = ", embedding/lm_head fp32" if "lm_head" in config.get("ignore", []) else ""
        return f"int{config.get('bits')} g{config.get('group_size')} {scheme}{kept}"
    mode = config.get("weight_compression", "none")
    if mode == "none":
        return "fp32"
    return f"{mode} g{config.get('group_size')} ratio {config.get('ratio')}, embedding/lm_head int8"


def stage_row(stage: StageResult, baseline_ppl: float | None) -> dict[str, Any]:
    ppl = stage.metrics.get("perplexity")
    window = stage.latency.get("1")
    return {
        "stage": stage.name,
        "runtime": stage.runtime,
        "weights": weights(stage),
        "perplexity": ppl,
        "ppl_vs_baseline": round(ppl / baseline_ppl - 1, 4) if ppl and baseline_ppl else None,
        "windows": stage.eval_samples,
        "p50_s_per_window": window.p50_ms / 1000 if window else None,
        "tokens_per_s": stage.metrics.get("tokens_per_s"),
        "make_seconds": stage.duration_s if stage.kind != "baseline" else None,  # the step or the export
        "make_peak_memory_mb": stage.step_peak_memory_mb,  # host RSS while the step / export ran
        "eval_peak_memory_mb": stage.peak_memory_mb,  # host RSS while the stage was evaluated
        "eval_seconds": stage.eval_duration_s,
        "size_mb": stage.size_mb,
        "max_abs_nll_diff": stage.max_abs_diff,  # largest change of a window's mean NLL vs. the baseline
        "status": stage.status,
        "message": stage.message,
    }


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    by_name = {s.name: s for s in stages}
    summary: dict[str, Any] = {}
    for name, key in KEYS.items():
        stage = by_name.get(name)
        ok = stage is not None and stage.status == "ok"
        summary[f"{key}_ppl"] = stage.metrics.get("perplexity") if ok else None
    summary["sizes_mb"] = {KEYS.get(s.name, s.name): s.size_mb for s in stages}
    windows = stages[0].eval_samples
    summary["windows"] = windows
    summary["scored_tokens"] = windows * 2047 if windows else None  # every token of a window but its first
    fp32, int4 = summary["openvino_fp32_ppl"], summary["openvino_int4_ppl"]
    base, rtn = summary["baseline_ppl"], summary["rtn_ppl"]
    summary["openvino_fp32_vs_baseline"] = round(fp32 / base - 1, 5) if fp32 and base else None
    summary["openvino_int4_vs_rtn"] = round(int4 / rtn - 1, 4) if int4 and rtn else None
    summary["stage_rows"] = [stage_row(s, base) for s in stages]
    return summary


def finish(record: dict[str, Any], wall_s: float, peak_rss_mb: float) -> None:
    """The results file with one row per stage, and the table in docs/benchmarks."""
    record["stage_rows_generic"] = record["rows"]
    record["rows"] = record["summary"].pop("stage_rows")
    record["wall_seconds"] = round(wall_s, 1)
    record["process_peak_rss_mb"] = round(peak_rss_mb, 1)
    atomic_write_text(ROOT / "results" / f"{NAME}.json", json.dumps(record, indent=2) + "\n")

    def fmt(value: float | None, digits: int = 1) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    head = "| stage | runtime | weights | perplexity | vs baseline | s / window (P50) | tokens/s | make s "
    head += "| peak RSS MB make / eval | size MB |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in record["rows"]:
        change = row["ppl_vs_baseline"]
        memory = f"{fmt(row['make_peak_memory_mb'], 0)} / {fmt(row['eval_peak_memory_mb'], 0)}"
        lines.append(
            f"| {row['stage']} | {row['runtime'] or '—'} | {row['weights']} | {fmt(row['perplexity'], 3)} "
            f"| {'—' if change is None else f'{100 * change:+.2f} %'} | {fmt(row['p50_s_per_window'], 2)} "
            f"| {fmt(row['tokens_per_s'])} | {fmt(row['make_seconds'])} | {memory} | {fmt(row['size_mb'])} |"
        )
    failed = [f"- {row['stage']}: {row['status']}: {row['message']}" for row in record["rows"] if row["message"]]
    hardware, summary = record["hardware"], record["summary"]
    body = [
        "# OpenVINO INT4 beside PyTorch W4: SmolLM2-135M, WikiText-2 perplexity on the CPU\n",
        f"Command: `{record['command']}`  ",
        f"Recipe: `{record['recipe']}`, overrides: {record['overrides'] or 'none'}  ",
        f"Hardware: {hardware['cpu']} ({hardware['cpu_count']} cores, flags {', '.join(hardware['cpu_flags'])}), "
        f"threads: {record['threads']}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}  ",
        f"Evaluation: the first {summary['windows']} non-overlapping 2048-token windows of WikiText-2 test "
        f"({summary['scored_tokens']:,} scored tokens), the same windows for every stage, batch 1  ",
        f"Wall time: {wall_s / 60:.1f} min; process peak RSS: {peak_rss_mb:,.0f} MB\n",
        "\n".join(lines),
        *(["\n" + "\n".join(failed)] if failed else []),
        "\n" + NOTES,
        "\n## Summary\n",
        "\n".join(f"- `{k}`: {v}" for k, v in summary.items()),
        f"\nRaw figures: `benchmarks/results/{NAME}.json`; per-stage report: `{record['report']}`.\n",
    ]
    atomic_write_text(REPO / "docs" / "benchmarks" / f"{NAME}.md", "\n".join(body))


def main() -> None:
    args = parse_args()
    overrides = recipe_overrides(args)
    if args.rows is not None:
        overrides["data.limit"] = args.rows or None
    began = time.perf_counter()
    record = run_benchmark(NAME, RECIPE, args.output, summarize, overrides, title="OpenVINO INT4 beside PyTorch W4")
    wall_s = time.perf_counter() - began
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: the whole run's peak
    finish(record, wall_s, peak_rss_mb)
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
