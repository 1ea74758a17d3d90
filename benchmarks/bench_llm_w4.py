"""LLM 4-bit benchmark: SmolLM2-135M → RTN / GPTQ / AWQ / AutoRound (native) beside llm-compressor's GPTQ and AWQ,
the auto-round package and bitsandbytes, every stage from the same baseline, saved (compressed-tensors, or
transformers' bitsandbytes layout), reloaded from disk and evaluated in one run
(`benchmarks/recipes/llm-w4-peers.yaml`).

    python benchmarks/bench_llm_w4.py --gpu        # the issue's protocol, on a CUDA GPU
    python benchmarks/bench_llm_w4.py              # CPU (slow: hours for GPTQ on 2 cores)

Writes benchmarks/results/llm-w4.json and docs/benchmarks/llm-w4.md (GPU), or llm-w4-cpu.* (CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipe_bench import REPO, ROOT, parse_args, recipe_overrides, run_benchmark

from compress.io import atomic_write_text
from compress.result import StageResult

METHODS = ("rtn", "gptq", "awq", "autoround")


def method_row(stage: StageResult) -> dict[str, Any]:
    config = stage.config
    return {
        "method": stage.step or "fp",
        "stage": stage.name,
        "backend": _backend(stage),
        "bits": config.get("bits", 4 if config.get("mode") in ("nf4", "fp4") else 8 if "mode" in config else None),
        "group_size": config.get("group_size"),
        "perplexity": stage.metrics.get("perplexity"),
        "quantize_seconds": stage.duration_s if stage.kind == "step" else None,
        "peak_memory_mb": stage.step_peak_memory_mb,  # host RSS while the step ran
        "peak_gpu_memory_mb": stage.step_peak_cuda_memory_mb,
        "eval_peak_memory_mb": stage.peak_memory_mb,
        "size_mb": stage.size_mb,
        "decode_tokens_per_s": stage.metrics.get("decode_tokens_per_s"),
        "p99_decode_ms": stage.metrics.get("decode_p99_ms"),
        "status": stage.status,
    }


def _backend(stage: StageResult) -> str | None:
    if stage.kind != "step":
        return None
    if stage.step == "bnb":
        return f"bitsandbytes {stage.config.get('mode')}"
    if stage.step == "cast":
        return str(stage.config.get("dtype"))
    return stage.config.get("backend", "native")


def summarize(stages: list[StageResult]) -> dict[str, Any]:
    by_method = {s.name: s for s in stages if s.kind == "step"}
    baseline = stages[0]
    summary: dict[str, Any] = {"baseline_ppl": baseline.metrics.get("perplexity")}
    for method in METHODS:
        stage = by_method.get(method)
        summary[f"{method}_ppl"] = stage.metrics.get("perplexity") if stage else None
        summary[f"{method}_seconds"] = round(stage.duration_s, 1) if stage else None
    summary["autoround_backend"] = "native"
    package = by_method.get("autoround-package")
    package_ok = package is not None and package.status == "ok"
    summary["autoround_package_ppl"] = package.metrics.get("perplexity") if package_ok else None
    summary["autoround_package_seconds"] = round(package.duration_s, 1) if package_ok else None
    for mode in ("nf4", "int8"):
        stage = by_method.get(f"bnb-{mode}")
        summary[f"bnb_{mode}_ppl"] = stage.metrics.get("perplexity") if stage and stage.status == "ok" else None
    fp16_mb = baseline.size_mb / 2 if baseline.size_mb else None  # the fp32 baseline's tensors at 2 bytes
    for name in ("gptq", "gptq-bf16"):
        stage = by_method.get(name)
        key = name.replace("-", "_")
        summary[f"{key}_size_share_of_fp16"] = (
            round(stage.size_mb / fp16_mb, 3) if stage and stage.size_mb and fp16_mb else None
        )
    for method in ("gptq", "awq"):
        stage = by_method.get(f"{method}-llmcompressor")
        ok = stage is not None and stage.status == "ok"
        summary[f"llmcompressor_{method}_ppl"] = stage.metrics.get("perplexity") if ok else None
        summary[f"llmcompressor_{method}_seconds"] = round(stage.duration_s, 1) if ok else None
    scored = {m: summary[f"{m}_ppl"] for m in METHODS if summary[f"{m}_ppl"] is not None}
    if scored:
        best = min(scored, key=scored.__getitem__)
        summary["best_method"], summary["best_ppl"] = best, scored[best]
    summary.update(_targets(summary))
    summary["method_rows"] = [method_row(s) for s in stages if s.kind != "export"]
    return summary


def _targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each None when a figure it needs is missing."""

    def below(a: float | None, b: float | None, factor: float = 1.0) -> bool | None:
        return None if a is None or b is None else a <= b * factor

    base, best = summary["baseline_ppl"], summary.get("best_ppl")
    lc_gptq = summary["llmcompressor_gptq_ppl"]
    gap_ratio = None
    if None not in (base, best, lc_gptq) and lc_gptq > base:
        gap_ratio = round((best - base) / (lc_gptq - base), 3)
    return {
        "target_gptq_below_rtn": below(summary["gptq_ppl"], summary["rtn_ppl"]),
        "target_awq_below_rtn": below(summary["awq_ppl"], summary["rtn_ppl"]),
        "target_gptq_at_or_below_llmcompressor": below(summary["gptq_ppl"], lc_gptq),
        "target_awq_at_or_below_llmcompressor": below(summary["awq_ppl"], summary["llmcompressor_awq_ppl"]),
        "target_gptq_half_llmcompressor_time": below(
            summary["gptq_seconds"], summary["llmcompressor_gptq_seconds"], 0.5
        ),
        "target_awq_half_llmcompressor_time": below(summary["awq_seconds"], summary["llmcompressor_awq_seconds"], 0.5),
        "best_gap_vs_llmcompressor_gptq_gap": gap_ratio,
        "target_best_gap_le_0.55": None if gap_ratio is None else gap_ratio <= 0.55,
        "target_autoround_half_package_time": below(
            summary["autoround_seconds"], summary["autoround_package_seconds"], 0.5
        ),
        "target_w4_checkpoint_le_30pct_fp16": below(summary["gptq_bf16_size_share_of_fp16"], 0.30),
    }


def finish(record: dict[str, Any], name: str) -> None:
    """One row per method in the results file (the stage rows stay as `stage_rows`) and a method table in docs."""
    record["stage_rows"] = record["rows"]
    record["rows"] = record["summary"].pop("method_rows")
    atomic_write_text(ROOT / "results" / f"{name}.json", json.dumps(record, indent=2) + "\n")
    head = "| stage | method | backend | perplexity | quantize s | step peak host / GPU MB | size MB | decode tok/s "
    head += "| P99 ms |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(value: float | None, digits: int = 1) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    for row in record["rows"]:
        memory = f"{fmt(row['peak_memory_mb'], 0)} / {fmt(row['peak_gpu_memory_mb'], 0)}"
        lines.append(
            f"| {row['stage']} | {row['method']} | {row['backend'] or '—'} | {fmt(row['perplexity'], 2)} "
            f"| {fmt(row['quantize_seconds'])} | {memory} | {fmt(row['size_mb'])} "
            f"| {fmt(row['decode_tokens_per_s'])} | {fmt(row['p99_decode_ms'])} |"
        )
    hardware = record["hardware"]
    body = [
        f"# {name}: SmolLM2-135M, 4-bit group 64, WikiText-2 perplexity\n",
        f"Command: `{record['command']}`  ",
        f"Hardware: {hardware['cpu']} ({hardware['cpu_count']} cores), GPU: {hardware['cuda'] or 'none'}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}\n",
        "\n".join(lines),
        "\n## Summary\n",
        "\n".join(f"- `{k}`: {v}" for k, v in record["summary"].items()),
        f"\nRaw figures: `benchmarks/results/{name}.json`.\n",
    ]
    atomic_write_text(REPO / "docs" / "benchmarks" / f"{name}.md", "\n".join(body))


def main() -> None:
    args = parse_args(__doc__)
    name = "llm-w4" + ("" if args.gpu else "-cpu")  # the protocol is the GPU run
    record = run_benchmark(
        name,
        REPO / "benchmarks" / "recipes" / "llm-w4-peers.yaml",
        args.output or Path(f"runs/bench-{name}"),
        summarize,
        recipe_overrides(args),
        title=f"LLM W4: SmolLM2-135M, RTN / GPTQ / AWQ / AutoRound / bitsandbytes ({'GPU' if args.gpu else 'CPU'})",
    )
    finish(record, name)
    print(record["summary"])


if __name__ == "__main__":
    main()
