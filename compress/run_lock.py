"""One run per run folder: a second `compress run` into a folder in use fails at once, naming the holder.

Two runs into one folder would each compute every stage, race on the checkpoint folders, and time their stages
against each other. The lock is an advisory `flock` on `<folder>/.lock`, which the kernel drops when the holding
process dies (a killed run never leaves the folder locked). Taken by the main process only: the ranks of one
distributed run share the folder by design.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from compress.errors import ConfigError

LOCK_FILE = ".lock"


@dataclass
class Attempt:
    """The outcome of trying the lock: `taken` (held until the block ends), else `holder` (the pid text the
    holder wrote; empty if unknown). Without flock (Windows) `supported` is False and nothing is taken."""

    supported: bool
    taken: bool = False
    holder: str = ""
    handle: IO[str] | None = None


@contextlib.contextmanager
def try_lock(output_dir: Path) -> Iterator[Attempt]:
    """Try `<output_dir>/.lock` without waiting; held while the block runs if taken."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        yield Attempt(supported=False)
        return
    with (output_dir / LOCK_FILE).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            yield Attempt(supported=True, holder=handle.read().strip())
            return
        try:
            yield Attempt(supported=True, taken=True, handle=handle)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    with try_lock(output_dir) as attempt:
        if attempt.supported and not attempt.taken:
            raise ConfigError(
                f"another compress run (pid {attempt.holder or 'unknown'}) is using this run folder",
                where=str(output_dir),
                fix="wait for that run to finish, or give this one another --output folder",
            )
        if attempt.handle is not None:  # the holder's pid, for the error a second run shows
            attempt.handle.seek(0)
            attempt.handle.truncate()
            attempt.handle.write(f"{os.getpid()}\n")
            attempt.handle.flush()
        yield


@contextlib.contextmanager
def run_folder(output_dir: Path, *, lock: bool = True) -> Iterator[None]:
    """Create the run folder (and its missing parents) and, with `lock`, hold its lock while the block runs.

    If the block fails and the folder is still empty apart from the lock, the folders this call created are
    removed: a run rejected before its first stage (bad data, a model that does not load) leaves nothing behind.
    Only the lock holder cleans up (the other ranks of a distributed run share the folder), and a folder that
    existed before, or holds anything else, is never touched.
    """
    created = _missing_folders(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(output_dir) if lock else contextlib.nullcontext():
        try:
            yield
        except BaseException:
            if lock and created:
                # Still holding the lock: no other run can be using the folder while it is removed.
                _remove_if_unused(output_dir, created)
            raise


def _missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_unused(output_dir: Path, created: list[Path]) -> None:
    try:
        if any(entry.name != LOCK_FILE for entry in output_dir.iterdir()):
            return  # something was written: the reports and stages of what ran are kept
        (output_dir / LOCK_FILE).unlink(missing_ok=True)
        for folder in created:  # innermost first; a parent something else was put into stays
            folder.rmdir()
    except OSError:
        return  # a folder that cannot be removed is only clutter: the run's own error is what matters
