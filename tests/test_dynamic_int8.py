"""The dynamic_int8 step on a tiny BERT: which layers it swaps, closeness to FP32, what it records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.models.handle import ModelHandle
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext
from compress.steps.dynamic_int8 import DynamicInt8, DynamicInt8Config


def logits(handle: ModelHandle, data: TextData) -> np.ndarray:
    encoded = handle.tokenizer(data.texts, truncation=True, max_length=64, padding=True, return_tensors="np")
    return TorchRuntime(handle).predict({k: v.astype(np.int64) for k, v in encoded.items()}).numpy()


def context(data: TextData, tmp_path) -> StageContext:
    def unused(*_: object) -> TextData:
        raise AssertionError("dynamic_int8 needs no data")

    return StageContext(
        train_data=unused,
        eval_data=unused,
        calibration_data=unused,
        score=unused,
        eval_spec=EvalSpec(),
        device=torch.device("cpu"),
        work_dir=tmp_path,
    )


def linear_names(model: torch.nn.Module, kind: type) -> set[str]:
    return {name for name, module in model.named_modules() if type(module) is kind}


def test_every_linear_becomes_dynamic_int8_and_outputs_stay_close(tiny_bert, sst2_dev, tmp_path) -> None:
    fp32_linears = linear_names(tiny_bert.model, torch.nn.Linear)
    # Measured first: the step quantizes the model it is given, in place.
    reference, fp32_bytes = logits(tiny_bert, sst2_dev), TorchRuntime(tiny_bert).size_bytes()
    linear_bytes = sum(m.weight.numel() * 4 for m in tiny_bert.model.modules() if isinstance(m, torch.nn.Linear))
    out = DynamicInt8().apply(tiny_bert, context(sst2_dev, tmp_path))

    assert out.model is tiny_bert.model  # transformed in place, never copied
    assert linear_names(out.model, DynamicLinear) == fp32_linears
    assert not linear_names(out.model, torch.nn.Linear)
    assert all(m.weight().dtype == torch.qint8 for m in out.model.modules() if isinstance(m, DynamicLinear))

    quantized = logits(out, sst2_dev)
    scale = np.abs(reference).max()
    assert np.abs(quantized - reference).max() <= 0.05 * scale
    assert np.mean(quantized.argmax(-1) == reference.argmax(-1)) >= 0.9
    # int8 Linear weights take a quarter of their FP32 bytes, plus a scale and zero point per output channel
    # (large in a 32-wide model); embeddings stay FP32 and dominate this tiny model's size.
    assert fp32_bytes - TorchRuntime(out).size_bytes() >= 0.6 * linear_bytes


def test_skip_keeps_named_layers_in_fp32_and_is_recorded(tiny_bert, sst2_dev, tmp_path) -> None:
    step = DynamicInt8(skip=["classifier", "attention.output"], per_channel=False)
    classifier = tiny_bert.model.classifier.weight.detach().clone()
    out = step.apply(tiny_bert, context(sst2_dev, tmp_path))

    kept = linear_names(out.model, torch.nn.Linear)
    assert kept == {"classifier"} | {f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)}
    assert "bert.encoder.layer.0.attention.self.query" in linear_names(out.model, DynamicLinear)
    assert torch.equal(out.model.classifier.weight, classifier)
    assert out.transforms == [
        {"name": "dynamic_int8", "per_channel": False, "skip": ["classifier", "attention.output"]}
    ]
    assert tiny_bert.transforms == []  # the handle's record is new; only the module is shared
    assert TorchRuntime(out).describe()["precision"] == "int8-dynamic"


def test_transform_replays_to_the_same_structure(tiny_bert, sst2_dev, tmp_path) -> None:
    """What `transforms` records is enough to rebuild the quantized structure on load."""
    from conftest import make_tiny_bert

    from compress.models.transforms import replay

    out = DynamicInt8(skip=["classifier"]).apply(tiny_bert, context(sst2_dev, tmp_path))
    rebuilt = replay(make_tiny_bert(tiny_bert.tokenizer).model, out.transforms)
    assert linear_names(rebuilt, DynamicLinear) == linear_names(out.model, DynamicLinear)


def test_config_rejects_unknown_engine_and_fields() -> None:
    with pytest.raises(ValueError, match="engine"):
        DynamicInt8Config(engine="cuda")
    with pytest.raises(ValueError, match="skipp"):
        DynamicInt8Config(skipp=["classifier"])
