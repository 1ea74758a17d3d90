"""Text classification: a sequence classifier scored on labelled rows by accuracy (or F1, MCC, hub metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedTokenizerBase

from compress.config import DataSpec, EvalSpec, ModelSpec
from compress.data.fields import setting
from compress.data.text_data import TextData
from compress.errors import CompressError, DataError, ModelError, clip
from compress.evaluate.batching import Batch, tokenize_batches
from compress.models.source import resolve_source
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
        """One output per label; the label names become the config's id2label when they fit.

        A model that already has a classification head keeps it: its outputs are fixed, so data whose classes
        do not fit them is refused here with the fix (transformers would stop on a size mismatch, or, when only
        the order differs, every id would silently mean another class).
        """
        kwargs: dict[str, Any] = {}
        head = self.head_label_names(spec)
        if head is not None:
            _check_head_fits(head, spec, label_names)
            if not label_names or _are_ids(label_names) or len(label_names) != len(head) or label_names == head:
                return kwargs  # the head stays as saved, names included (ids within it were checked above)
        num_labels = spec.num_labels or (len(label_names) if label_names else None)
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        if label_names and len(label_names) == num_labels:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        return kwargs

    def head_label_names(self, spec: ModelSpec) -> list[str] | None:
        """The labels, in id order, of the classification head `spec.source` was saved with; None when it has none
        (a base or masked-LM checkpoint, whose head is new and sized from the data) or its config is not reachable
        (loading the model then reports why)."""
        return head_label_names(spec)

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


def head_label_names(spec: ModelSpec) -> list[str] | None:
    """See `TextClassification.head_label_names`. A checkpoint has a fine-tuned classification head when it was
    saved from a `...ForSequenceClassification` class (transformers records the class in `architectures`)."""
    if spec.gguf_file is not None:
        return None  # GGUF files hold language models; their config is read another way
    try:
        resolved = resolve_source(spec.source)
        config = AutoConfig.from_pretrained(
            resolved.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (CompressError, OSError, ValueError):
        return None
    if not any(str(name).endswith("ForSequenceClassification") for name in config.architectures or []):
        return None
    id2label = {int(i): str(name) for i, name in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]


def _are_ids(names: list[str]) -> bool:
    """Names the data layer gives integer labels ("0", "1", ...): the labels are the ids themselves."""
    return names == [str(i) for i in range(len(names))]


def generic_names(names: list[str]) -> bool:
    """transformers' placeholder names (LABEL_0, LABEL_1, ...): the head was trained without naming its classes."""
    return names == [f"LABEL_{i}" for i in range(len(names))]


def _check_head_fits(head: list[str], spec: ModelSpec, label_names: list[str] | None) -> None:
    if spec.num_labels is not None and spec.num_labels != len(head):
        raise ModelError(
            f"'{clip(spec.source)}' already has a classification head with {len(head)} outputs "
            f"({clip(str(head))}), but model.num_labels is {spec.num_labels}",
            where="model.num_labels",
            fix=f"remove model.num_labels (the head has {len(head)}), or start from a checkpoint without a "
            "classification head (a base model) to train a new head",
        )
    if not label_names or [name.lower() for name in label_names] == [name.lower() for name in head]:
        return
    if _are_ids(label_names) and len(label_names) <= len(head):
        return  # integer labels are ids, and every one of them has an output
    if len(label_names) == len(head) and (
        generic_names(head) or sorted(map(str.lower, label_names)) != sorted(map(str.lower, head))
    ):
        return  # as many classes as outputs, and no head name to contradict: the data's names name the outputs
    model_order = ", ".join(head)
    problem = (
        f"names the same classes in another order ({clip(str(label_names))}): every id would mean another class"
        if len(label_names) == len(head)
        else f"has {len(label_names)} ({clip(str(label_names))})"
    )
    raise DataError(
        f"'{clip(spec.source)}' already has a classification head with {len(head)} labels ({clip(str(head))}); "
        f"the data {problem}",
        where="data.label_names",
        fix=f"set {setting('data.label_names')} to the head's labels in id order, e.g. [{clip(model_order)}], "
        "naming each output with the data's label for it; or, to train a new head for these classes, start from a "
        "checkpoint without a classification head (a base model)",
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
