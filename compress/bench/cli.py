"""`compress bench ARTIFACT_OR_RUN_DIR... --data FILE` and `compress bench merge A.json B.json ... -o DIR`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from compress.errors import ConfigError

MERGE = "merge"


def _numbers(text: str, option: str, kind: type = int) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option} '{text}' is not a comma-separated list of numbers", where=option,
                          fix=f"e.g. {option} 1,8,32") from None  # fmt: skip
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{option} needs positive numbers, got '{text}'", where=option, fix=f"e.g. {option} 1,8,32")
    return values


def bench_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Artifact folders or run folders (every stage's artifact); or `merge` then bench.json files."
        ),
    ],
    data: Annotated[str | None, typer.Option(help="Texts to measure on: a dataset file, folder or hub name.")] = None,
    text: Annotated[str, typer.Option(help="Text column.")] = "text",
    text_pair: Annotated[str | None, typer.Option(help="Second text column (sentence pairs).")] = None,
    split: Annotated[str, typer.Option(help="Split to read.")] = "validation",
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    lengths: Annotated[str, typer.Option(help="`real` (the texts as they are) or comma-separated token counts.")] = (
        "real"
    ),
    sla_p99_ms: Annotated[float | None, typer.Option(help="Find the largest-throughput batch within this P99.")] = None,
    max_batch: Annotated[int, typer.Option(help="The SLA search's largest batch.")] = 1024,
    served_rates: Annotated[str | None, typer.Option(help="Comma-separated request rates (per s) to serve.")] = None,
    window_ms: Annotated[float, typer.Option(help="Dynamic batching window for served load.")] = 10.0,
    requests: Annotated[int, typer.Option(help="Requests per served-load rate.")] = 2000,
    passes: Annotated[int, typer.Option(help="Timed passes per point (their spread is reported).")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed batches before each point.")] = 3,
    min_batches: Annotated[int, typer.Option(help="Timed batches per pass, at least.")] = 10,
    max_seconds: Annotated[float, typer.Option(help="Time budget per point.")] = 30.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (PyTorch and ONNX Runtime artifacts).")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runtime; default: theirs.")] = None,
    task: Annotated[str | None, typer.Option(help="Task of plain transformers folders (default: from config).")] = (
        None
    ),
    coreml_compute_units: Annotated[
        str | None, typer.Option(help="Core ML packages: comma-separated units, e.g. all,cpu_only,cpu_and_ne.")
    ] = None,
    machine_name: Annotated[str | None, typer.Option(help="Name of this machine in merged reports.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for bench.json/.md/.html.")] = Path(
        "runs/bench"
    ),
) -> None:
    """Measure artifacts on this machine (latency percentiles, throughput, memory, SLA batch, served load), or
    merge bench.json files from several machines into one report."""
    from compress.bench.merge import load_runs, write_report, write_results

    if paths and paths[0] == MERGE:
        if len(paths) < 2:
            raise ConfigError("merge needs bench.json files", where="merge", fix="compress bench merge a.json b.json")
        written = write_report(load_runs([Path(p) for p in paths[1:]]), output)
        print("\n".join(str(p) for p in written))
        return
    if data is None:
        raise ConfigError("--data is required to measure", where="--data", fix="e.g. --data evals/data/sst2/dev.tsv")
    from compress.bench.measure import REAL, Plan
    from compress.bench.run import BenchSpec, bench
    from compress.config import DataSpec
    from compress.data.provider import DataProvider
    from compress.tasks import get_task, task_names

    # Only the texts are measured: read them as a task that reads no labels does (no label column needed).
    unlabelled = next(name for name in task_names() if not get_task(name).reads_labels)
    texts = DataProvider(
        DataSpec(path=data, text=text, text_pair=text_pair, split=split, limit=limit, label=None),
        unlabelled,
        Path.cwd(),
        seed=0,
    ).eval
    spec = BenchSpec(
        batch_sizes=_numbers(batch_sizes, "--batch-sizes"),
        lengths=[REAL] if lengths == REAL else [str(n) for n in _numbers(lengths, "--lengths")],
        plan=Plan(passes=passes, warmup=warmup, min_batches=min_batches, max_seconds=max_seconds),
        sla_p99_ms=sla_p99_ms,
        max_batch=max_batch,
        served_rates=_numbers(served_rates, "--served-rates", float) if served_rates else [],
        window_ms=window_ms,
        served_requests=requests,
        device=device,
        threads=threads,
        task=task,
        coreml_compute_units=[u.strip() for u in coreml_compute_units.split(",")] if coreml_compute_units else [],
    )
    command = shlex.join(["compress", "bench", *sys.argv[2:]]) if len(sys.argv) > 2 else "compress bench"
    # bench.json is rewritten after every artifact: a bench stopped midway (a time limit, a crash) keeps what it
    # measured, and says in `not_measured` what it did not reach.
    results = bench([Path(p) for p in paths], texts, spec, command=command, machine_name=machine_name,
                    measured=lambda so_far: write_results(so_far, output))  # fmt: skip
    print("\n".join(str(p) for p in write_report([results], output)))
