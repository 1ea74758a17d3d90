"""Turn a label column of any type into integer ids and label names.

The mapping is decided from the whole split (not just the rows kept by a limit), in this order:
  1. a `ClassLabel` column (saved or hub datasets) gives ids, and its names unless `data.label_names` is set;
  2. with `data.label_names`, labels whose text is one of the names map to that name's position;
  3. integer labels (ints, bools, integral floats, or strings spelling them) are ids; names default to
     "0" ... str(max id);
  4. other strings: with `data.label_names` any other value is an error; without, the names are the sorted
     distinct values, so a train and an eval split with the same classes get the same ids. Set
     `data.label_names` when a split may lack a class.
Missing labels (null, NaN, empty cell) and negative ids (GLUE marks unlabelled test rows with -1) are errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compress.errors import DataError

SHOWN_VALUES = 5


@dataclass(frozen=True)
class LabelColumn:
    """Where the labels come from, for error messages."""

    source: str  # file or hub name
    column: str
    field: str  # YAML path, e.g. data.label


def encode_labels(
    all_values: Sequence[object],
    rows: Sequence[int],
    *,
    column: LabelColumn,
    label_names: list[str] | None,
    class_names: list[str] | None = None,
) -> tuple[list[int], list[str]]:
    """Ids for the labels at `rows` (0-based positions in `all_values`) and the names of all ids."""
    _check_present(all_values, rows, column)
    present = [value for value in all_values if not _is_missing(value)]
    if class_names is not None and label_names is None:
        label_names = class_names
        encode: Callable[[object], int | None] = _as_int
    elif label_names is not None and all(_as_text(value) in label_names for value in present):
        position = {name: i for i, name in enumerate(label_names)}
        encode = lambda value: position[_as_text(value)]  # noqa: E731
    elif all(_as_int(value) is not None for value in present):
        encode = _as_int
        if label_names is None:
            label_names = [str(i) for i in range(max([0, *((_as_int(v) or 0) for v in present)]) + 1)]
    elif label_names is not None:
        unknown = sorted({_as_text(value) for value in present} - set(label_names))
        raise DataError(
            f"{column.source}: column '{column.column}' has labels that are not in label_names: "
            f"{_show(unknown)}; allowed: {label_names}",
            where=column.field,
            fix=f"add the missing names to {column.field}_names (in id order) or correct those rows",
        )
    else:
        label_names = sorted({_as_text(value) for value in present})
        position = {name: i for i, name in enumerate(label_names)}
        encode = lambda value: position[_as_text(value)]  # noqa: E731
    ids = [encode(all_values[row]) for row in rows]
    _check_ids(ids, rows, label_names, column)
    return [i for i in ids if i is not None], label_names  # _check_ids rejected every None


def _check_present(values: Sequence[object], rows: Sequence[int], column: LabelColumn) -> None:
    missing = [row for row in rows if _is_missing(values[row])]
    if missing:
        shown = ", ".join(str(row + 1) for row in missing[:SHOWN_VALUES])
        raise DataError(
            f"{column.source}: column '{column.column}' has no label in {len(missing)} row(s): row {shown} "
            "(rows count from 1, header excluded)",
            where=column.field,
            fix="fill in or remove those rows, or evaluate on a labelled split",
        )


def _check_ids(ids: list[int | None], rows: Sequence[int], names: list[str], column: LabelColumn) -> None:
    bad = [(row, i) for row, i in zip(rows, ids, strict=True) if i is None or not 0 <= i < len(names)]
    if not bad:
        return
    shown = ", ".join(f"row {row + 1}: {i}" for row, i in bad[:SHOWN_VALUES])
    unlabelled = " (-1 marks unlabelled rows, e.g. GLUE test splits)" if any(i == -1 for _, i in bad) else ""
    raise DataError(
        f"{column.source}: column '{column.column}' has label ids outside 0..{len(names) - 1} "
        f"({shown}){unlabelled}; label names: {names}",
        where=column.field,
        fix=f"evaluate on a labelled split, or list every class in {column.field}_names",
    )


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _as_int(value: object) -> int | None:
    """The integer a label spells, or None (a word, or a fractional number)."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_text(value: object) -> str:
    number = _as_int(value) if not isinstance(value, str) else None
    return str(number) if number is not None else str(value).strip()


def _show(values: list[str]) -> str:
    more = f" and {len(values) - SHOWN_VALUES} more" if len(values) > SHOWN_VALUES else ""
    return ", ".join(repr(v) for v in values[:SHOWN_VALUES]) + more
