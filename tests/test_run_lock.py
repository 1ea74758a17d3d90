"""One run per run folder: a second run into a folder in use fails at once, naming the holder's pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compress.errors import ConfigError
from compress.run_lock import run_lock


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        with pytest.raises(ConfigError) as error, run_lock(tmp_path):
            pass
        assert f"pid {os.getpid()}" in str(error.value) and error.value.where == str(tmp_path)
    with run_lock(tmp_path):  # released when the first run ends
        pass


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from compress.run_lock import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"), run_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # a killed run leaves no stale lock
        pass
