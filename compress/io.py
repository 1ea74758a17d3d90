"""Atomic writes: a reader (or a crashed run) never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows filesystems


def user_path(text: str | Path, where: str, base_dir: Path | None = None) -> Path:
    """A path as a user wrote it in a recipe: `~` and `~user` expanded, relative paths under `base_dir`.

    Paths no filesystem can hold (a NUL byte, a component over 255 bytes) and `~user` homes this machine does not
    know raise a ConfigError naming `where` instead of the OSError or RuntimeError the first file access would.
    """
    from compress.errors import ConfigError, clip

    raw = str(text)
    if "\0" in raw:
        raise ConfigError(f"path {clip(raw)!r} holds a NUL byte", where=where, fix="remove it from the path")
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # `~name` for a user this machine does not have
        raise ConfigError(
            f"path {clip(raw)!r} starts with a home directory this machine does not know",
            where=where,
            fix="write the full path, or ~/… for your own home",
        ) from None
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in path.parts):
        raise ConfigError(
            f"path {clip(raw)!r} has a folder or file name longer than {NAME_MAX} bytes, which no filesystem holds",
            where=where,
            fix="shorten the name",
        )
    return path if path.is_absolute() or base_dir is None else base_dir / path
