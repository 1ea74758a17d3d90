"""Lazy access to the splits a recipe uses: each is read once, on first use, with consistent label ids."""

from __future__ import annotations

import functools
from pathlib import Path

from compress.config import DataSpec, Task
from compress.data.text_data import TextData
from compress.tasks import get_task


class DataProvider:
    def __init__(self, spec: DataSpec, task: Task, base_dir: Path, seed: int) -> None:
        self.spec = spec
        self.task = task
        self.base_dir = base_dir
        self.seed = seed

    def _load(self, spec: DataSpec, split: str, limit: int | None, sample_seed: int | None, where: str) -> TextData:
        from compress.data.load import load_text_data

        return load_text_data(
            spec,
            split,
            task=self.task,
            limit=limit,
            sample_seed=sample_seed,
            base_dir=self.base_dir,
            where=where,
        )

    @functools.cached_property
    def eval(self) -> TextData:
        return self._load(self.spec, self.spec.split, self.spec.limit, None, "data")

    def _aligned_spec(self) -> DataSpec:
        """The spec training splits are read with: the task may align them with the evaluation split (a
        classifier's label ids must mean the same thing everywhere)."""
        return get_task(self.task).training_spec(self.spec, lambda: self.eval)

    @functools.cached_property
    def train(self) -> TextData:
        seed = self.spec.seed if self.spec.train_limit else None
        return self._load(self._aligned_spec(), self.spec.train_split, self.spec.train_limit, seed, "data")

    @functools.lru_cache(maxsize=4)  # noqa: B019  (one provider per run)
    def calibration(self, samples: int) -> TextData:
        split = self.spec.calibration_split or self.spec.train_split
        return self._load(self._aligned_spec(), split, samples, self.seed, "data")
