"""The `aoti` export (AOTInductor `.pt2`): the package loads without model code and gives the stage's logits.

Compiling takes ~100 s even for the tiny model on 2 CPU cores, too long for CI's budget: on CPU the test runs
only with COMPRESS_COMPILE_TESTS=1; on a GPU machine it always runs (bf16, CUDA kernels)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_context

from compress.artifacts import open_artifact
from compress.data.text_data import TextData
from compress.errors import ExportError
from compress.evaluate.batching import tokenize_batches
from compress.export.aoti import AOTInductorExporter
from compress.export.base import read_metadata
from compress.models.handle import ModelHandle
from compress.runtime.aoti import AOTInductorRuntime
from compress.runtime.torch import TorchRuntime

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("COMPRESS_COMPILE_TESTS") != "1",
    reason="AOTInductor compiles for minutes on CPU; set COMPRESS_COMPILE_TESTS=1 (runs by default on a GPU)",
)


def test_package_runs_without_model_code_and_matches(tiny_bert: ModelHandle, sst2_dev: TextData, tmp_path: Path):
    ctx = make_context(sst2_dev, sst2_dev, tmp_path)
    ctx.device = torch.device(DEVICE)
    out = tmp_path / "aoti"
    out.mkdir()
    try:
        AOTInductorExporter(max_batch=64).export(tiny_bert, ctx, out)
    except ExportError as exc:
        if "kills the process" not in str(exc):
            raise
        pytest.xfail(f"torch's AOTInductor loader crashes on this machine: {exc}")  # caught as an error, as it must
    meta = read_metadata(out)
    assert meta["format"] == "aoti" and meta["device"] == DEVICE
    assert meta["precision"] == ("bfloat16" if DEVICE == "cuda" else "float32")
    assert next(tiny_bert.model.parameters()).dtype == torch.float32  # the stage's model is left as it was
    runtime = open_artifact(out, device=DEVICE)
    assert isinstance(runtime, AOTInductorRuntime)
    eager = TorchRuntime(tiny_bert, DEVICE)
    tolerance = 0.05 if DEVICE == "cuda" else 1e-4
    for batch in tokenize_batches(tiny_bert.tokenizer, sst2_dev.head(24), 12, 64):  # two shapes, one package
        got = runtime.predict(batch.inputs).cpu().numpy()
        np.testing.assert_allclose(got, eager.predict(batch.inputs).float().cpu().numpy(), atol=tolerance)
