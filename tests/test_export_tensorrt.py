"""TensorRT export: Q/DQ ONNX that TensorRT takes, a reproducible build command, the engine where possible."""

from __future__ import annotations

import collections
import importlib.util

import numpy as np
import onnx
import pytest
import test_export_onnx as onnx_tests
import torch
from test_export_onnx import agreement, batches, make_context

from compress.config import EvalSpec
from compress.errors import ConfigError, ExportError, NotEvaluable
from compress.export.base import read_metadata
from compress.export.tensorrt import TensorRTExporter
from compress.runtime.onnxruntime import OnnxRuntime
from compress.runtime.tensorrt import tensorrt_unavailable_reason
from compress.runtime.torch import TorchRuntime

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
# The same tiny models as the ONNX tests (fixtures are found by name in this module).
bert, llama = onnx_tests.bert, onnx_tests.llama


def run_export(handle, tmp_path, calibration=None, **config):
    exporter = TensorRTExporter(**config)
    out_dir = tmp_path / "artifact"
    out_dir.mkdir(parents=True)
    ctx = make_context(tmp_path, calibration)
    exporter.export(handle, ctx, out_dir)
    return exporter, ctx, out_dir


def test_int8_writes_symmetric_qdq_graph_that_runs_close_to_fp32(bert, sst2_dev, sst2_train, tmp_path):
    _, _, out_dir = run_export(bert, tmp_path, sst2_train, precision="int8", build_engine="never",
                               calibration_samples=32)  # fmt: skip
    path = out_dir / "model.onnx"
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    assert ops["QuantizeLinear"] >= 8 and ops["DequantizeLinear"] >= 8
    assert not {"Attention", "SkipLayerNormalization"} & set(ops)  # plain ONNX ops only: TensorRT parses them
    # TensorRT takes only symmetric INT8: signed int8 with every zero point 0.
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    zero_points = [initializers[n.input[2]] for n in graph.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)

    runtime = OnnxRuntime(path, bert.tokenizer, "text-classification", None, threads=1)
    same, correlation = agreement(runtime, TorchRuntime(bert), sst2_dev, bert)
    assert same >= 0.95 and correlation >= 0.9


def test_without_tensorrt_the_artifact_says_how_to_build_the_engine(bert, tmp_path):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: the engine gets built")
    exporter, ctx, out_dir = run_export(bert, tmp_path, precision="fp16")
    meta = read_metadata(out_dir)
    assert meta["engine_file"] is None and meta["engine_reason"]
    command = meta["build_command"]
    assert command.startswith("trtexec --onnx=model.onnx --saveEngine=model.engine")
    # Profile defaults: batch up to the largest evaluation batch (16), sequence up to the context (128).
    assert "--maxShapes=input_ids:16x128,attention_mask:16x128,token_type_ids:16x128" in command
    assert "--fp16" in command
    deploy = (out_dir / "deploy.md").read_text()
    assert "NOT built" in deploy and command in deploy and "tensorrt" in deploy
    assert (out_dir / "model.onnx").exists() and not (out_dir / "model.engine").exists()

    with pytest.raises(NotEvaluable) as info:
        exporter.load_runtime(out_dir, ctx)
    assert "TensorRT engine not built" in str(info.value) and command in str(info.value)


def test_build_engine_always_fails_clearly_without_tensorrt(bert, tmp_path):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(ExportError, match="build_engine"):
        run_export(bert, tmp_path, build_engine="always")


def test_profile_follows_config_and_rejects_disorder(bert, tmp_path):
    ctx = make_context(tmp_path)
    shapes = TensorRTExporter(max_sequence=64, opt_batch=4, max_batch=8).profile(bert, ctx)
    assert shapes == {"min": (1, 1), "opt": (4, 64), "max": (8, 64)}
    ctx.eval_spec = EvalSpec(batch_sizes=[1, 32], max_length=96)
    assert TensorRTExporter().profile(bert, ctx)["max"] == (32, 96)
    with pytest.raises(ConfigError, match="min ≤ opt ≤ max"):
        TensorRTExporter(opt_batch=64, max_batch=8).profile(bert, ctx)


def test_causal_lm_graph_takes_no_token_type_ids(llama, tmp_path):
    _, _, out_dir = run_export(llama, tmp_path, precision="fp32", build_engine="never")
    assert "token_type_ids" not in read_metadata(out_dir)["build_command"]
    assert read_metadata(out_dir)["shapes"]["max"] == [16, 256]  # capped by the model's context


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="the tensorrt package is not installed")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_and_matches_pytorch(bert, sst2_dev, sst2_train, tmp_path, precision):
    config = {
        "precision": precision,
        "build_engine": "always",
        "max_sequence": 128,
        "calibration_samples": 32,
    }
    exporter, ctx, out_dir = run_export(bert, tmp_path, sst2_train, calibration_samples=32, **config)
    assert (out_dir / "model.engine").exists()
    runtime = exporter.load_runtime(out_dir, ctx)
    reference = TorchRuntime(bert, device="cpu")
    for batch in batches(bert, sst2_dev, 16):
        got, want = runtime.predict(batch), reference.predict(batch)
        assert got.shape == want.shape and got.dtype == np.float32
        if precision == "fp32":
            np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    same, correlation = agreement(runtime, reference, sst2_dev, bert)
    assert same >= 0.95 and correlation >= 0.9
    assert runtime.size_bytes() > 0 and runtime.describe()["runtime"] == "tensorrt"
    torch.cuda.synchronize()
