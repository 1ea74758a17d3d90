"""NaN is caught: a diverging training run stops with the fix, and a model with non-finite outputs fails its
evaluation instead of reporting the accuracy of argmax-over-NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_context

from compress.errors import ConfigError, ModelError
from compress.evaluate.evaluator import check_finite
from compress.steps.finetune import Finetune


def test_an_infinite_learning_rate_stops_training(tiny_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    step = Finetune(epochs=1, batch_size=16, learning_rate=1e30, progress=False)
    with pytest.raises(ConfigError) as error:
        step.apply(tiny_bert, make_context(sst2_train, sst2_dev, tmp_path))
    assert error.value.where == "finetune" and "diverged" in str(error.value) and "learning_rate" in error.value.fix


def test_non_finite_outputs_fail_the_evaluation() -> None:
    check_finite(np.zeros((4, 2)), "pytorch")
    outputs = np.zeros((4, 2))
    outputs[1, 0] = np.nan
    outputs[3, 1] = np.inf
    with pytest.raises(ModelError, match="2 of 4 outputs in pytorch are NaN or infinite"):
        check_finite(outputs, "pytorch")


def test_a_nan_model_fails_its_stage(tiny_bert, tmp_path: Path) -> None:
    from compress.config import EvalSpec
    from compress.data.text_data import TextData
    from compress.evaluate.evaluator import evaluate
    from compress.runtime.torch import TorchRuntime

    with torch.no_grad():
        tiny_bert.model.classifier.weight.fill_(float("nan"))
    data = TextData(["a good film", "a bad film"], labels=[1, 0])
    with pytest.raises(ModelError, match="NaN or infinite"):
        evaluate(TorchRuntime(tiny_bert), data, EvalSpec(batch_sizes=[1]), progress=False)
