"""Without llmcompressor, `backend: llmcompressor` fails with MissingExtra naming the setting and the fix.
The import is made to fail here, so this runs whether or not llmcompressor is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from compress.errors import MissingExtra
from compress.models.compressed_tensors import QuantizedLinear
from compress.models.handle import ModelHandle
from compress.steps.quantize.awq import AWQConfig
from compress.steps.quantize.gptq import GPTQConfig
from compress.steps.quantize.llmcompressor_backend import quantize_with_llmcompressor


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_missing_llmcompressor_names_the_fix(
    method: str, tiny_llama: ModelHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import llmcompressor` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "llmcompressor", None)
    config = (GPTQConfig if method == "gptq" else AWQConfig)(group_size=16)
    batches = [torch.zeros(1, 8, dtype=torch.int64)]
    with pytest.raises(MissingExtra) as error:
        quantize_with_llmcompressor(
            method, tiny_llama.model, tiny_llama.tokenizer, config, batches, torch.device("cpu"), tmp_path
        )
    assert error.value.where == f"{method}.backend"
    assert "pip install llmcompressor==0.14.0.1" in error.value.fix and "nox -s llmcompressor" in error.value.fix
    assert not any(isinstance(m, QuantizedLinear) for m in tiny_llama.model.modules())
    assert not list(tmp_path.iterdir())  # nothing was done
