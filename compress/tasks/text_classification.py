"""Text classification: a sequence classifier scored on labelled rows by accuracy (or F1, MCC, hub metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedTokenizerBase

from compress.config import DataSpec, EvalSpec, ModelSpec
from compress.data.text_data import TextData
from compress.errors import DataError, ModelError
from compress.evaluate.batching import Batch, tokenize_batches
from compress.runtime.base import RuntimeOutput, as_tensor
from compress.tasks.base import DeploySample, EvalBatches, Fidelity, TaskAdapter

if TYPE_CHECKING:
    from compress.models.handle import ModelHandle


class TextClassification(TaskAdapter):
    """Labels for single texts or text pairs; outputs are logits (rows, labels)."""

    name: ClassVar[str] = "text-classification"
    metric_task: ClassVar[str] = "text-classification"
    default_metric: ClassVar[str] = "accuracy"
    reads_labels: ClassVar[bool] = True
    supports_training: ClassVar[bool] = True
    hub_metrics: ClassVar[bool] = True

    @property
    def auto_class(self) -> type:
        return AutoModelForSequenceClassification

    def model_kwargs(self, spec: ModelSpec, label_names: list[str] | None) -> dict[str, Any]:
        """One output per label; the label names become the config's id2label when they fit."""
        kwargs: dict[str, Any] = {}
        num_labels = spec.num_labels or (len(label_names) if label_names else None)
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        if label_names and len(label_names) == num_labels:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        return kwargs

    def data_columns(self, spec: DataSpec, where: str) -> dict[str, str]:
        if spec.label is None:
            raise DataError(
                "text classification needs a label column, but data.label is null",
                where=f"{where}.label",
                fix=f"set {where}.label to the column holding the labels",
            )
        columns = {"text": spec.text, "label": spec.label}
        if spec.text_pair is not None:
            columns["text_pair"] = spec.text_pair
        return columns

    def training_spec(self, spec: DataSpec, eval_data: Callable[[], TextData]) -> DataSpec:
        """Training splits use the evaluation split's label names, so ids mean the same thing everywhere."""
        if spec.label_names:
            return spec
        return spec.model_copy(update={"label_names": eval_data().label_names})

    def eval_batches(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: TextData,
        spec: EvalSpec,
        max_length: int | None,
        batch_sizes: list[int],
    ) -> EvalBatches:
        check_data(data, tokenizer, batch_sizes)
        limit = max_length or spec.max_length
        return EvalBatches(
            items=len(data),
            targets=np.asarray(data.labels, dtype=np.int64),
            make=lambda batch_size: tokenize_batches(tokenizer, data, batch_size, limit),
        )

    def reduce(self, outputs: RuntimeOutput, batch: Batch) -> np.ndarray:
        """The logits themselves: (rows, labels) is already small, so they go to the host as float32."""
        return as_tensor(outputs).float().cpu().numpy()

    def fidelity(self, source: np.ndarray, outputs: np.ndarray) -> Fidelity:
        """Largest logit difference and the share of rows whose predicted label is unchanged."""
        if source.shape != outputs.shape:  # e.g. a stage with another number of labels
            return Fidelity()
        if not outputs.size:
            return Fidelity(max_abs_diff=0.0)
        agreement = float(np.mean(source.argmax(-1) == outputs.argmax(-1))) if outputs.ndim == 2 else None
        return Fidelity(max_abs_diff=float(np.max(np.abs(source - outputs))), agreement=agreement)

    def model_input_names(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        """token_type_ids too when the tokenizer makes them (BERT-style sentence pairs)."""
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in tokenizer.model_input_names:
            names.append("token_type_ids")
        return names

    def logits_width(self, config: PretrainedConfig) -> int:
        return int(config.num_labels)

    def deploy_sample(self, model: ModelHandle) -> DeploySample:
        labels = model.label_names or []
        return DeploySample(
            texts='["a gripping, beautifully made film", "tedious and overlong"]',
            post=f"labels = {labels!r}\nprint([labels[i] if labels else i for i in logits.argmax(-1)])",
        )


def check_data(data: TextData, tokenizer: PreTrainedTokenizerBase, batch_sizes: list[int]) -> None:
    """Fail before any model runs if the data or tokenizer cannot give scored batches."""
    if len(data) == 0:
        raise DataError("the evaluation split has no rows", where="data.split", fix="point data at a non-empty split")
    if data.labels is None:
        raise DataError(
            "the evaluation split has no labels, so no classification metric can be computed",
            where="data.label",
            fix="set data.label to the column holding the labels",
        )
    if tokenizer.pad_token is None and max(batch_sizes) > 1:
        raise ModelError(
            "the tokenizer has no padding token, so batches larger than 1 cannot be built",
            where="evaluate.batch_sizes",
            fix="set a pad token on the tokenizer (e.g. pad_token = eos_token) or use batch size 1 only",
        )
