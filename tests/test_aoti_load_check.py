"""The `aoti` exporter loads each package in a child process before accepting it: a loader that fails, or one that
kills its process (torch's AOTInductor loader did, with SIGSEGV, on an H200), becomes an ExportError naming the
export and the fallback — the recipe evaluating it lives on. No compile here, so it runs on CPU in CI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from compress.errors import ExportError
from compress.export import aoti


def test_a_file_that_is_not_a_package_is_an_export_error(tmp_path: Path):
    package = tmp_path / "model.pt2"
    package.write_bytes(b"not a zip archive")
    with pytest.raises(ExportError, match="does not load and run") as caught:
        aoti.check_package_loads(package, "cpu", 2, "exports.aoti")
    assert "exports.aoti" in str(caught.value) and "torch_compile" in str(caught.value)


def test_a_loader_that_kills_its_process_is_an_export_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def segfaulting_child(package: Path, device: str, inputs: int) -> list[str]:
        return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]

    monkeypatch.setattr(aoti, "child_load_command", segfaulting_child)
    with pytest.raises(ExportError, match=r"kills the process \(SIGSEGV\)"):
        aoti.check_package_loads(tmp_path / "model.pt2", "cuda", 2, "exports.aoti")
