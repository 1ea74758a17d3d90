"""The bucketed compile path (`torch_compile` export): shapes padded to buckets without changing the outputs, the
artifact opened by its format, LM outputs refused; compiling and CUDA graphs on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_context

from compress.artifacts import open_artifact
from compress.data.text_data import TextData
from compress.errors import ExportError, NotEvaluable
from compress.evaluate.batching import tokenize_batches
from compress.export.torch_compiled import TorchCompiledExporter
from compress.models.handle import ModelHandle
from compress.runtime.compiled import CompiledTorchRuntime, batch_buckets, bucket, pad_to
from compress.runtime.torch import TorchRuntime


def test_buckets() -> None:
    assert [bucket(n, [16, 32, 64]) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, 65]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48] and batch_buckets(1) == [1]
    padded = pad_to({"input_ids": np.ones((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)}, 4, 5, 9)
    assert (
        padded["input_ids"].shape == (4, 5) and padded["input_ids"][3, 4] == 9 and padded["attention_mask"][3, 4] == 0
    )


def _batches(handle: ModelHandle, data: TextData, size: int) -> list[dict[str, np.ndarray]]:
    return [b.inputs for b in tokenize_batches(handle.tokenizer, data, size, 64)]


def test_padding_to_buckets_keeps_the_logits(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    batches = _batches(tiny_bert, sst2_dev.head(21), 7)  # 7 rows → padded to 8; lengths → the next bucket
    eager = [TorchRuntime(tiny_bert).predict(b).numpy() for b in batches]
    runtime = CompiledTorchRuntime(tiny_bert, "cpu", dtype="float32", length_buckets=[16, 48], compile=False)
    for batch, expected in zip(batches, eager, strict=True):
        got = runtime.predict(batch).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert runtime.describe()["runtime"] == "pytorch-compiled"


def test_each_runtime_raises_the_recompile_limit_by_its_shapes(tiny_bert: ModelHandle) -> None:
    """Runtimes in one process share one compiled code object: the limit must cover all their shapes, or the later
    ones silently run eagerly (seen on the H200: the teacher, compiled after its student, at its eager speed)."""
    config = torch._dynamo.config
    with config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        first = CompiledTorchRuntime(tiny_bert, "cpu", dtype="float32", length_buckets=[16, 48], max_batch=8)
        shapes = len(first.length_buckets) * len(first.batch_buckets)  # [16, 48, 512] × [1, 2, 4, 8]
        assert shapes == 12 and config.recompile_limit == 8 + 12 and config.accumulated_recompile_limit == 256 + 12
        CompiledTorchRuntime(tiny_bert, "cpu", dtype="float32", length_buckets=[16], max_batch=2)
        assert config.recompile_limit == 8 + 12 + 2 * 2
        CompiledTorchRuntime(tiny_bert, "cpu", dtype="float32", compile=False)  # nothing to compile, nothing raised
        assert config.recompile_limit == 8 + 12 + 2 * 2
    assert config.recompile_limit == 8


def test_causal_lm_outputs_are_refused(tiny_llama: ModelHandle, sst2_dev: TextData, tmp_path: Path) -> None:
    with pytest.raises(NotEvaluable, match="sequence axis"):
        CompiledTorchRuntime(tiny_llama, "cpu", compile=False)
    (tmp_path / "w").mkdir()
    with pytest.raises(ExportError, match="sequence axis"):
        TorchCompiledExporter().export(tiny_llama, make_context(sst2_dev, sst2_dev, tmp_path / "w"), tmp_path)


def test_the_artifact_opens_by_its_format(tiny_bert: ModelHandle, sst2_dev: TextData, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "out").mkdir()
    TorchCompiledExporter(dtype="float32", length_buckets=[32]).export(
        tiny_bert, make_context(sst2_dev, sst2_dev, tmp_path / "w"), tmp_path / "out"
    )
    runtime = open_artifact(tmp_path / "out", device="cpu")  # compiles lazily: opening costs no compile
    assert isinstance(runtime, CompiledTorchRuntime) and runtime.length_buckets == [32, 512]
    assert "compress.open" in (tmp_path / "out" / "deploy.md").read_text()


@pytest.mark.gpu
def test_compiled_bf16_on_cuda_matches_fp32_eager(tiny_bert: ModelHandle, sst2_dev: TextData) -> None:
    batches = _batches(tiny_bert, sst2_dev.head(40), 10)
    eager = [TorchRuntime(tiny_bert).predict(b).cpu().numpy() for b in batches]
    runtime = CompiledTorchRuntime(tiny_bert, "cuda", dtype="bfloat16", length_buckets=[32, 64])
    for _ in range(2):  # the second round replays the captured graphs
        outputs = [runtime.predict(b).cpu().numpy() for b in batches]
    for got, expected in zip(outputs, eager, strict=True):
        np.testing.assert_allclose(got, expected, atol=0.05)
    assert next(runtime.model.parameters()).dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_static_graphs_replay_each_bucket_and_keep_earlier_outputs(
    tiny_bert: ModelHandle, sst2_dev: TextData, compile: bool
) -> None:
    """One captured graph per bucket; a result stays what it was after later calls reuse the graph's buffers."""
    batches = _batches(tiny_bert, sst2_dev.head(40), 10) + _batches(tiny_bert, sst2_dev.head(6), 3)
    eager = [TorchRuntime(tiny_bert, "cuda").predict(b).float().cpu().numpy() for b in batches]
    runtime = CompiledTorchRuntime(
        tiny_bert, "cuda", dtype="float32", length_buckets=[32, 64], compile=compile, cuda_graphs="static"
    )
    first = [runtime.predict(b) for b in batches]  # captures
    again = [runtime.predict(b) for b in batches]  # replays
    assert runtime._graphs is not None and runtime._graphs.captured_shapes == len(runtime._graphs._captured) >= 2
    for kept, replayed, expected in zip(first, again, eager, strict=True):
        np.testing.assert_allclose(kept.cpu().numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(replayed.cpu().numpy(), expected, atol=1e-4)
    assert runtime.describe()["cuda_graphs"] == "static"


def test_static_graphs_are_a_cuda_choice(tiny_bert: ModelHandle) -> None:
    """On the CPU `cuda_graphs: static` changes nothing: the plain bucketed path runs."""
    runtime = CompiledTorchRuntime(tiny_bert, "cpu", dtype="float32", compile=False, cuda_graphs="static")
    assert runtime._graphs is None
