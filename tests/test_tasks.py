"""Task adapters: registered through entry points, validated by name, and the only place task knowledge lives."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import compress as cx
from compress.config import EvalSpec, ModelSpec
from compress.errors import ConfigError
from compress.evaluate import evaluate
from compress.export.tracing import onnx_input_names
from compress.models.handle import ModelHandle
from compress.models.load import AUTO_CLASSES
from compress.registry import TASKS
from compress.runtime.torch import TorchRuntime
from compress.tasks import get_task, task_names
from compress.tasks.causal_lm import CausalLM
from compress.tasks.text_classification import TextClassification


def test_built_in_tasks_come_from_the_entry_point_group() -> None:
    assert {"text-classification", "causal-lm"} <= set(TASKS.names())
    assert isinstance(get_task("text-classification"), TextClassification)
    assert isinstance(get_task("causal-lm"), CausalLM)
    assert AUTO_CLASSES["text-classification"] is AutoModelForSequenceClassification  # what serialize reads
    assert AUTO_CLASSES["causal-lm"] is AutoModelForCausalLM
    assert task_names(supporting_training=True) == ["text-classification"]


def test_an_unknown_task_names_the_field_and_the_closest_task() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'causal_lm' \(did you mean 'causal-lm'\?\)"):
        ModelSpec("x", task="causal_lm")
    with pytest.raises(ConfigError) as caught:
        cx.Recipe.from_dict({"model": {"source": "x", "task": "causal_lm"}, "data": {"path": "d.tsv"}})
    message = str(caught.value)
    assert "model.task: unknown task 'causal_lm' (did you mean 'causal-lm'?)" in message
    assert "Value error" not in message
    with pytest.raises(ConfigError, match=r"model\.task: unknown task"):
        get_task("translation")


def test_default_metric_and_fidelity_per_task() -> None:
    classification, lm = get_task("text-classification"), get_task("causal-lm")
    assert classification.primary_metric(EvalSpec()) == "accuracy"
    assert lm.primary_metric(EvalSpec()) == "perplexity"
    assert lm.primary_metric(EvalSpec(metric="perplexity")) == "perplexity"

    logits = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], dtype=np.float32)
    changed = logits + np.array([[0.0, 0.0], [0.5, 0.0], [-1.5, 0.0]], dtype=np.float32)
    fidelity = classification.fidelity(logits, changed)
    assert fidelity.max_abs_diff == pytest.approx(1.5)
    assert fidelity.agreement == pytest.approx(2 / 3)  # the third row's prediction flipped
    assert classification.fidelity(logits, logits[:, :1]).max_abs_diff is None  # other label count: no comparison

    nll = np.array([3.0, 3.5], dtype=np.float64)
    fidelity = lm.fidelity(nll, nll + np.array([0.25, -0.5]))
    assert fidelity.max_abs_diff == pytest.approx(0.5) and fidelity.agreement is None


def test_export_inputs_come_from_the_task(tiny_bert: ModelHandle, tiny_llama: ModelHandle) -> None:
    # The same WordPiece tokenizer makes token_type_ids, but only the classifier's graph takes them.
    assert onnx_input_names(tiny_bert) == ["input_ids", "attention_mask", "token_type_ids"]
    assert onnx_input_names(tiny_llama) == ["input_ids", "attention_mask"]
    assert get_task("causal-lm").logits_width(tiny_llama.model.config) == tiny_llama.tokenizer.vocab_size
    assert get_task("text-classification").logits_width(tiny_bert.model.config) == 2


class BalancedClassification(TextClassification):
    """A plugin task: a classifier judged by F1 by default; it reads classification outputs."""

    name: ClassVar[str] = "balanced-classification"
    default_metric: ClassVar[str] = "f1"


def test_a_plugin_task_drives_the_evaluator_without_any_branch(
    monkeypatch: pytest.MonkeyPatch, tiny_bert: ModelHandle, sst2_dev
) -> None:
    monkeypatch.setitem(TASKS._items, BalancedClassification.name, BalancedClassification)
    assert ModelSpec("x", task="balanced-classification").task == "balanced-classification"
    handle = tiny_bert.replace(task="balanced-classification")
    spec = EvalSpec(batch_sizes=[16], warmup_batches=0, extra_metrics=["accuracy"])
    evaluation, logits = evaluate(TorchRuntime(handle), sst2_dev, spec, progress=False)
    assert evaluation.primary_metric == "f1" and set(evaluation.metrics) == {"f1", "accuracy"}
    assert logits.shape == (len(sst2_dev), 2)
    with pytest.raises(ConfigError, match=r"perplexity.*is for causal-lm models"):
        evaluate(TorchRuntime(handle), sst2_dev, EvalSpec(metric="perplexity"), progress=False)


def test_training_steps_ask_the_task(tiny_llama: ModelHandle, sst2_dev, tmp_path) -> None:
    from train_helpers import make_context

    from compress.steps.distill.step import Distill
    from compress.steps.finetune import Finetune

    for step, name in ((Finetune(), "finetune"), (Distill(), "distill")):
        with pytest.raises(ConfigError, match="causal-lm task does not support training") as caught:
            step.apply(tiny_llama, make_context(sst2_dev, sst2_dev, tmp_path))
        assert caught.value.where == f"steps.{name}"
        assert "model.task: text-classification" in caught.value.fix


def test_classification_reduction_accepts_numpy_and_device_tensors(tiny_bert: ModelHandle) -> None:
    task = get_task("text-classification")
    tensor = torch.tensor([[0.25, -1.0]], dtype=torch.float16)
    from_torch = task.reduce(tensor, batch=None)  # type: ignore[arg-type]  (logits need no batch)
    from_numpy = task.reduce(tensor.float().numpy(), batch=None)  # type: ignore[arg-type]
    assert from_torch.dtype == np.float32 and np.array_equal(from_torch, from_numpy)
