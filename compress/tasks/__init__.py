"""Task adapters: everything that depends on what the model does, one adapter per task.

`get_task(name)` returns the adapter registered under `name` (built in: `text-classification`, `causal-lm`;
more through the `compress.tasks` entry-point group). Only the registry is imported here, so this module
is safe to import from anywhere; each adapter is imported when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.registry import TASKS

if TYPE_CHECKING:
    from compress.tasks.base import TaskAdapter

__all__ = ["get_task", "task_names"]


def get_task(name: str, *, where: str = "model.task") -> TaskAdapter:
    """The adapter for `name`; ConfigError naming `where` (with a did-you-mean) when no task has that name."""
    return TASKS.get(name, where=where)()


def task_names(*, supporting_training: bool = False) -> list[str]:
    """Registered task names, optionally only those whose models finetune and distill can train."""
    return [name for name in TASKS.names() if not supporting_training or TASKS.get(name).supports_training]
