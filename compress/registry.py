"""Name → class registries for steps, exporters and metrics, with entry-point discovery.

Third-party packages register through the `compress.steps`, `compress.exporters` and `compress.metrics`
entry-point groups; the built-ins register the same way (see pyproject.toml), so there is one path for both.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from compress.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self._items[name] = obj
            return obj

        return decorator

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str, *, where: str | None = None) -> T:
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint}",
                where=where,
                fix=f"use one of: {', '.join(self.names())}",
            )
        return self._items[name]

    def __iter__(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]


STEPS: Registry = Registry("step", "compress.steps")
EXPORTERS: Registry = Registry("exporter", "compress.exporters")
METRICS: Registry = Registry("metric", "compress.metrics")
