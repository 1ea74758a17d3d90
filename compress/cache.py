"""Content-addressed stage keys and the on-disk layout of a run, so a re-run resumes where it stopped.

A stage's key hashes its parent's key with its own configuration, so changing one step re-runs that step and
everything after it, and nothing before.

A key says what a stage folder should hold, not that its files still hold it: a flipped byte in a saved model or an
edited result.json would be reused as if it were the stage. So every stage folder carries a manifest (the sha256
of each of its files, written last), checked before anything in the folder is reused; a folder that does not match
counts as not cached and its stage re-runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from compress.config import DataSpec
from compress.distributed import is_main_process
from compress.io import atomic_write_bytes, atomic_write_text, user_path
from compress.result import StageResult
from compress.run_lock import try_lock

log = logging.getLogger(__name__)

STEP_FILE = "step.json"
RESULT_FILE = "result.json"
OUTPUTS_FILE = "outputs.npy"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
CHUNK = 1 << 20  # files are hashed a MiB at a time: a model never has to fit in memory to be checked
STEP_SCOPE = (STEP_FILE, "model")  # what resuming a finished step reads (`load_step`)
WORK = ".work"


def stable_hash(*parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()


def feed_file(digest: Any, path: Path) -> None:
    """Add a file's bytes to a hashlib digest, streamed."""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    feed_file(digest, path)
    return digest.hexdigest()


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
                feed_file(digest, file)
    return digest.hexdigest()


class StageStore:
    """`<run>/stages/<index>-<label>-<key>/` holds result.json, outputs.npy, model/ or artifact/, manifest.json."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.root = run_dir / "stages"
        # sha256 of the files this store hashed, by path and stat identity: the manifest written after the result
        # reuses the model's hash from the step's manifest, and a check on resume reads each file once.
        self._digests: dict[Path, tuple[tuple[int, ...], str]] = {}
        self.sweep()

    def stage_dir(self, index: int, label: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        return self.root / f"{index:02d}-{safe}-{key[:10]}"

    def work_dir(self, key: str) -> Path:
        """Scratch space (checkpoints, teacher caches) that survives an interrupted stage."""
        path = self.root / WORK / key[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def discard_work(self, key: str) -> None:
        """A finished stage needs no checkpoints: they can be hundreds of MB."""
        shutil.rmtree(self.root / WORK / key[:16], ignore_errors=True)
        self.sweep()

    # ---------------------------------------------------------------- leftovers
    def sweep(self) -> None:
        """Remove what killed runs leave: half-written `.model.*.partial` / `.artifact.*.partial` folders and
        `.*.tmp` files in stage folders, and empty `.work/<key>` folders (left by exports and by killed stages).

        Only while no other process holds the run lock: a StageStore is opened before its run takes the lock, and
        a second run into a folder in use must not delete the first run's half-written stage.
        """
        if not (is_main_process() and self.root.is_dir()):
            return
        with _run_folder_free(self.run_dir) as free:
            if not free:
                return
            for leftover in self.root.glob("*/.*"):
                if leftover.name.endswith(".partial") and leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                elif leftover.name.endswith(".tmp") and leftover.is_file():
                    leftover.unlink(missing_ok=True)
            for work in (self.root / WORK).glob("*"):
                if work.is_dir() and not any(work.iterdir()):
                    with contextlib.suppress(OSError):  # clutter at worst: sweeping must never fail a run
                        work.rmdir()

    # ---------------------------------------------------------------- results
    def load_result(self, stage_dir: Path) -> StageResult | None:
        path = stage_dir / RESULT_FILE
        if not path.exists() or not self._verified(stage_dir, None):
            return None
        try:
            return StageResult.model_validate_json(path.read_text())
        except ValueError:
            return None  # a result from an incompatible version: recompute

    def save_result(self, stage_dir: Path, result: StageResult) -> None:
        if not is_main_process():
            return
        atomic_write_text(stage_dir / RESULT_FILE, result.model_dump_json(indent=2))
        self._write_manifest(stage_dir, None)
        self.sweep()  # a finished export's scratch folder: exports have no discard_work

    def save_step(self, stage_dir: Path, result: StageResult) -> None:
        """What the step itself produced (time, memory, details), written once its model is saved: a run killed
        while evaluating the stage resumes with the evaluation, not by redoing the step."""
        if is_main_process():
            atomic_write_text(stage_dir / STEP_FILE, result.model_dump_json(indent=2))
            # Only the step's files: an older result.json or outputs.npy left in the folder is then unlisted, and
            # so never reused for this new model.
            self._write_manifest(stage_dir, STEP_SCOPE)

    def load_step(self, stage_dir: Path) -> StageResult | None:
        path = stage_dir / STEP_FILE
        if not (path.exists() and (stage_dir / "model").is_dir()) or not self._verified(stage_dir, STEP_SCOPE):
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
        # Hashed into the manifest by save_result, which always follows (an evaluation without a saved result
        # leaves outputs.npy unlisted, so it is never reused).
        atomic_write_bytes(stage_dir / OUTPUTS_FILE, buffer.getvalue())

    @staticmethod
    def load_outputs(stage_dir: Path) -> np.ndarray | None:
        # Read only from a stage this run computed or verified (load_result checked outputs.npy with the rest).
        path = stage_dir / OUTPUTS_FILE
        return np.load(path, allow_pickle=False) if path.exists() else None

    # ---------------------------------------------------------------- manifest
    def _write_manifest(self, stage_dir: Path, scope: tuple[str, ...] | None) -> None:
        """Hash the stage's files (those under `scope`, or all) and write the manifest, atomically and last."""
        files = {rel: self._digest(stage_dir / rel) for rel in _stage_files(stage_dir, scope)}
        manifest = {"version": MANIFEST_VERSION, "sha256": files}
        atomic_write_text(stage_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))

    def _verified(self, stage_dir: Path, scope: tuple[str, ...] | None) -> bool:
        problem = self._mismatch(stage_dir, scope)
        if problem is not None:
            log.warning("cached stage %s is not what was saved: %s; re-running", stage_dir, problem)
        return problem is None

    def _mismatch(self, stage_dir: Path, scope: tuple[str, ...] | None) -> str | None:
        """The first file under `scope` (or anywhere) that differs from the manifest, described; None if none."""
        expected = _read_manifest(stage_dir)
        if expected is None:
            return f"{MANIFEST_FILE} is missing or unreadable (a folder from an older version, or a killed save)"
        expected = {rel: digest for rel, digest in expected.items() if _in_scope(rel, scope)}
        present = set(_stage_files(stage_dir, scope))
        # Only files found in the folder are ever opened: a manifest naming `../x` is just a missing file.
        for rel in sorted(present | expected.keys()):
            if rel not in expected:
                return f"{rel} is not in its {MANIFEST_FILE}"
            if rel not in present:
                return f"{rel} is missing"
            if self._digest(stage_dir / rel) != expected[rel]:
                return f"{rel} does not match its sha256"
        return None

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        # ctime changes with any write and cannot be set back (unlike mtime): same identity, same bytes.
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        known = self._digests.get(path)
        if known is not None and known[0] == identity:
            return known[1]
        digest = file_sha256(path)
        self._digests[path] = (identity, digest)
        return digest


def _in_scope(rel: str, scope: tuple[str, ...] | None) -> bool:
    return scope is None or rel.split("/", 1)[0] in scope


def _stage_files(stage_dir: Path, scope: tuple[str, ...] | None) -> list[str]:
    """Every file of the stage folder as a relative POSIX path, but the manifest and the hidden leftovers of
    atomic writes at its top (`.result.json.*.tmp`, `.model.*.partial`), which nothing reads."""
    files = []
    for path in stage_dir.rglob("*"):
        rel = path.relative_to(stage_dir).as_posix()
        if rel == MANIFEST_FILE or rel.startswith(".") or not path.is_file():
            continue
        if _in_scope(rel, scope):
            files.append(rel)
    return sorted(files)


def _read_manifest(stage_dir: Path) -> dict[str, str] | None:
    try:
        manifest = json.loads((stage_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        return None
    files = manifest.get("sha256")
    if not isinstance(files, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return None
    return files


@contextlib.contextmanager
def _run_folder_free(run_dir: Path) -> Iterator[bool]:
    """Yield whether no other process holds the run folder's lock (`compress.run_lock`), holding it meanwhile.

    The lock held by this very process (its run is under way) counts as free: the leftovers are then its own past
    runs'. Without flock (Windows) runs are not guarded, so nothing counts as free.
    """
    with try_lock(run_dir) as attempt:
        yield attempt.taken or (attempt.supported and attempt.holder == str(os.getpid()))
