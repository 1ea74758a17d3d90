"""The runner under `accelerate launch`: every process trains, only the main one evaluates and writes.

With one process (the usual case) every function here is a no-op, and accelerate is not imported.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any


@cache
def _state() -> Any | None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def is_main_process() -> bool:
    state = _state()
    return state is None or state.is_main_process


def barrier() -> None:
    """Let the other processes see what the main process just wrote."""
    state = _state()
    if state is not None:
        state.wait_for_everyone()


def from_main(value: Any) -> Any:
    """The main process's `value`, on every process (e.g. a gate's decision)."""
    if _state() is None:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def local_device(default: Any) -> Any:
    """This process's own GPU under `accelerate launch` (cuda:<local rank>), else `default`."""
    state = _state()
    return state.device if state is not None and default.type == "cuda" else default
