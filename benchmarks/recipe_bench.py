"""Run a recipe as a benchmark: every row comes from one run of the recipe (side by side, same inputs).

Writes `benchmarks/results/<name>.json` (command, hardware, versions, rows, summary) and a Markdown table
under docs/benchmarks/. The benchmark scripts only choose the recipe and the summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from compress.environment import environment
from compress.io import atomic_write_text
from compress.recipe import Recipe
from compress.result import StageResult

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


def stage_row(stage: StageResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "stage": stage.name,
        "kind": stage.kind,
        "status": stage.status,
        "runtime": stage.runtime,
        "device": stage.device,
        "accuracy": stage.metrics.get("accuracy"),
        "primary_metric": stage.primary_metric,
        "primary_value": stage.metrics.get(stage.primary_metric or "accuracy"),
        "size_mb": stage.size_mb,
        "peak_memory_mb": stage.peak_memory_mb,
        "max_abs_diff": stage.max_abs_diff,
        "prediction_agreement": stage.prediction_agreement,
        "message": stage.message,
    }
    for batch, stats in stage.latency.items():
        suffix = f"_batch{batch}"
        row |= {
            f"p50_ms{suffix}": stats.p50_ms,
            f"p95_ms{suffix}": stats.p95_ms,
            f"p99_ms{suffix}": stats.p99_ms,
            f"throughput_per_s{suffix}": stats.throughput_per_s,
        }
    return row


def primary(row: dict[str, Any]) -> str:
    """A row's primary metric: accuracy as a percentage, any other metric by name and value."""
    if row.get("accuracy") is not None and row.get("primary_metric") in (None, "accuracy"):
        return f"{100 * row['accuracy']:.2f} %"
    value = row.get("primary_value")
    return "—" if value is None else f"{row['primary_metric']} {value:,.2f}"


def markdown_table(rows: list[dict[str, Any]], batch_sizes: list[int]) -> str:
    only_accuracy = all(r.get("primary_metric") in (None, "accuracy") for r in rows)
    head = ["stage", "runtime", "accuracy" if only_accuracy else "metric"]
    for b in batch_sizes:
        head += [f"b{b} P50 ms", f"b{b} P95 ms", f"b{b} P99 ms", f"b{b} samples/s"]
    head += ["size MB", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(value: Any, digits: int = 1) -> str:
        return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    for row in rows:
        cells = [
            row["stage"],
            f"{row['runtime'] or '—'}/{row['device'] or '—'}",
            primary(row),
        ]
        for b in batch_sizes:
            cells += [
                fmt(row.get(f"p50_ms_batch{b}"), 2),
                fmt(row.get(f"p95_ms_batch{b}"), 2),
                fmt(row.get(f"p99_ms_batch{b}"), 2),
                fmt(row.get(f"throughput_per_s_batch{b}")),
            ]
        cells += [fmt(row["size_mb"]), row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(
    description: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The options every recipe benchmark takes: where PyTorch stages run, the data and model, the output."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="train and evaluate PyTorch stages on CUDA")
    parser.add_argument("--train-limit", type=int, default=None, help="override data.train_limit (0 = all rows)")
    parser.add_argument("--model", default=None, help="override model.source (e.g. a local copy)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="PATH=YAML",
        help="override any recipe field, as `compress run --set` does (e.g. steps.1.distill.epochs=4)",
    )  # fmt: skip
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `--set`-style recipe overrides those options stand for."""
    overrides: dict[str, Any] = {}
    if args.gpu:
        overrides |= {"evaluate.device": "cuda", "evaluate.threads": None}
    if args.train_limit is not None:
        overrides["data.train_limit"] = args.train_limit or None
    if args.model:
        overrides["model.source"] = args.model
    for setting in getattr(args, "settings", []):
        path, _, value = setting.partition("=")
        overrides[path] = yaml.safe_load(value)
    return overrides


def run_benchmark(
    name: str,
    recipe_path: Path,
    output: Path,
    summarize: Callable[[list[StageResult]], dict[str, Any]],
    overrides: dict[str, Any] | None = None,
    title: str = "",
) -> dict[str, Any]:
    recipe = Recipe.from_yaml(recipe_path, overrides)
    result = recipe.run(output)
    rows = [stage_row(s) for s in result.stages]
    record: dict[str, Any] = {
        "name": name,
        "command": command_line(),
        "recipe": str(recipe_path.relative_to(REPO)) if recipe_path.is_relative_to(REPO) else str(recipe_path),
        "overrides": overrides or {},
        **machine(),
        "threads": recipe.evaluate.threads,
        "eval_samples": result.stages[0].eval_samples,
        "rows": rows,
        "summary": summarize(result.stages),
        "report": str(output / "report.md"),
        "train_rows": result.report.dataset.train_rows if result.report.dataset else None,
    }
    write_record(record, recipe.evaluate.batch_sizes, title)
    return record


HARDWARE = ("cpu", "cpu_flags", "cpu_count", "cuda", "platform")


def command_line() -> str:
    """How this benchmark was invoked, as one shell line."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def machine(found: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """A record's `hardware` and `versions`: a machine's identity and its libraries (default: this one's)."""
    found = found or environment()
    return {
        "hardware": {k: found[k] for k in HARDWARE},
        "versions": {k: v for k, v in found.items() if k not in (*HARDWARE, "torch_threads")},
    }


def read_report(run_dir: Path) -> dict[str, Any]:
    """A run folder's report.json, or an exit naming the folder and what to copy."""
    path = run_dir / "report.json"
    if not path.is_file():
        sys.exit(f"{run_dir} holds no report.json: give a run folder (copy its report.json with the stage folders)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_record(path: Path, *fields: str) -> dict[str, Any]:
    """A results record (`benchmarks/results/<name>.json`) with `fields`, or an exit naming the file and the fix."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        sys.exit(f"{path}: not a readable results record ({exc}); give a results/<name>.json a benchmark wrote")
    missing = [f for f in fields if not isinstance(record, dict) or f not in record]
    if missing:
        sys.exit(f"{path}: no {', '.join(missing)}: give the record this benchmark wrote, not another file")
    return record


def stage_folder(run_dir: Path, artifact: str | None) -> Path:
    """Where a stage's recorded artifact lies in this copy of its run folder (made here or on another machine)."""
    recorded = Path(artifact or "")
    return run_dir / "stages" / recorded.parent.name / recorded.name


def record_from_report(
    name: str, run_dir: Path, summarize: Callable[[list[StageResult]], dict[str, Any]]
) -> dict[str, Any]:
    """A benchmark record from a run folder's report.json alone: for a run whose benchmark process was stopped
    (a machine's time ran out) after some stages finished. Its machine is the one that ran it; stages that did
    not finish are absent from the rows, and `finished_stages` says which did."""
    report = read_report(run_dir)
    stages = [StageResult.model_validate(s) for s in report["stages"]]
    return {
        "name": name,
        "command": command_line(),
        "recipe": report["recipe"],
        **machine(report["environment"]),
        "threads": report["resolved_recipe"]["evaluate"].get("threads"),
        "eval_samples": stages[0].eval_samples,
        "rows": [stage_row(s) for s in stages],
        "summary": summarize(stages),
        "report": str(run_dir / "report.md"),
        "finished_stages": [s.name for s in stages],
        "run_wall_seconds": report.get("wall_duration_s"),
    }


def write_record(record: dict[str, Any], batch_sizes: list[int], title: str = "") -> None:
    """`benchmarks/results/<name>.json` and its Markdown table under docs/benchmarks/."""
    name, rows = record["name"], record["rows"]
    atomic_write_text(ROOT / "results" / f"{name}.json", json.dumps(record, indent=2) + "\n")
    doc = REPO / "docs" / "benchmarks" / f"{name}.md"
    body = [
        f"# {title or name}\n",
        f"Command: `{record['command']}`  ",
        f"Hardware: {record['hardware']['cpu']} ({record['hardware']['cpu_count']} cores, flags "
        f"{', '.join(record['hardware']['cpu_flags']) or 'none'}), GPU: {record['hardware']['cuda'] or 'none'}, "
        f"threads: {record['threads']}, samples: {record['eval_samples']}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}\n",
        markdown_table(rows, batch_sizes),
        "\n## Summary\n",
        "\n".join(f"- `{k}`: {v}" for k, v in record["summary"].items()),
        f"\nRaw figures: `benchmarks/results/{name}.json`; full per-stage report: `{record['report']}`.\n",
    ]
    atomic_write_text(doc, "\n".join(body))


def throughput(stage: StageResult, batch: int) -> float | None:
    stats = stage.latency.get(str(batch))
    return stats.throughput_per_s if stats else None
