"""Resumable checkpoints in a stage's work folder.

A checkpoint is a folder `step-<n>` holding accelerate's state (model weights in safetensors, optimizer,
scheduler and random-number states) and `trainer_state.json` (step, epoch, position in the epoch, loss
history, and the key of the training it belongs to). Folders are written under a temporary name and
renamed when complete, so an interrupted save never leaves a checkpoint that looks whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator

from compress.io import atomic_write_text

STATE_FILE = "trainer_state.json"
PREFIX = "step-"


@dataclass
class TrainerState:
    key: str
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_in_epoch: int = 0  # batches this process consumed in the current epoch
    losses: list[float] = field(default_factory=list)  # mean loss of each optimizer step
    evaluations: list[dict[str, float]] = field(default_factory=list)


def latest_checkpoint(directory: Path, key: str) -> Path | None:
    """The newest complete checkpoint made by the same training (same key), if any."""
    best: tuple[int, Path] | None = None
    for folder in directory.glob(f"{PREFIX}*"):
        state_file = folder / STATE_FILE
        if folder.name.endswith(".partial") or not state_file.exists():
            continue
        state = json.loads(state_file.read_text())
        if state.get("key") == key and (best is None or state["step"] > best[0]):
            best = (state["step"], folder)
    return best[1] if best else None


def remove_foreign_checkpoints(directory: Path, key: str) -> None:
    """Checkpoints of another training (other data, model or settings) can never be resumed: free the disk."""
    for folder in directory.glob(f"{PREFIX}*"):
        state_file = folder / STATE_FILE
        if not state_file.exists() or json.loads(state_file.read_text()).get("key") != key:
            shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(accelerator: Accelerator, folder: Path) -> TrainerState:
    accelerator.load_state(str(folder))
    return TrainerState(**json.loads((folder / STATE_FILE).read_text()))


def save_checkpoint(accelerator: Accelerator, directory: Path, state: TrainerState, keep: int) -> Path:
    """Every process calls this (each saves its own random state); the main one publishes the folder."""
    final = directory / f"{PREFIX}{state.step:08d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(partial / STATE_FILE, json.dumps(asdict(state)))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        _prune(directory, state.key, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(directory: Path, key: str, keep: int) -> None:
    mine = []
    for folder in directory.glob(f"{PREFIX}*"):
        state_file = folder / STATE_FILE
        if state_file.exists() and json.loads(state_file.read_text()).get("key") == key:
            mine.append((json.loads(state_file.read_text())["step"], folder))
    for _, folder in sorted(mine)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
