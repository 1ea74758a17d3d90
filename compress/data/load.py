"""Load one split of the user's dataset as canonical `TextData` (texts, optional pairs, integer labels).

Where the data can come from is described in `compress.data.readers`; how labels become ids in
`compress.data.labels`; how csv/tsv headers are detected in `compress.data.delimited`. The recipe's
`data.limit` / `data.train_limit` are not applied here: callers pass `limit` (and `sample_seed` for a seeded
sample of training rows) so every stage sees the same rows.

A source that serves every split the same rows (one file, a saved single Dataset) is split by `data.split_ratio`
when it is set: the split named `data.split` reads the held-out rows, every other split the rest
(`compress.data.holdout`); limits and samples then apply within that part. Row numbers in errors stay the file's.
Read for training (`training=True`) such a source needs `data.split_ratio`, else the model would be trained on
the rows it is evaluated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compress.config import DataSpec, Task
from compress.data.fields import setting
from compress.data.holdout import hold_out
from compress.data.labels import LabelColumn, ReferenceLabels, encode_labels, label_key
from compress.data.readers import RawSplit, read_split, same_file
from compress.data.text_data import TextData
from compress.errors import DataError, clip, shown
from compress.tasks import get_task

SHOWN_ROWS = 5


def load_text_data(
    spec: DataSpec,
    split: str,
    *,
    task: Task = "text-classification",
    limit: int | None = None,
    sample_seed: int | None = None,
    base_dir: Path | None = None,
    where: str = "data",
    reference: ReferenceLabels | None = None,
    training: bool = False,
) -> TextData:
    """Read `split` of `spec`: at most `limit` rows, the first ones or a sample seeded by `sample_seed`.

    `base_dir` resolves relative paths (the recipe's folder); `where` prefixes the YAML paths in errors. The
    task's adapter names the columns read (`causal-lm`: only the text). A single file (not a split mapping)
    serves every split, or its part under `data.split_ratio`. `reference`: label names another split decided,
    which this one must keep to; `training`: the rows are for a training step, so they must not be the
    evaluation rows.
    """
    columns = get_task(task).data_columns(spec, where)
    if training:
        _check_training_split(spec, split, base_dir, where)
    raw = read_split(spec, split, list(columns.values()), base_dir, where)
    for role, name in columns.items():
        _check_column(raw, name, f"{where}.{role}", where)
    if len(raw.dataset) == 0:
        raise DataError(
            f"{raw.source}: split '{split}' has no rows",
            where=raw.field,
            fix="point at a file with data rows (a header alone is not enough)",
        )
    if training and raw.shared and spec.split_ratio is None:
        raise DataError(
            f"{raw.source} serves every split (one file, not a mapping of split files), so a training step would "
            "train on the very rows every stage is evaluated on",
            where=raw.field,
            fix=f"hold part of it out for evaluation with `{where}.split_ratio: 0.2`, or give one file per split: "
            f"`{where}.path: {{{spec.train_split}: <train file>, {spec.split}: <evaluation file>}}`",
        )
    part, note = _part(raw, spec, split, spec.label if "label" in columns else None, where)
    rows = _pick_rows(part, limit, sample_seed)
    chosen = raw.dataset.select(rows) if len(rows) < len(raw.dataset) else raw.dataset
    texts = _text_column(list(chosen[spec.text]), rows, raw.source, spec.text, f"{where}.text")
    pairs = None
    if "text_pair" in columns:
        pairs = _text_column(list(chosen[spec.text_pair]), rows, raw.source, spec.text_pair, f"{where}.text_pair")
    labels = label_names = None
    if "label" in columns:
        feature = raw.dataset.features.get(spec.label)
        class_names = list(feature.names) if hasattr(feature, "names") else None
        labels, label_names = encode_labels(
            list(raw.dataset[spec.label]),
            rows,
            column=LabelColumn(raw.source, spec.label, f"{where}.label", raw.field),
            label_names=spec.label_names,
            class_names=class_names,
            reference=reference,
        )
    return TextData(texts, pairs, labels, label_names, source=raw.source, split=split, note=note)


def _check_training_split(spec: DataSpec, split: str, base_dir: Path | None, where: str) -> None:
    """Refuse training rows that are the evaluation rows under another name (before reading any file)."""
    if split == spec.split and spec.split_ratio is None:
        raise DataError(
            f"{where}.train_split and {where}.split are both '{clip(split)}', so a training step would train on the "
            "rows every stage is evaluated on",
            where=f"{where}.train_split",
            fix=f"set {where}.train_split to another split, or hold rows out with `{where}.split_ratio: 0.2`",
        )
    if same_file(spec, split, base_dir, where):
        raise DataError(
            f"{where}.path.{clip(split)} and {where}.path.{clip(spec.split)} name the same file, so a training step "
            "would train on the rows every stage is evaluated on",
            where=f"{where}.path.{split}",
            fix=f"give separate train and evaluation files, or one file under `{where}.path` with "
            f"`{where}.split_ratio: 0.2`",
        )


def _part(raw: RawSplit, spec: DataSpec, split: str, label: str | None, where: str) -> tuple[list[int], str]:
    """The rows `split` reads: all of them, or its part of a single file split by `data.split_ratio`."""
    total = len(raw.dataset)
    if spec.split_ratio is None:
        return list(range(total)), ""
    if not raw.shared:
        raise DataError(
            f"{raw.source} already has separate splits; {where}.split_ratio splits a single file",
            where=f"{where}.split_ratio",
            fix=f"remove {where}.split_ratio to use the splits as they are, or point {where}.path at one file",
        )
    keys = [label_key(value) for value in raw.dataset[label]] if label is not None else None
    held = hold_out(keys, total, spec.split_ratio, spec.seed)
    if not held.eval or not held.train:
        raise DataError(
            f"{raw.source}: {where}.split_ratio {spec.split_ratio} of {total} row(s) leaves "
            f"{len(held.train)} to train on and {len(held.eval)} to evaluate"
            + (" (each class keeps at least one training row)" if keys is not None else ""),
            where=f"{where}.split_ratio",
            fix=f"use a file with more rows (at least 2 in some class), or give one file per split in {where}.path",
        )
    stratified = ", stratified by label" if keys is not None else ""
    note = (
        f"{raw.source}: {where}.split_ratio {spec.split_ratio} holds out {len(held.eval)} of {total} rows to "
        f"evaluate and leaves {len(held.train)} to train on (seed {spec.seed}{stratified})"
    )
    return (held.eval if split == spec.split else held.train), note


def _check_column(raw: RawSplit, name: str, field: str, where: str) -> None:
    existing = raw.dataset.column_names
    if name in existing:
        return
    note = f" ({raw.note})" if raw.note else ""
    raise DataError(
        f"{raw.source}: no column {shown(name)}; columns: {clip(str(existing))}{note}",
        where=field,
        fix=f"set {setting(field)} to one of those columns, or name the columns of a headerless file, in file "
        f"order, with {setting(f'{where}.columns')}",
    )


def _pick_rows(candidates: list[int], limit: int | None, seed: int | None) -> list[int]:
    if limit is None or limit >= len(candidates):
        return candidates
    if seed is None:
        return candidates[:limit]
    # sorted so the sample keeps file order; which rows are picked depends only on seed, limit and size
    picked = np.random.default_rng(seed).choice(len(candidates), size=limit, replace=False).tolist()
    return [candidates[i] for i in sorted(picked)]


def _text_column(values: Sequence[object], rows: list[int], source: str, column: str, field: str) -> list[str]:
    missing = [row for row, value in zip(rows, values, strict=True) if value is None]
    if missing:
        shown = ", ".join(str(row + 1) for row in missing[:SHOWN_ROWS])
        raise DataError(
            f"{source}: column '{column}' is empty (null) in {len(missing)} row(s): row {shown} "
            "(rows count from 1, header excluded)",
            where=field,
            fix="fill in or remove those rows",
        )
    return [value if isinstance(value, str) else str(value) for value in values]
