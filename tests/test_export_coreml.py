"""Core ML exporter: .mlpackage converted and validated from its spec; run with Core ML on macOS only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_bert

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.errors import ExportError, MissingExtra, NotEvaluable
from compress.export.base import read_metadata
from compress.export.coreml import PACKAGE, CoreMLExporter
from compress.export.coreml_validate import load_spec
from compress.models.handle import ModelHandle
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext
from compress.steps.dynamic_int8 import DynamicInt8

pytest.importorskip("coremltools")


def context(data: TextData, tmp_path: Path) -> StageContext:
    return StageContext(
        train_data=lambda: data,
        eval_data=lambda: data,
        calibration_data=lambda n: data.head(n),
        score=lambda handle: {},
        eval_spec=EvalSpec(max_length=128, batch_sizes=[1, 32]),
        device=torch.device("cpu"),
        work_dir=tmp_path,
    )


def export(handle: ModelHandle, ctx: StageContext, out_dir: Path, **config: object) -> CoreMLExporter:
    exporter = CoreMLExporter(**config)
    out_dir.mkdir()
    exporter.export(handle, ctx, out_dir)
    return exporter


@pytest.fixture(scope="module")
def fp32_package(tiny_tokenizer, sst2_dev, tmp_path_factory) -> Path:
    """tiny_bert (seed 0) as an fp32 package, converted once for the tests that only read it."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    before = dict(_TORCH_OPS_REGISTRY.name_to_func_mapping)
    tmp_path = tmp_path_factory.mktemp("coreml")
    export(make_tiny_bert(tiny_tokenizer), context(sst2_dev, tmp_path), tmp_path / "cm")
    # compress's op converters are installed for the conversion only
    assert _TORCH_OPS_REGISTRY.name_to_func_mapping == before
    return tmp_path / "cm"


def test_tiny_bert_converts_to_a_valid_ml_program(tiny_bert, fp32_package) -> None:
    spec = load_spec(fp32_package / PACKAGE)
    assert spec.WhichOneof("Type") == "mlProgram"
    inputs = spec.description.input
    assert [i.name for i in inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in inputs:
        array = i.type.multiArrayType
        assert array.dataType == array.INT32
        assert [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges] == [(1, 32), (1, 128)]
    assert [o.name for o in spec.description.output] == ["logits"]
    meta = read_metadata(fp32_package)
    assert meta["validation"]["logits_dims"] == [None, 2]  # flexible batch, one logit per label
    assert meta["precision"] == "float32" and meta["validation"]["compressed_weight_ops"] == 0
    # the float32 program keeps the weights at full width: at least the model's parameter bytes
    assert weight_bytes(fp32_package) >= 4 * tiny_bert.num_parameters * 0.95
    assert "coremltools" in (fp32_package / "deploy.md").read_text()


def weight_bytes(folder: Path) -> int:
    return (folder / PACKAGE / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size


@pytest.mark.parametrize("mode,op", [("int8", "constexpr_affine_dequantize"), ("palettize4", "constexpr_lut_to_dense")])
def test_weight_compression_gives_a_smaller_valid_package(
    tiny_bert, sst2_dev, tmp_path, fp32_package, mode, op
) -> None:
    export(tiny_bert, context(sst2_dev, tmp_path), tmp_path / mode, weight_quantization=mode, weight_threshold=0)
    ops = read_metadata(tmp_path / mode)["validation"]["ops"]
    assert ops[op] >= 2 * tiny_bert.model.config.num_hidden_layers  # every layer's weights are compressed
    assert weight_bytes(tmp_path / mode) < 0.5 * weight_bytes(fp32_package)


def test_off_macos_the_runtime_is_not_evaluable(fp32_package, sst2_dev, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(NotEvaluable, match="needs macOS"):
        CoreMLExporter().load_runtime(fp32_package, context(sst2_dev, tmp_path))


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predict needs macOS")
def test_on_macos_predictions_match_pytorch(tiny_bert, sst2_dev, tmp_path) -> None:
    ctx = context(sst2_dev, tmp_path)
    runtime = export(tiny_bert, ctx, tmp_path / "cm", compute_units="cpu_only").load_runtime(tmp_path / "cm", ctx)
    reference = TorchRuntime(tiny_bert)
    for start, size in ((0, 1), (1, 7), (8, 32)):
        enc = tiny_bert.tokenizer(sst2_dev.texts[start : start + size], padding=True, return_tensors="np")
        batch = {k: v.astype(np.int64) for k, v in enc.items()}
        np.testing.assert_allclose(runtime.predict(batch), reference.predict(batch), atol=1e-3)


def test_unconvertible_op_is_an_export_error_naming_op_and_stage(tiny_bert, sst2_dev, tmp_path, monkeypatch) -> None:
    """Without compress's converter for aten::new_ones, coremltools fails on it: the error says so."""
    from compress.export import coreml_ops

    fixes = coreml_ops.fixed_converters()
    monkeypatch.setattr(coreml_ops, "fixed_converters", lambda: {k: v for k, v in fixes.items() if k != "new_ones"})
    with pytest.raises(ExportError, match=r"op 'new_ones'[\s\S]*stage: TorchScript → Core ML MIL"):
        export(tiny_bert, context(sst2_dev, tmp_path), tmp_path / "cm")


def test_dynamic_int8_model_is_a_clear_export_error(tiny_bert, sst2_dev, tmp_path) -> None:
    quantized = DynamicInt8().apply(tiny_bert, context(sst2_dev, tmp_path))
    with pytest.raises(ExportError, match=r"dynamic_int8[\s\S]*weight_quantization: int8"):
        export(quantized, context(sst2_dev, tmp_path), tmp_path / "cm")


def test_missing_coremltools_is_a_missing_extra(tiny_bert, sst2_dev, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingExtra, match=r"compress\[coreml\]"):
        export(tiny_bert, context(sst2_dev, tmp_path), tmp_path / "cm")
