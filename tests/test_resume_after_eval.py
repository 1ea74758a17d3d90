"""A run killed while it evaluates a finished step resumes by evaluating the saved model, not by redoing the step."""

from __future__ import annotations

from pathlib import Path

import pytest
from quant_helpers import tiny_llm_files

from compress.models.handle import ModelHandle
from compress.recipe import Recipe
from compress.runner import Runner
from compress.steps.quantize.rtn import RTN


def test_the_step_is_not_redone(tiny_llama: ModelHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_llm_files(tiny_llama, tmp_path)
    raw = {
        "model": files["model"],
        "data": files["data"],
        "evaluate": {"batch_sizes": [1], "seq_len": 64, "decode_tokens": 0},
        "steps": [{"rtn": {"group_size": 16}}],
    }
    evaluate = Runner._evaluate

    def killed_in_step_evaluation(self, result, *args, **kwargs):
        if result.kind == "step":
            raise KeyboardInterrupt  # as a SIGINT would, mid-evaluation
        return evaluate(self, result, *args, **kwargs)

    monkeypatch.setattr(Runner, "_evaluate", killed_in_step_evaluation)
    with pytest.raises(KeyboardInterrupt):
        Recipe.from_dict(raw, base_dir=tmp_path).run(tmp_path / "run", progress=False)
    monkeypatch.setattr(Runner, "_evaluate", evaluate)

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the finished step ran again")

    monkeypatch.setattr(RTN, "apply", must_not_run)
    result = Recipe.from_dict(raw, base_dir=tmp_path).run(tmp_path / "run", progress=False)
    _, rtn = result.stages
    assert rtn.status == "ok" and rtn.metrics["perplexity"] > 0 and rtn.details["quantized_modules"] == 14
