"""The parts of a RunReport the runner assembles beside the stage results: the resolved recipe, the dataset
summary, per-class classification figures and the machine's load.

Everything here is computed from what a run already has on disk or in memory (the recipe, the data provider's
splits, each stage's outputs.npy), so a fully cached re-run rebuilds the same report without re-running a stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compress.config import DataSpec
from compress.errors import ConfigError
from compress.io import user_path
from compress.result import (
    ClassFigures,
    ClassificationReport,
    DatasetSummary,
    MachineLoad,
    StageClassification,
)

if TYPE_CHECKING:
    from compress.recipe import Recipe

log = logging.getLogger("compress")


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as run, in the shape of its YAML: every section with its defaults filled in, steps and exports
    as `{name: config}`, local data paths made absolute (a reader of the report does not know the recipe's folder)
    and the primary metric the one the task used.

    `Recipe.from_dict` reads it back, except for a config whose validation depends on which fields were written
    (bitsandbytes refuses its 4-bit fields, even at their defaults, in int8 mode).
    """
    from compress.tasks import get_task

    data = recipe.data.model_dump(mode="json")
    data["path"] = _absolute_paths(recipe.data.path, recipe.base_dir)
    evaluate = recipe.evaluate.model_dump(mode="json")
    # An unset `metric` means the task's default (causal LM: perplexity), but once written it is taken as given.
    evaluate["metric"] = get_task(recipe.model.task).primary_metric(recipe.evaluate)
    return {
        "name": recipe.name,
        "description": recipe.description,
        "model": recipe.model.model_dump(mode="json"),
        "data": data,
        "evaluate": evaluate,
        "steps": [{step.name: step.config.model_dump(mode="json")} for step in recipe.steps],
        "exports": [{exporter.name: exporter.config.model_dump(mode="json")} for exporter in recipe.exports],
        "gates": recipe.gates.model_dump(mode="json"),
        "seed": recipe.seed,
    }


def _absolute_paths(path: str | dict[str, str], base_dir: Path) -> str | dict[str, str]:
    def one(text: str) -> str:
        try:  # resolved as the data readers resolve it
            candidate = user_path(text, "data.path", base_dir)
            found = candidate.exists()
        except (ConfigError, OSError, ValueError):  # a name no filesystem holds: the data layer reports it
            found = False
        return str(candidate.resolve()) if found else text  # not a local file: a hub dataset name

    return {split: one(p) for split, p in path.items()} if isinstance(path, dict) else one(path)


def dataset_summary(spec: DataSpec, base_dir: Path, *, eval_rows: int | None, train_rows: int | None) -> DatasetSummary:
    return DatasetSummary(
        path=_absolute_paths(spec.path, base_dir),
        name=spec.name,
        text=spec.text,
        text_pair=spec.text_pair,
        label=spec.label,
        eval_split=spec.split,
        eval_rows=eval_rows,
        train_split=spec.train_split,
        train_rows=train_rows,
        calibration_split=spec.calibration_split,
    )


def classification_report(
    outputs: Mapping[str, np.ndarray], labels: Sequence[int], label_names: list[str] | None
) -> ClassificationReport | None:
    """Per-class precision, recall, F1 and the confusion matrix of every stage whose outputs are logits
    (rows, classes) for these labels; None when no stage has such outputs (e.g. a causal LM)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    targets = np.asarray(labels, dtype=np.int64)
    usable = {
        name: logits
        for name, logits in outputs.items()
        if logits.ndim == 2 and len(logits) == len(targets) and logits.shape[1] > 0
    }
    if not usable or not len(targets):
        return None
    # Every class a head or the data knows: a stage with a wider head, or a label no row predicts, still gets a row.
    classes = max(len(label_names or []), max(x.shape[1] for x in usable.values()), int(targets.max()) + 1)
    names = [*(label_names or [])][:classes]
    names += [str(i) for i in range(len(names), classes)]
    ids = list(range(classes))
    stages = []
    for name, logits in usable.items():
        predicted = logits.argmax(-1)
        precision, recall, f1, support = precision_recall_fscore_support(
            targets, predicted, labels=ids, zero_division=0
        )
        per_class = [
            ClassFigures(label=names[i], precision=float(p), recall=float(r), f1=float(f), support=int(s))
            for i, (p, r, f, s) in enumerate(zip(precision, recall, f1, support, strict=True))
        ]
        matrix = confusion_matrix(targets, predicted, labels=ids).tolist()
        stages.append(StageClassification(stage=name, per_class=per_class, confusion_matrix=matrix))
    return ClassificationReport(label_names=names, stages=stages)


def load_1m() -> float | None:
    """The 1-minute load average; None where the OS has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def is_contended(cpu_count: int, threads: int, start: float | None, end: float | None) -> bool:
    """Whether other work competed for this run's cores, judged by the load average where the OS does not tell
    what others used while a stage was timed (`compress.evaluate.cpu_competition`).

    The load average counts runnable threads, this run's own among them once it works. At the start it is the
    others' alone: more than the cores the run leaves free means they spill onto its cores. Later it includes the
    run's `threads`, so only a load above every core says the same.
    """
    free = max(cpu_count - threads, 0)
    return (start is not None and start > free) or (end is not None and end > cpu_count)


def machine_load(
    cpu_count: int, threads: int, start: float | None, end: float | None, *, contended: bool
) -> MachineLoad:
    return MachineLoad(cpu_count=cpu_count, threads=threads, load_1m_start=start, load_1m_end=end, contended=contended)
