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
from pathlib import Path

from compress.errors import ConfigError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        yield
        return
    with (output_dir / LOCK_FILE).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ConfigError(
                f"another compress run (pid {holder}) is using this run folder",
                where=str(output_dir),
                fix="wait for that run to finish, or give this one another --output folder",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
