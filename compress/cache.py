"""Content-addressed stage keys and the on-disk layout of a run, so a re-run resumes where it stopped.

A stage's key hashes its parent's key with its own configuration, so changing one step re-runs that step and
everything after it, and nothing before.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from compress.config import DataSpec
from compress.distributed import is_main_process
from compress.io import atomic_write_bytes, atomic_write_text, user_path
from compress.result import StageResult

STEP_FILE = "step.json"
RESULT_FILE = "result.json"
OUTPUTS_FILE = "outputs.npy"


def stable_hash(*parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()


def data_identity(spec: DataSpec, base_dir: Path) -> str:
    """The data spec plus the bytes of every local file it names (hub names: the name itself)."""
    paths = spec.path.values() if isinstance(spec.path, dict) else [spec.path]
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for raw in sorted(paths):
        path = user_path(raw, "data.path", base_dir)  # as the readers resolve it: `~` included
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(file.name.encode())
                with file.open("rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
    return digest.hexdigest()


class StageStore:
    """`<run>/stages/<index>-<label>-<key>/` holds result.json, outputs.npy and model/ or artifact/."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "stages"

    def stage_dir(self, index: int, label: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        return self.root / f"{index:02d}-{safe}-{key[:10]}"

    def work_dir(self, key: str) -> Path:
        """Scratch space (checkpoints, teacher caches) that survives an interrupted stage."""
        path = self.root / ".work" / key[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def discard_work(self, key: str) -> None:
        """A finished stage needs no checkpoints: they can be hundreds of MB."""
        shutil.rmtree(self.root / ".work" / key[:16], ignore_errors=True)

    @staticmethod
    def load_result(stage_dir: Path) -> StageResult | None:
        path = stage_dir / RESULT_FILE
        if not path.exists():
            return None
        try:
            return StageResult.model_validate_json(path.read_text())
        except ValueError:
            return None  # a result from an incompatible version: recompute

    @staticmethod
    def save_result(stage_dir: Path, result: StageResult) -> None:
        if not is_main_process():
            return
        atomic_write_text(stage_dir / RESULT_FILE, result.model_dump_json(indent=2))

    @staticmethod
    def save_step(stage_dir: Path, result: StageResult) -> None:
        """What the step itself produced (time, memory, details), written once its model is saved: a run killed
        while evaluating the stage resumes with the evaluation, not by redoing the step."""
        if is_main_process():
            atomic_write_text(stage_dir / STEP_FILE, result.model_dump_json(indent=2))

    @staticmethod
    def load_step(stage_dir: Path) -> StageResult | None:
        path = stage_dir / STEP_FILE
        if not (path.exists() and (stage_dir / "model").is_dir()):
            return None
        try:
            return StageResult.model_validate_json(path.read_text())
        except ValueError:
            return None

    @staticmethod
    def save_outputs(stage_dir: Path, outputs: np.ndarray) -> None:
        import io

        if not is_main_process():
            return
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(outputs, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(stage_dir / OUTPUTS_FILE, buffer.getvalue())

    @staticmethod
    def load_outputs(stage_dir: Path) -> np.ndarray | None:
        path = stage_dir / OUTPUTS_FILE
        return np.load(path, allow_pickle=False) if path.exists() else None
