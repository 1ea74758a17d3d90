"""Lazy access to the splits a recipe uses: each is read once, on first use, with consistent label ids.

The classes (label names, in id order) are decided once, for every split:
  * `data.label_names` when the recipe gives them (`compress eval` gives the model's own head labels);
  * else the train split's labels, when `data.path` gives it rows of its own (a mapping entry, a saved
    DatasetDict's split): the evaluation and calibration splits keep to them, and a label the train split lacks is
    an error naming it, its file and rows (a class the model was never trained on would otherwise add an output);
  * else the one source's own labels (a single file serves every split; a hub dataset's ClassLabel).
`train` is what training steps read (finetune, distill: `StageContext.train_data`): it refuses rows that are also
the evaluation rows (one file without `data.split_ratio`, the same file twice, one split named for both).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from compress.config import DataSpec, Task
from compress.data.labels import ReferenceLabels
from compress.data.text_data import TextData
from compress.distributed import is_main_process
from compress.tasks import get_task


class DataProvider:
    def __init__(self, spec: DataSpec, task: Task, base_dir: Path, seed: int) -> None:
        self.spec = spec
        self.task = task
        self.base_dir = base_dir
        self.seed = seed
        self._announced: set[str] = set()

    def _load(
        self,
        spec: DataSpec,
        split: str,
        limit: int | None,
        sample_seed: int | None,
        *,
        reference: ReferenceLabels | None = None,
        training: bool = False,
    ) -> TextData:
        from compress.data.load import load_text_data

        data = load_text_data(
            spec,
            split,
            task=self.task,
            limit=limit,
            sample_seed=sample_seed,
            base_dir=self.base_dir,
            where="data",
            reference=reference,
            training=training,
        )
        if data.note and data.note not in self._announced and is_main_process():
            # How many rows train and how many evaluate is what a user checks first when scores look off.
            self._announced.add(data.note)
            print(f"data: {data.note}", file=sys.stderr, flush=True)
        return data

    @functools.cached_property
    def label_reference(self) -> ReferenceLabels | None:
        """The train split's label names, when they decide the classes (see the module docstring)."""
        from compress.data.readers import has_own_rows

        if not get_task(self.task).reads_labels or self.spec.label_names is not None:
            return None
        if not has_own_rows(self.spec, self.spec.train_split, self.base_dir):
            return None
        # One row is converted, but the names come from every row of the split (compress.data.labels).
        train = self._load(self.spec, self.spec.train_split, 1, None)
        return ReferenceLabels(train.label_names or [], train.source, self.spec.train_split)

    @functools.cached_property
    def eval(self) -> TextData:
        return self._load(self.spec, self.spec.split, self.spec.limit, None, reference=self.label_reference)

    def _aligned_spec(self) -> DataSpec:
        """The spec training splits are read with: the task may align them with the evaluation split."""
        return get_task(self.task).training_spec(self.spec, lambda: self.eval)

    @functools.cached_property
    def train(self) -> TextData:
        seed = self.spec.seed if self.spec.train_limit else None
        return self._load(self._aligned_spec(), self.spec.train_split, self.spec.train_limit, seed, training=True)

    @functools.lru_cache(maxsize=4)  # noqa: B019  (one provider per run)
    def calibration(self, samples: int) -> TextData:
        split = self.spec.calibration_split or self.spec.train_split
        # A third split keeps to the train split's classes; the train split itself defines them.
        reference = self.label_reference if split != self.spec.train_split else None
        return self._load(self._aligned_spec(), split, samples, self.seed, reference=reference)
