"""Extra unlabeled text for distillation: the student learns the teacher's outputs on it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from compress.errors import DataError

WHERE = "steps.distill.unlabeled"


def read_unlabeled(path: str | Path, column: str = "text", limit: int | None = None) -> list[str]:
    """Texts from a .txt file (one per non-empty line), .jsonl/.json (field `column`) or .csv/.tsv."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"unlabeled text file '{path}' does not exist", where=WHERE, fix="check the path")
    suffix = path.suffix.lower()
    if suffix in (".txt", ".raw", ".text"):
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    elif suffix in (".jsonl", ".json"):
        texts = [_field(record, column, path) for record in _json_records(path)]
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            texts = [_field(record, column, path) for record in reader]
    else:
        raise DataError(
            f"cannot read unlabeled text from '{path.name}' (unknown format '{suffix}')",
            where=WHERE,
            fix="use a .txt file with one text per line, or .jsonl/.json/.csv/.tsv with a text column",
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"'{path}' holds no text", where=WHERE, fix="point at a file with at least one text")
    return texts[:limit] if limit else texts


def _json_records(path: Path) -> list[object]:
    try:
        if path.suffix.lower() == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"'{path}' is not valid JSON: {exc}", where=WHERE, fix="fix or replace the file") from exc
    if not isinstance(records, list):
        raise DataError(f"'{path}' must hold a list of records", where=WHERE, fix="write a JSON list or .jsonl")
    return records


def _field(record: object, column: str, path: Path) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(column), str):
        raise DataError(
            f"a record in '{path}' has no text field '{column}'",
            where=WHERE,
            fix="set `unlabeled_column` to the field that holds the text",
        )
    return record[column]
