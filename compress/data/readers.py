"""Find and read one split of the user's data as a Hugging Face `datasets.Dataset`.

`data.path` may be:
  * one file (csv, tsv, json, jsonl, parquet, txt, raw): it serves whichever split is asked (`shared`), so
    training on it needs `data.split_ratio`, which holds part of it out for evaluation (`compress.data.load`);
  * a mapping of split name → file: the file for the asked split;
  * a directory written by `datasets.save_to_disk`: a DatasetDict gives the asked split, a single Dataset
    serves every split;
  * a hub dataset name (with `data.name` as its configuration), loaded with `datasets.load_dataset`.
Relative paths are resolved against the recipe's folder. Plain-text files give one row per line in one
column named `data.text`; lines keep their newline and whitespace-only lines become "" (the Hugging Face
WikiText layout, so perplexities match published numbers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import datasets

from compress.config import DataSpec
from compress.data.delimited import read_delimited, unreadable
from compress.errors import DataError
from compress.io import user_path

READERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".raw": "text",
}
SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")


@dataclass(frozen=True)
class RawSplit:
    dataset: datasets.Dataset
    source: str  # the file, directory or hub name that was read
    note: str = ""  # how column names were found, for error messages
    field: str = "data.path"  # the YAML path that named it: data.path, or data.path.<split> in a mapping
    shared: bool = False  # the same rows serve every split (one file, or a saved single Dataset)


def read_split(spec: DataSpec, split: str, needed: list[str], base_dir: Path | None, where: str) -> RawSplit:
    if isinstance(spec.path, dict):
        if split not in spec.path:
            raise DataError(
                f"split '{split}' is not in the path mapping; splits given: {sorted(spec.path)}",
                where=f"{where}.path",
                fix=f"add '{split}: <file>' under {where}.path, or use one of those splits",
            )
        path = user_path(spec.path[split], f"{where}.path.{split}", base_dir)
        if not path.exists():
            raise _not_found(path, f"{where}.path.{split}")
        return replace(_read_local(path, spec, split, needed, f"{where}.path.{split}", where), shared=False)
    path = user_path(spec.path, f"{where}.path", base_dir)
    if path.exists():
        return _read_local(path, spec, split, needed, f"{where}.path", where)
    if path.suffix.lower() in READERS or spec.path.startswith((".", "/", "~")) or spec.path.count("/") > 1:
        raise _not_found(path, f"{where}.path")
    return _read_hub(spec, split, path, where)


def has_own_rows(spec: DataSpec, split: str, base_dir: Path | None, where: str = "data") -> bool:
    """Whether `data.path` gives `split` rows apart from the evaluation split's: a mapping entry naming another
    file, or another split of a saved DatasetDict. One file or a saved single Dataset serves every split the same
    rows; a hub dataset's splits are not known without loading them, so False (its ClassLabel names the classes)."""
    if split == spec.split:
        return False
    if isinstance(spec.path, dict):
        if split not in spec.path:
            return False
        own = user_path(spec.path[split], f"{where}.path.{split}", base_dir)
        evaluated = spec.path.get(spec.split)
        return evaluated is None or own.resolve() != user_path(evaluated, f"{where}.path", base_dir).resolve()
    path = user_path(spec.path, f"{where}.path", base_dir)
    marker = path / "dataset_dict.json"
    if not marker.is_file():
        return False
    try:
        splits = json.loads(marker.read_text(encoding="utf-8")).get("splits", [])
    except (OSError, ValueError, AttributeError):  # a damaged save: reading the split will say what is wrong
        return False
    return split in splits


def same_file(spec: DataSpec, split: str, base_dir: Path | None, where: str = "data") -> bool:
    """Whether a path mapping names the evaluation split's file for `split` too (the same rows twice)."""
    if not isinstance(spec.path, dict) or split == spec.split or split not in spec.path or spec.split not in spec.path:
        return False
    own = user_path(spec.path[split], f"{where}.path.{split}", base_dir)
    return own.resolve() == user_path(spec.path[spec.split], f"{where}.path.{spec.split}", base_dir).resolve()


def _read_local(path: Path, spec: DataSpec, split: str, needed: list[str], field: str, where: str) -> RawSplit:
    if path.is_dir():
        dataset, shared = _read_saved(path, split, field, where)
        return RawSplit(dataset, str(path), field=field, shared=shared)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'",
            where=field,
            fix=f"convert it to one of {', '.join(READERS)}, or save it with datasets.save_to_disk",
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty", where=field, fix="point at a file that has data rows")
    if reader == "csv":
        delimited = read_delimited(path, spec, needed, field=field, where=where)
        return RawSplit(delimited.dataset, str(path), delimited.note, field=field, shared=True)
    options = {"keep_linebreaks": True} if reader == "text" else {}
    try:
        dataset = datasets.load_dataset(reader, data_files={"rows": str(path)}, split="rows", **options)
    except Exception as exc:  # arrow/json/parquet readers raise many types; all mean "fix the file"
        raise unreadable(path, field, exc) from exc
    if reader == "text":
        lines = [line if line.strip() else "" for line in dataset["text"]]
        note = "plain-text files have one column, holding each line"
        return RawSplit(datasets.Dataset.from_dict({spec.text: lines}), str(path), note, field=field, shared=True)
    return RawSplit(dataset, str(path), field=field, shared=True)


def _read_saved(path: Path, split: str, field: str, where: str) -> tuple[datasets.Dataset, bool]:
    """The split's rows, and whether they serve every split (a single saved Dataset)."""
    if not any((path / marker).exists() for marker in SAVED_DATASET_MARKERS):
        raise DataError(
            f"{path} is a directory but not a dataset saved with datasets.save_to_disk "
            f"(it has no {' or '.join(SAVED_DATASET_MARKERS)})",
            where=field,
            fix="point at a data file, a mapping of split → file, or a save_to_disk directory",
        )
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged save raises arrow/json/os errors alike
        raise unreadable(path, field, exc) from exc
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(
                f"{path} has no split '{split}'; its splits: {sorted(saved)}",
                where=field,
                fix=f"set {where}.split (or {where}.train_split) to one of those splits",
            )
        return saved[split], False
    return saved, True


def _read_hub(spec: DataSpec, split: str, local: Path, where: str) -> RawSplit:
    name = str(spec.path)
    try:
        dataset = datasets.load_dataset(name, spec.name, split=split)
    except ConnectionError as exc:
        raise DataError(
            f"'{name}' is not a local file or directory (looked for {local}) and the Hugging Face hub is "
            f"unreachable: {exc}",
            where=f"{where}.path",
            fix="give a local csv/tsv/jsonl/parquet file or a save_to_disk directory, or connect to the hub",
        ) from exc
    except FileNotFoundError as exc:
        raise DataError(
            f"'{name}' is not a local file or directory (looked for {local}) nor a hub dataset: {exc}",
            where=f"{where}.path",
            fix="check the path (relative paths start at the recipe's folder) or the hub dataset name",
        ) from exc
    except ValueError as exc:  # unknown split or missing configuration name
        raise DataError(
            f"cannot load split '{split}' of hub dataset '{name}': {exc}",
            where=f"{where}.split" if "split" in str(exc).lower() else f"{where}.name",
            fix=f"pick a split and a configuration ({where}.name) that the dataset has",
        ) from exc
    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict):
        raise DataError(
            f"hub dataset '{name}' did not return one split for '{split}'",
            where=f"{where}.split",
            fix=f"set {where}.split to a single split name",
        )
    return RawSplit(dataset, name, field=f"{where}.path")


def _not_found(path: Path, field: str) -> DataError:
    return DataError(
        f"{path} does not exist",
        where=field,
        fix="check the path; relative paths are resolved against the recipe's folder",
    )
