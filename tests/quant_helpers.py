"""What the weight-quantization tests share: a step context, tiny calibration windows, a logits probe."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from compress.config import EvalSpec
from compress.data.text_data import TextData
from compress.models.compressed_tensors import QuantizedLinear
from compress.models.handle import ModelHandle
from compress.steps.base import StageContext

# 16 windows of 64 tokens: enough for every layer to see real statistics, seconds on 2 cores.
CALIBRATION = {"samples": 16, "seq_len": 64, "batch_size": 4}


def context(calibration: TextData, tmp_path: Path) -> StageContext:
    """A CPU context whose calibration split is `calibration`; anything else a step asks for fails the test."""

    def unused(*_: object) -> TextData:
        raise AssertionError("not used by quantization steps")

    return StageContext(
        train_data=unused,
        eval_data=unused,
        calibration_data=lambda _rows: calibration,
        score=unused,
        eval_spec=EvalSpec(),
        device=torch.device("cpu"),
        work_dir=tmp_path,
    )


def probe_ids(handle: ModelHandle, data: TextData) -> torch.Tensor:
    """4 × 48 tokens from the end of `data` (the calibration windows are drawn from all of it)."""
    ids = handle.tokenizer(" ".join(data.texts[-60:]), return_tensors="pt")["input_ids"][0]
    return ids[: 4 * 48].reshape(4, 48)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def mean_error(handle: ModelHandle, reference: torch.Tensor, ids: torch.Tensor) -> float:
    return float((logits(handle.model, ids) - reference).pow(2).mean())


def all_plain(handle: ModelHandle) -> bool:
    return not any(isinstance(m, QuantizedLinear) for m in handle.model.modules())


def copy_of(handle: ModelHandle) -> ModelHandle:
    return handle.replace(model=copy.deepcopy(handle.model))


def tiny_llm_files(handle: ModelHandle, tmp_path: Path) -> dict[str, object]:
    """Save `handle` and two WikiText slices (eval.txt, calib.txt) under `tmp_path`; returns the recipe's `model`
    and `data` sections and a calibration section reading calib.txt."""
    from conftest import WIKITEXT

    handle.model.save_pretrained(tmp_path / "tiny")
    handle.tokenizer.save_pretrained(tmp_path / "tiny")
    rows = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    (tmp_path / "eval.txt").write_text("\n".join(rows[:40]), encoding="utf-8")
    (tmp_path / "calib.txt").write_text("\n".join(rows[40:400]), encoding="utf-8")
    return {
        "model": {"source": str(tmp_path / "tiny"), "task": "causal-lm"},
        "data": {"path": "eval.txt", "label": None},
        "calibration": {**CALIBRATION, "data": "calib.txt"},
    }
