"""The task adapter interface: what varies with the task is declared here once, never branched on elsewhere.

The runner, the evaluator, the data loader, the model loader and the exporters ask the model's adapter
(`compress.tasks.get_task(handle.task)`) for the head to load, the columns to read, the default metric, the
evaluation batches, the reduction of a batch's outputs, the fidelity measure between two stages, the inputs
an exported graph takes and the deploy sample. A new task is one subclass, registered in the
`compress.tasks` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from compress.config import DataSpec, EvalSpec, ModelSpec
from compress.data.text_data import TextData
from compress.evaluate.batching import Batch
from compress.runtime.base import Runtime, RuntimeOutput

if TYPE_CHECKING:
    from compress.models.handle import ModelHandle
    from compress.result import LatencyStats

# How a PyTorch model turns one batch of input tensors into the outputs this task's reduction reads.
TorchForward = Callable[[dict[str, torch.Tensor]], RuntimeOutput]


@dataclass(frozen=True)
class EvalBatches:
    """The evaluation split as a task scores it."""

    items: int  # what a batch of size n holds n of: rows, or perplexity windows
    targets: np.ndarray  # what the metrics compare the reduced outputs with: labels, or scored tokens per window
    make: Callable[[int], Iterator[Batch]]  # the split in batches of the given size, in data order


@dataclass(frozen=True)
class Fidelity:
    """How closely a stage reproduces its source stage's outputs on the same evaluation data."""

    max_abs_diff: float | None = None
    agreement: float | None = None  # share of equal predictions, where the task has predictions


@dataclass(frozen=True)
class DeploySample:
    """What a deploy.md code sample feeds the model and does with its logits."""

    texts: str  # a Python list literal of example inputs
    post: str  # lines that turn `logits` (numpy) into an answer


class TaskAdapter(ABC):
    name: ClassVar[str]
    # Metrics declare the task whose outputs they read (`@metric(task=...)`); those declaring this name apply.
    # A task that reduces its outputs like another (e.g. a classifier with other data checks) names that one.
    metric_task: ClassVar[str]
    default_metric: ClassVar[str]  # the primary metric when `evaluate.metric` is not set
    reads_labels: ClassVar[bool] = False  # whether the data needs a label column (`data.label`)
    supports_training: ClassVar[bool] = False  # whether finetune and distill (label-supervised) apply
    hub_metrics: ClassVar[bool] = False  # whether unknown metric names fall back to Hugging Face `evaluate`
    export_forward_kwargs: ClassVar[dict[str, Any]] = {}  # passed to forward when tracing for export
    logits_axes: ClassVar[dict[int, str]] = {0: "batch"}  # dynamic axes of an exported graph's logits

    # ------------------------------------------------------------------ model
    @property
    @abstractmethod
    def auto_class(self) -> type:
        """The transformers auto class that loads a model with this task's head."""

    def model_kwargs(self, spec: ModelSpec, label_names: list[str] | None) -> dict[str, Any]:
        """Extra `from_pretrained` arguments for the head (e.g. the number of labels)."""
        return {}

    # ------------------------------------------------------------------ data
    @abstractmethod
    def data_columns(self, spec: DataSpec, where: str) -> dict[str, str]:
        """Role (`text`, `text_pair`, `label`) → column name to read; DataError naming `where` if one is missing."""

    def training_spec(self, spec: DataSpec, eval_data: Callable[[], TextData]) -> DataSpec:
        """The data spec training and calibration splits are read with (e.g. with the eval split's label ids)."""
        return spec

    # ------------------------------------------------------------------ evaluation
    def primary_metric(self, spec: EvalSpec) -> str:
        """`evaluate.metric` when the recipe sets it, else this task's default."""
        return spec.metric if "metric" in spec.model_fields_set else self.default_metric

    @abstractmethod
    def eval_batches(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: TextData,
        spec: EvalSpec,
        max_length: int | None,
        batch_sizes: list[int],
    ) -> EvalBatches:
        """Check the data can be scored at every batch size (before any model runs) and batch it.

        `max_length` is the model's inference limit (a truncate step's), None when it has none.
        """

    @abstractmethod
    def reduce(self, outputs: RuntimeOutput, batch: Batch) -> np.ndarray:
        """One batch's outputs → what the metrics read (host numpy), computed on the outputs' device."""

    def throughput_metrics(self, largest_batch: LatencyStats) -> dict[str, float]:
        """Task-specific throughput figures reported beside the metrics (e.g. tokens per second)."""
        return {}

    def generation_metrics(self, runtime: Runtime, data: TextData, spec: EvalSpec) -> dict[str, float]:
        """Speed figures of generation (prefill, decode) where the task generates; none by default."""
        return {}

    @abstractmethod
    def fidelity(self, source: np.ndarray, outputs: np.ndarray) -> Fidelity:
        """Compare a stage's reduced outputs with its source stage's (same data, same order)."""

    def torch_forward(self, model: torch.nn.Module) -> TorchForward:
        """How the PyTorch runtime runs `model` (already on its device, in eval mode); default: the logits."""

        def forward(inputs: dict[str, torch.Tensor]) -> RuntimeOutput:
            return model(**inputs, **self.export_forward_kwargs).logits

        return forward

    # ------------------------------------------------------------------ export
    def model_input_names(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """The inputs an exported graph takes, in order (before filtering by what forward accepts)."""
        return ["input_ids", "attention_mask"]

    def default_max_length(self, spec: EvalSpec) -> int:
        """The sequence length a model runs at when no truncate step set one."""
        return spec.max_length

    @abstractmethod
    def logits_width(self, config: PretrainedConfig) -> int:
        """The size of the logits' last axis (Core ML validates the package against it)."""

    @abstractmethod
    def deploy_sample(self, model: ModelHandle) -> DeploySample:
        """Example inputs and the post-processing lines of an artifact's deploy.md sample."""
