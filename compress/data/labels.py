"""Turn a label column of any type into integer ids and label names.

The names (the classes, in id order) a split is encoded with come from, in this order:
  1. a `ClassLabel` column (saved or hub datasets): its ids, and its names unless `data.label_names` is set;
  2. `data.label_names` (or, for `compress eval`, the labels of the model's classification head): labels whose
     text is one of the names map to that name's position; otherwise integer labels are ids;
  3. a reference split's names (the evaluation split keeps to the train split's, see `compress.data.provider`):
     every label must be one of them; one the reference lacks is an error naming it, its rows and both files;
  4. otherwise this split's own labels, all of its rows (not just those a limit keeps): integer labels (ints,
     bools, integral floats, or strings spelling them) are ids, named "0" ... str(max id); labels that are all
     words are named by their sorted distinct values.
Names inferred in step 4 are refused where they cannot be what the user meant, because each would silently become
a class (a 6-output model for a binary task):
  * numbers that are not whole (0.1, 0.25): a continuous target, and regression is not supported;
  * numbers mixed with words (1, 0, "NA"): the words are missing-value markers or typos, not classes;
  * more than 20 classes where fewer than 2 rows per class exist on average, or more than a quarter of the classes
    have fewer than 2 rows: the wrong column (an id, free text) or a continuous target.
`data.label_names` lifts these checks: listed classes are what the user meant.
Missing labels (null, NaN, the text "nan", an empty cell) and negative ids (GLUE marks unlabelled test rows with
-1) are errors.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compress.data.fields import EVAL_FLAGS, setting
from compress.errors import DataError, clip, shown

SHOWN_VALUES = 5
LABEL_ECHO = 40  # characters of one label a message echoes
MANY_CLASSES = 20  # above this many inferred classes, the data must support them (see the module docstring)
ROWS_NOTE = "(rows count from 1, header excluded)"

Encoder = Callable[[object], int | None]  # one label → its id (None: not an integer, rejected by _check_ids)


@dataclass(frozen=True)
class LabelColumn:
    """Where the labels come from, for error messages."""

    source: str  # file or hub name
    column: str
    field: str  # YAML path of the column setting, e.g. data.label
    file_field: str = "data.path"  # YAML path of the file, e.g. data.path.validation


@dataclass(frozen=True)
class ReferenceLabels:
    """Label names another split decided, which this split must keep to (ids mean the same class everywhere)."""

    names: list[str]
    source: str  # the file (or hub name) they were read from
    split: str


def encode_labels(
    all_values: Sequence[object],
    rows: Sequence[int],
    *,
    column: LabelColumn,
    label_names: list[str] | None,
    class_names: list[str] | None = None,
    reference: ReferenceLabels | None = None,
) -> tuple[list[int], list[str]]:
    """Ids for the labels at `rows` (0-based positions in `all_values`) and the names of all ids."""
    _check_present(all_values, rows, column)
    present = [(row, value) for row, value in enumerate(all_values) if not _is_missing(value)]
    encode: Encoder
    if class_names is not None:
        if reference is not None and label_names is None and class_names != reference.names:
            raise DataError(
                f"{column.source}: column '{column.column}' is a ClassLabel named {clip(str(class_names))}, but the "
                f"{reference.split} split ({reference.source}) names its classes {clip(str(reference.names))}: "
                "the same id would mean different classes",
                where=column.file_field,
                fix=f"save both splits with the same ClassLabel names, or list the classes in id order in "
                f"{setting(column.field + '_names')}",
            )
        names, encode = label_names or class_names, _as_int
    elif label_names is not None:
        names, encode = label_names, _named(label_names, present, column)
    elif reference is not None:
        names, encode = reference.names, _kept_to(reference, all_values, rows, column)
    else:
        names, encode = _inferred(present, column)
    ids = [encode(all_values[row]) for row in rows]
    _check_ids(ids, rows, names, column)
    return [i for i in ids if i is not None], names  # _check_ids rejected every None


def label_key(value: object) -> str | None:
    """What makes two labels the same class for stratifying (1, 1.0 and "1" alike); None for a missing label."""
    return None if _is_missing(value) else _as_text(value)


def _named(label_names: list[str], present: list[tuple[int, object]], column: LabelColumn) -> Encoder:
    if all(_as_text(value) in label_names for _, value in present):
        position = {name: i for i, name in enumerate(label_names)}
        return lambda value: position[_as_text(value)]
    if all(_as_int(value) is not None for _, value in present):
        return _as_int  # integer labels are ids; the names only name them
    first_row: dict[str, int] = {}
    for row, value in present:
        if _as_text(value) not in label_names:
            first_row.setdefault(_as_text(value), row)
    unknown = sorted(first_row)
    rows = ", ".join(str(first_row[name] + 1) for name in unknown[:SHOWN_VALUES])
    raise DataError(
        f"{column.source}: column '{column.column}' has labels that are not in label_names: {_show(unknown)} "
        f"(first in rows {rows}; rows count from 1, header excluded); allowed: {clip(str(label_names))}",
        where=column.field,
        fix=f"list every class in id order in {setting(column.field + '_names')}, or correct those rows"
        + (
            " (compress eval takes the names from the model's classification head unless --label-names is given)"
            if column.field in EVAL_FLAGS
            else ""
        ),
    )


def _kept_to(
    reference: ReferenceLabels, all_values: Sequence[object], rows: Sequence[int], column: LabelColumn
) -> Encoder:
    position = {name: i for i, name in enumerate(reference.names)}
    unknown: dict[str, list[int]] = {}
    for row in rows:
        text = _as_text(all_values[row])
        if text not in position:
            unknown.setdefault(text, []).append(row)
    if unknown:
        labels = sorted(unknown, key=lambda text: unknown[text][0])
        listed = "; ".join(
            f"{shown(text, LABEL_ECHO)} in row{'s' if len(unknown[text]) > 1 else ''} "
            + ", ".join(str(row + 1) for row in unknown[text][:SHOWN_VALUES])
            + (f" and {len(unknown[text]) - SHOWN_VALUES} more" if len(unknown[text]) > SHOWN_VALUES else "")
            for text in labels[:SHOWN_VALUES]
        )
        more = f"; and {len(labels) - SHOWN_VALUES} more labels" if len(labels) > SHOWN_VALUES else ""
        unlabelled = " (-1 marks unlabelled rows, e.g. GLUE test splits)" if "-1" in unknown else ""
        them = "that label" if len(labels) == 1 else "those labels"
        raise DataError(
            f"{column.source}: column '{column.column}' has {len(labels)} label(s) that the {reference.split} split "
            f"({reference.source}) does not have: {listed}{more} {ROWS_NOTE}{unlabelled}; the "
            f"{reference.split} split's labels: {clip(str(reference.names))}",
            where=column.file_field,
            fix=f"add rows with {them} to the {reference.split} split, list every class in id order in "
            f"{setting(column.field + '_names')} (the model gets one output per name), or remove those rows",
        )
    return lambda value: position[_as_text(value)]


def _inferred(present: list[tuple[int, object]], column: LabelColumn) -> tuple[list[str], Encoder]:
    numbers = [(row, value, _as_number(value)) for row, value in present]
    numeric = [(row, value, number) for row, value, number in numbers if number is not None]
    names_field = setting(column.field + "_names")
    fractional = [(row, value) for row, value, number in numeric if not number.is_integer()]
    if fractional:
        raise DataError(
            f"{column.source}: column '{column.column}' holds numbers that are not whole "
            f"({_show_rows(fractional)} {ROWS_NOTE}): that looks like a continuous target, and every distinct "
            "value would become a class",
            where=column.field,
            fix="regression (a continuous target) is not supported yet; for classes, give integer class ids, or "
            f"list the classes in id order in {names_field}, each written as in the file",
        )
    if numeric and len(numeric) < len(present):
        words = [(row, value) for row, value, number in numbers if number is None]
        raise DataError(
            f"{column.source}: column '{column.column}' mixes class ids and words ({_show_rows(numeric[:2])}; "
            f"{_show_rows(words)} {ROWS_NOTE}): each word would become an extra class",
            where=column.field,
            fix="fill in or remove the rows whose label is not a class id (NA-like values mark missing labels), "
            f"or list every class in id order in {names_field}",
        )
    if numeric:
        ids = [int(number) for _, _, number in numeric]
        # Checked before the names exist: an id of 10**9 must be refused, not make a billion names.
        _check_class_count(ids, max([0, *ids]) + 1, column)
        return [str(i) for i in range(max([0, *ids]) + 1)], _as_int
    names = sorted({_as_text(value) for _, value in present})
    position = {name: i for i, name in enumerate(names)}
    _check_class_count([position[_as_text(value)] for _, value in present], len(names), column)
    return names, lambda value: position[_as_text(value)]


def _check_class_count(ids: list[int], classes: int, column: LabelColumn) -> None:
    """More than MANY_CLASSES classes need the rows to back them: 2 per class on average, and 3 in 4 of the
    classes with at least 2 rows (a class seen once can be neither learned nor fairly scored)."""
    if classes <= MANY_CLASSES:
        return
    counts = Counter(ids)
    if 2 * classes > len(ids):  # too few rows whatever their spread (and no loop over a huge id range)
        thin = classes - sum(1 for i, count in counts.items() if 0 <= i < classes and count >= 2)
    else:
        thin = sum(1 for i in range(classes) if counts[i] < 2)
        if 4 * thin <= classes:
            return
    raise DataError(
        f"{column.source}: column '{column.column}' gives {classes} classes for {len(ids)} labelled rows, {thin} "
        "of them with fewer than 2 rows: more classes than the data supports, which looks like the wrong column "
        "(an id or free text) or a continuous target",
        where=column.field,
        fix=f"check that {setting(column.field)} names the class column; if these are the classes, list them in id "
        f"order in {setting(column.field + '_names')}; regression (a continuous target) is not supported yet",
    )


def _check_present(values: Sequence[object], rows: Sequence[int], column: LabelColumn) -> None:
    missing = [row for row in rows if _is_missing(values[row])]
    if missing:
        shown_rows = ", ".join(str(row + 1) for row in missing[:SHOWN_VALUES])
        raise DataError(
            f"{column.source}: column '{column.column}' has no label in {len(missing)} row(s): row {shown_rows} "
            f"{ROWS_NOTE}",
            where=column.field,
            fix="fill in or remove those rows, or evaluate on a labelled split",
        )


def _check_ids(ids: list[int | None], rows: Sequence[int], names: list[str], column: LabelColumn) -> None:
    bad = [(row, i) for row, i in zip(rows, ids, strict=True) if i is None or not 0 <= i < len(names)]
    if not bad:
        return
    listed = ", ".join(f"row {row + 1}: {i}" for row, i in bad[:SHOWN_VALUES])
    unlabelled = " (-1 marks unlabelled rows, e.g. GLUE test splits)" if any(i == -1 for _, i in bad) else ""
    raise DataError(
        f"{column.source}: column '{column.column}' has label ids outside 0..{len(names) - 1} "
        f"({listed}){unlabelled}; label names: {clip(str(names))}",
        where=column.field,
        fix=f"evaluate on a labelled split, or list every class in {setting(column.field + '_names')}",
    )


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    # "nan" is how Python, numpy and pandas write a missing number into text; no class is named that.
    return isinstance(value, str) and (not value.strip() or value.strip().lower() == "nan")


def _as_number(value: object) -> float | None:
    """The number a label spells (bools as 0/1), or None for a word."""
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_int(value: object) -> int | None:
    """The integer a label spells, or None (a word, or a fractional number)."""
    number = _as_number(value)
    if number is not None and number.is_integer():
        return int(number)
    return None


def _as_text(value: object) -> str:
    number = _as_int(value) if not isinstance(value, str) else None
    return str(number) if number is not None else str(value).strip()


def _show(values: list[str]) -> str:
    more = f" and {len(values) - SHOWN_VALUES} more" if len(values) > SHOWN_VALUES else ""
    return ", ".join(shown(v, LABEL_ECHO) for v in values[:SHOWN_VALUES]) + more


def _show_rows(found: Sequence[tuple]) -> str:
    """`row 1: 0.1, row 2: 0.25 and 3 more` for (row, value, ...) tuples."""
    listed = ", ".join(f"row {item[0] + 1}: {shown(item[1], LABEL_ECHO)}" for item in found[:SHOWN_VALUES])
    return listed + (f" and {len(found) - SHOWN_VALUES} more" if len(found) > SHOWN_VALUES else "")
