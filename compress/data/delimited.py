"""Read csv/tsv files, with or without a header row, every cell as a string.

Cells are read as strings (no pandas type guessing, no "NA" → missing): a review that says "null" stays text,
and the label module decides how label strings map to ids. CSV files are read with CSV quoting. TSV files are read
raw, as GLUE writes them (a sentence may start with a quote character), unless their quoted cells all follow the
CSV convention — `"…"` around the cell, inner quotes doubled, as pandas and Python's csv module write any cell that
holds a quote — in which case the quotes are parsed (`data.quoting` overrides the detection).

When `data.header` is not set, the first rows are inspected:
  * a first row holding the recipe's column names (or equal to `data.columns`) is a header;
  * a first row with a number in it, a known label name in it, or a value that recurs in a categorical column
    below it is data;
  * a first row of words above a column of numbers, or above a categorical column where it never recurs, is a
    header;
  * otherwise it is a header unless `data.columns` names the columns (csv convention).
Headerless files take their names from `data.columns`, else positional names `column1`, `column2`, ...
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

import datasets

from compress.config import DataSpec
from compress.data.fields import EVAL_FLAGS, setting
from compress.errors import DataError, clip

SNIFF_ROWS = 100


@dataclass(frozen=True)
class DelimitedFile:
    dataset: datasets.Dataset
    note: str  # how the column names were found, for error messages


def read_delimited(path: Path, spec: DataSpec, needed: list[str], *, field: str, where: str) -> DelimitedFile:
    """`field` is the YAML path of this file (data.path or data.path.<split>), `where` the data section's."""
    tsv = path.suffix.lower() == ".tsv"
    sep = "\t" if tsv else ","
    quoting = _quoting(path, spec.quoting, tsv, field)
    rows = _first_rows(path, sep, quoting, field)
    if not rows:
        raise DataError(f"{path} is empty", where=field, fix="point at a file with a header row and data rows")
    first = rows[0]
    header = spec.header if spec.header is not None else first_row_is_header(rows, spec, needed)
    how = _header_note(spec.header, header, where)
    if header and len(rows) == 1:
        raise DataError(
            f"{path} has a header row but no data rows", where=field, fix="point at a file that has data rows"
        )
    if spec.columns is not None:
        if len(spec.columns) != len(first):
            raise DataError(
                f"{path} has {len(first)} columns per row but {len(spec.columns)} names are given: "
                f"{clip(str(spec.columns))}",
                where=f"{where}.columns",
                fix=f"give exactly {len(first)} names in {setting(f'{where}.columns')}, one per column in file order",
            )
        names = list(spec.columns)
        note = f"names from {where}.columns, the first row read as {'a header' if header else 'data'}{how}"
    elif header:
        names = [cell.strip() for cell in first]
        note = f"names from the file's header row{how}"
    else:
        names = [f"column{i + 1}" for i in range(len(first))]
        note = f"columns named by position: column1, column2, ...{how}"
    if len(set(names)) != len(names):
        raise DataError(
            f"{path} has repeated column names: {clip(str(names))}",
            where=f"{where}.columns",
            fix=f"give unique names in {setting(f'{where}.columns')} (and set {setting(f'{where}.header')})",
        )
    features = datasets.Features({name: datasets.Value("string") for name in names})
    try:
        dataset = datasets.load_dataset(
            "csv",
            data_files={"rows": str(path)},
            split="rows",
            sep=sep,
            quoting=quoting,
            header=0 if header else None,
            names=names,
            na_filter=False,
            features=features,
        )
    except Exception as exc:  # pandas/arrow raise many types for malformed files; all mean "fix the file"
        raise unreadable(path, field, exc) from exc
    return DelimitedFile(dataset, note)


def _header_note(given: bool | None, header: bool, where: str) -> str:
    """Says whether the header row was set or detected and, when detected, how to override a wrong guess."""
    field = f"{where}.header"
    if given is not None:
        return f" ({field}: {'true' if given else 'false'})"
    on_eval = field in EVAL_FLAGS  # the recipe's own data section; `compress eval` has flags for it
    if header:
        flag = " (compress eval: --no-header)" if on_eval else ""
        return f"; the first row was detected as a header: if it is data, set {field}: false{flag}"
    flag = " (compress eval: --header)" if on_eval else ""
    return f"; no header row was detected, so the first row is data: if it names the columns, set {field}: true{flag}"


def first_row_is_header(rows: list[list[str]], spec: DataSpec, needed: list[str]) -> bool:
    first = [cell.strip() for cell in rows[0]]
    if spec.columns is not None and first == [name.strip() for name in spec.columns]:
        return True
    if set(needed) <= set(first):
        return True
    if spec.label_names and any(cell in spec.label_names for cell in first):
        return False
    if any(_is_number(cell) for cell in first):
        return False  # column names are not numbers
    header_evidence = False
    for i, cell in enumerate(first):
        below = [row[i].strip() for row in rows[1:] if len(row) > i]
        if not below:
            continue
        if all(_is_number(value) for value in below):
            header_evidence = True
        elif len(set(below)) <= max(2, len(below) // 2):  # few distinct values: a label-like column
            if cell in below:
                return False
            header_evidence = True
    return header_evidence or spec.columns is None


def unreadable(path: Path, field: str, exc: BaseException) -> DataError:
    if "corresponds to no data" in str(exc):  # how `datasets` says a file parsed to zero rows
        return DataError(f"{path} has no rows", where=field, fix="point at a file that has data rows")
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        reason += f" ({str(cause).strip().splitlines()[0]})"
    return DataError(
        f"cannot read {path}: {reason}",
        where=field,
        fix="check that the file is well-formed UTF-8 text (csv/tsv/json lines) or a valid parquet file",
    )


def _quoting(path: Path, setting: str, tsv: bool, field: str) -> int:
    if setting == "csv" or (setting == "auto" and not tsv):
        return csv.QUOTE_MINIMAL
    if setting == "none":
        return csv.QUOTE_NONE
    cells = [cell for row in _first_rows(path, "\t", csv.QUOTE_NONE, field) for cell in row]
    return csv.QUOTE_MINIMAL if csv_quoted(cells) else csv.QUOTE_NONE


def csv_quoted(cells: list[str]) -> bool:
    """Whether raw cells look CSV-quoted: some cell is wrapped in quotes, and every cell that starts with a quote
    is wrapped and doubles its inner quotes (a GLUE sentence that merely starts with a quote does not)."""
    starting = [cell for cell in cells if cell.startswith('"')]
    if not starting:
        return False
    return all(len(cell) >= 2 and cell.endswith('"') and '"' not in cell[1:-1].replace('""', "") for cell in starting)


def _first_rows(path: Path, sep: str, quoting: int, field: str) -> list[list[str]]:
    # A review can be longer than the csv module's default 128 KiB field limit; any size is fine here.
    csv.field_size_limit(2**31 - 1)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: Excel starts files with a BOM
            reader = csv.reader(handle, delimiter=sep, quoting=quoting)
            return [row for row in itertools.islice(reader, SNIFF_ROWS) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise unreadable(path, field, exc) from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
