"""Load one split of the user's dataset as canonical `TextData` (texts, optional pairs, integer labels).

Where the data can come from is described in `compress.data.readers`; how labels become ids in
`compress.data.labels`; how csv/tsv headers are detected in `compress.data.delimited`. The recipe's
`data.limit` / `data.train_limit` are not applied here: callers pass `limit` (and `sample_seed` for a seeded
sample of training rows) so every stage sees the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compress.config import DataSpec, Task
from compress.data.labels import LabelColumn, encode_labels
from compress.data.readers import RawSplit, read_split
from compress.data.text_data import TextData
from compress.errors import DataError
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
) -> TextData:
    """Read `split` of `spec`: at most `limit` rows, the first ones or a sample seeded by `sample_seed`.

    `base_dir` resolves relative paths (the recipe's folder); `where` prefixes the YAML paths in errors. The
    task's adapter names the columns read (`causal-lm`: only the text). A single file (not a split mapping)
    serves every split.
    """
    columns = get_task(task).data_columns(spec, where)
    raw = read_split(spec, split, list(columns.values()), base_dir, where)
    for role, name in columns.items():
        _check_column(raw, name, f"{where}.{role}", where)
    if len(raw.dataset) == 0:
        raise DataError(
            f"{raw.source}: split '{split}' has no rows",
            where=f"{where}.path",
            fix="point at a file with data rows (a header alone is not enough)",
        )
    rows = _pick_rows(len(raw.dataset), limit, sample_seed)
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
            column=LabelColumn(raw.source, spec.label, f"{where}.label"),
            label_names=spec.label_names,
            class_names=class_names,
        )
    return TextData(texts, pairs, labels, label_names, source=raw.source, split=split)


def _check_column(raw: RawSplit, name: str, field: str, where: str) -> None:
    existing = raw.dataset.column_names
    if name in existing:
        return
    note = f" ({raw.note})" if raw.note else ""
    raise DataError(
        f"{raw.source}: no column '{name}'; columns: {existing}{note}",
        where=field,
        fix=f"set {field} to one of {existing}, or name headerless columns with {where}.columns",
    )


def _pick_rows(total: int, limit: int | None, seed: int | None) -> list[int]:
    if limit is None or limit >= total:
        return list(range(total))
    if seed is None:
        return list(range(limit))
    # sorted so the sample keeps file order; which rows are picked depends only on seed, limit and size
    return sorted(np.random.default_rng(seed).choice(total, size=limit, replace=False).tolist())


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
