"""Name → class registries for steps, exporters, metrics and tasks, with entry-point discovery.

Third-party packages register through the `compress.steps`, `compress.exporters`, `compress.metrics`,
`compress.tasks` and `compress.runtimes` entry-point groups; the built-ins register the same way (see
pyproject.toml), so there is one path for both.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from compress.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._entry_points: dict[str, EntryPoint] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self._items[name] = obj
            return obj

        return decorator

    def _available(self) -> dict[str, EntryPoint]:
        # Entry points are only listed here; each is imported when first asked for, so one broken plugin
        # cannot break the others.
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._available()))

    def unknown(self, name: str) -> str | None:
        """None when `name` is registered, else the message for it: a did-you-mean hint and what exists.

        Schemas validate names with this without importing the plugin behind the name.
        """
        if name in self._items or name in self._available():
            return None
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {self.kind} '{name}'{hint}; use one of: {', '.join(self.names())}"

    def get(self, name: str, *, where: str | None = None) -> T:
        if name in self._items:
            return self._items[name]
        entry_point = self._available().get(name)
        if entry_point is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint}",
                where=where,
                fix=f"use one of: {', '.join(self.names())}",
            )
        try:
            self._items[name] = entry_point.load()
        except ImportError as exc:
            raise ConfigError(
                f"the {self.kind} '{name}' ({entry_point.value}) could not be imported: {exc}",
                where=where,
                fix="reinstall the package that provides it",
            ) from exc
        return self._items[name]

    def by_class_name(self, class_name: str) -> T | None:
        """Find a registered class by its Python name without importing the other plugins."""
        for obj in self._items.values():
            if getattr(obj, "__name__", None) == class_name:
                return obj
        for name, entry_point in self._available().items():
            if entry_point.value.rsplit(":", 1)[-1] == class_name:
                return self.get(name)
        return None

    def __iter__(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)


STEPS: Registry = Registry("step", "compress.steps")
EXPORTERS: Registry = Registry("exporter", "compress.exporters")
METRICS: Registry = Registry("metric", "compress.metrics")
TASKS: Registry = Registry("task", "compress.tasks")
# artifact format (as `compress-export.json` records it; `pytorch` for a saved stage) → opener(path, RuntimeOptions)
RUNTIMES: Registry = Registry("runtime format", "compress.runtimes")
