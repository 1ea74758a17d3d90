"""Open any artifact on this machine by the format recorded beside it: `compress.open(path)`.

An export folder records its format in `compress-export.json` (onnx, openvino, tensorrt, coreml); a stage compress
saved has `compress-model.json` (format `pytorch`); a plain transformers folder has only `config.json`. Each format
names an opener in the `RUNTIMES` registry (entry-point group `compress.runtimes`), so a plugin adds a format the
same way it adds a step. A run folder holds many artifacts: `run_artifacts` lists them from its report.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compress.errors import CompressError, ConfigError, ModelError, clip
from compress.export.base import METADATA_FILE as EXPORT_METADATA
from compress.export.base import read_metadata
from compress.models.serialize import META_FILE as SAVED_MODEL_METADATA
from compress.registry import RUNTIMES
from compress.runtime.base import Runtime, RuntimeOptions

REPORT = "report.json"


def artifact_format(path: Path) -> str:
    """The format an artifact folder records, or a ConfigError saying what the folder lacks."""
    if (path / EXPORT_METADATA).is_file():
        recorded = read_metadata(path).get("format")
        if not isinstance(recorded, str):
            raise ConfigError(f"{path / EXPORT_METADATA} records no format", where=str(path), fix="export it again")
        return recorded
    if (path / SAVED_MODEL_METADATA).is_file():
        return "pytorch"
    if (path / "config.json").is_file():
        return "transformers"
    if (path / REPORT).is_file():
        raise ConfigError(
            f"{path} is a run folder, which holds one artifact per stage",
            where=str(path),
            fix="open one of its stages' artifacts (`compress.artifacts.run_artifacts` lists them), or give the run "
            "folder to `compress bench`, which measures them all",
        )
    raise ConfigError(
        f"{clip(str(path))} is not an artifact: no {EXPORT_METADATA}, {SAVED_MODEL_METADATA} or config.json",
        where=str(path),
        fix="point at an export folder (<run>/stages/<stage>/artifact), a saved stage (<run>/stages/<stage>/model) "
        "or a transformers model folder",
    )


def open_artifact(
    path: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    task: str | None = None,
    compute_units: str | None = None,
) -> Runtime:
    """The artifact at `path` in its own runtime on this machine (`device`: auto, cpu or cuda; `compute_units`:
    Core ML's, e.g. cpu_and_ne)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{clip(str(folder))} is not a folder", where=str(folder), fix="check the path")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    fmt = artifact_format(folder)
    opener = RUNTIMES.get(fmt, where=str(folder / EXPORT_METADATA))
    try:
        return opener(folder, RuntimeOptions(threads=threads, device=device, task=task, compute_units=compute_units))
    except CompressError:
        raise
    except Exception as exc:  # a damaged artifact (a missing or truncated file, a key its metadata lacks)
        raise ModelError(
            f"{clip(str(folder))} does not open as its recorded format ({fmt}): "
            f"{type(exc).__name__}: {clip(str(exc), 300)}",
            where=str(folder),
            fix="export it again (a copy may have left out or cut short one of its files)",
        ) from exc


def run_artifacts(run_dir: str | Path) -> dict[str, Path]:
    """Stage name → artifact folder for every stage of a run that finished with one, in report order."""
    report = Path(run_dir) / REPORT
    if not report.is_file():
        raise ConfigError(f"{clip(str(run_dir))} has no {REPORT}", where=str(run_dir), fix="give a run folder")
    stages = json.loads(report.read_text(encoding="utf-8")).get("stages", [])
    found = {}
    for stage in stages:
        if stage.get("status") != "ok" or not stage.get("artifact"):
            continue
        recorded = Path(stage["artifact"])  # as the run saw it; the folder may have moved since
        folder = Path(run_dir) / "stages" / recorded.parent.name / recorded.name
        if folder.is_dir():
            found[stage["name"]] = folder
    return found
