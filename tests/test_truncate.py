"""The truncate step on a tiny BERT, scored for real (TorchRuntime predictions → accuracy on SST-2 dev)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_bert
from pydantic import ValidationError

from compress.config import EvalSpec, format_validation_error
from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.recipe import Recipe
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext
from compress.steps.truncate import (
    Truncate,
    TruncateConfig,
    candidate_lengths,
    shortest_within_budget,
    token_lengths,
)


def accuracy(handle: ModelHandle, data: TextData, eval_spec: EvalSpec) -> float:
    """Predict every example the way a served model would (truncated to the handle's max_length)."""
    runtime = TorchRuntime(handle)
    max_length = handle.max_length or eval_spec.max_length
    predictions = []
    for start in range(0, len(data), 16):
        batch = handle.tokenizer(
            data.texts[start : start + 16],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="np",
        )
        predictions.append(runtime.predict({k: v.astype(np.int64) for k, v in batch.items()}).argmax(-1))
    return float(np.mean(np.concatenate(predictions) == np.asarray(data.labels)))


@pytest.fixture
def content_sensitive_bert(tiny_tokenizer, sst2_dev) -> ModelHandle:
    """A random tiny BERT whose classifier bias is centred on the dev margins, so its predictions depend on
    the text (an uncentred random BERT predicts one class for everything, which no truncation changes).
    Seed 0 is one where the shortest derived candidate (24) loses accuracy, so the search has to go on."""
    handle = make_tiny_bert(tiny_tokenizer, seed=0)
    encoded = tiny_tokenizer(sst2_dev.texts, padding=True, return_tensors="np")
    logits = TorchRuntime(handle).predict({k: v.astype(np.int64) for k, v in encoded.items()})
    with torch.no_grad():
        handle.model.classifier.bias[1] -= float(np.median(logits[:, 1] - logits[:, 0]))
    return handle


def context(data: TextData, tmp_path: Path, calls: list[int] | None = None) -> StageContext:
    spec = EvalSpec(max_length=128)

    def score(handle: ModelHandle) -> dict[str, float]:
        if calls is not None:
            calls.append(handle.max_length)
        return {"accuracy": accuracy(handle, data, spec)}

    return StageContext(
        train_data=lambda: data,
        eval_data=lambda: data,
        calibration_data=lambda n: data.head(n),
        score=score,
        eval_spec=spec,
        device=torch.device("cpu"),
        work_dir=tmp_path,
    )


def test_fixed_max_length_sets_it_and_leaves_weights_alone(tiny_bert, sst2_dev, tmp_path) -> None:
    before = {k: v.clone() for k, v in tiny_bert.model.state_dict().items()}
    out = Truncate(max_length=24).apply(tiny_bert, context(sst2_dev, tmp_path))
    assert out.max_length == 24 and tiny_bert.max_length is None  # the input handle is not mutated
    assert out.transforms == tiny_bert.transforms
    assert all(torch.equal(before[k], v) for k, v in out.model.state_dict().items())
    # it really truncates: the longest dev sentence now scores on 24 tokens
    enc = out.tokenizer(sst2_dev.texts, truncation=True, max_length=out.max_length)
    assert max(len(ids) for ids in enc["input_ids"]) == 24


def test_fixed_max_length_beyond_position_embeddings_is_a_config_error(tiny_bert, sst2_dev, tmp_path) -> None:
    with pytest.raises(ConfigError, match="128 position embeddings") as info:
        Truncate(max_length=300).apply(tiny_bert, context(sst2_dev, tmp_path))
    assert info.value.where == "truncate.max_length"


def test_auto_picks_the_shortest_length_within_budget(content_sensitive_bert, sst2_dev, tmp_path) -> None:
    model = content_sensitive_bert
    calls: list[int] = []
    ctx = context(sst2_dev, tmp_path, calls)
    step = Truncate(max_length="auto", max_accuracy_drop=0.02)
    step.progress = False
    out = step.apply(model, ctx)

    reference = accuracy(model.replace(max_length=128), sst2_dev, ctx.eval_spec)
    chosen = accuracy(out, sst2_dev, ctx.eval_spec)
    assert out.max_length <= 128
    assert reference - chosen <= 0.02 + 1e-9  # re-measured, not taken from the step's own records
    assert calls[0] == 128  # the untruncated reference is measured first
    results = step.search_results
    assert results[0] == {
        "max_length": 128,
        "metric": reference,
        "drop": 0.0,
        "within_budget": True,
        "reference": True,
    }
    searched = results[1:]
    assert len(searched) >= 2, "this model was chosen so that a short candidate fails; check the fixture"
    assert [r["max_length"] for r in searched] == sorted(r["max_length"] for r in searched)
    assert searched[-1]["max_length"] == out.max_length and searched[-1]["within_budget"]
    # every shorter candidate it tried really was over budget (so the choice is the shortest that fits)
    for record in searched[:-1]:
        assert record["drop"] > 0.02
        truncated = model.replace(max_length=record["max_length"])
        assert accuracy(truncated, sst2_dev, ctx.eval_spec) == pytest.approx(record["metric"])
    # the derived candidates stop at the longest dev sentence, so the search never runs past it
    assert out.max_length <= 8 * -(-max(token_lengths(model.tokenizer, sst2_dev)) // 8)


def test_auto_with_explicit_candidates_and_no_budget(content_sensitive_bert, sst2_dev, tmp_path) -> None:
    calls: list[int] = []
    step = Truncate(max_length="auto", candidates=[512, 64, 4, 16, 8])
    step.progress = False
    out = step.apply(content_sensitive_bert, context(sst2_dev, tmp_path, calls))
    assert calls[0] == 128 and 512 not in calls  # longer than the reference: never tried
    assert calls[1:] == sorted(calls[1:]) and out.max_length == calls[-1]
    # no max_accuracy_drop: a budget of 0, so the choice loses nothing and every shorter try lost something
    *rejected, chosen = step.search_results[1:]
    assert chosen["drop"] <= 1e-9 and all(r["drop"] > 0 for r in rejected)


def test_candidates_from_data_are_sorted_rounded_and_capped(tiny_tokenizer, sst2_dev) -> None:
    lengths = token_lengths(tiny_tokenizer, sst2_dev)
    assert len(lengths) == len(sst2_dev) and min(lengths) >= 3  # [CLS] … [SEP]
    candidates = candidate_lengths(lengths, cap=128)
    assert candidates == sorted(set(candidates))
    assert all(c % 8 == 0 for c in candidates)
    assert candidates[-1] == 8 * -(-max(lengths) // 8)  # the 100th percentile, rounded up
    assert candidates[0] == 8 * -(-int(np.percentile(lengths, 50, method="higher")) // 8)
    capped = candidate_lengths(lengths, cap=20)
    assert max(capped) == 20 and capped == sorted(set(capped))
    assert candidate_lengths([10, 12, 200], cap=512) == [16, 32, 64, 128, 200]
    pairs = TextData(["a b"], pairs=["c d e"], labels=[0])
    assert token_lengths(tiny_tokenizer, pairs) == [2 + 3 + 3]  # [CLS] a b [SEP] c d e [SEP]


def test_metric_direction() -> None:
    from compress.gates import metric_drop

    assert metric_drop(0.9, 0.85, True) == pytest.approx(0.05)
    assert metric_drop(20.0, 23.0, False) == pytest.approx(3.0)


def test_a_budget_charged_against_another_stage_bounds_the_search() -> None:
    """The search's rule on a known curve: the untruncated model scores 0.88, the teacher 0.90."""
    curve = {8: 0.80, 16: 0.84, 24: 0.86, 32: 0.87}
    # Against the teacher alone (within 0.05 of 0.90): 24 is the shortest at ≥ 0.85.
    chosen, records = shortest_within_budget([32, 8, 24, 16], curve.__getitem__, 0.88, None, True, False,
                                             other=(0.90, 0.05))  # fmt: skip
    assert chosen == 24 and [r["max_length"] for r in records] == [8, 16, 24]
    assert records[-1]["drop_from_stage"] == pytest.approx(0.04) and records[-1]["drop"] == pytest.approx(0.02)
    # Both limits hold: within 0.01 of the untruncated model too, so 32.
    chosen, _ = shortest_within_budget([8, 16, 24, 32], curve.__getitem__, 0.88, 0.01, True, False, other=(0.9, 0.05))
    assert chosen == 32
    # A student already further below the teacher than the budget: no length qualifies (the step keeps its own).
    chosen, records = shortest_within_budget([8, 16, 24, 32], curve.__getitem__, 0.88, None, True, False,
                                             other=(0.95, 0.05))  # fmt: skip
    assert chosen is None and not any(r["within_budget"] for r in records)


def test_keep_within_scores_the_named_stage_and_searches_against_it(content_sensitive_bert, sst2_dev, tmp_path):
    calls: list[int] = []
    ctx = context(sst2_dev, tmp_path, calls)
    teacher = content_sensitive_bert.replace(max_length=128)  # here the "teacher" is the untruncated model itself
    asked: list[str] = []

    def stage(name: str) -> ModelHandle:
        asked.append(name)
        return teacher

    ctx.stage = stage
    step = Truncate(max_length="auto", keep_within={"stage": "teacher", "max_drop": 0.02})
    step.progress = False
    out = step.apply(content_sensitive_bert, ctx)
    assert asked == ["teacher"] and step.stage_inputs() == {"keep_within.stage": "teacher"}
    kept = step.details()["keep_within"]
    assert kept == {"stage": "teacher", "metric": accuracy(teacher, sst2_dev, ctx.eval_spec), "max_drop": 0.02}
    assert kept["metric"] - accuracy(out, sst2_dev, ctx.eval_spec) <= 0.02 + 1e-9
    # the same budget against the same metric as `max_accuracy_drop: 0.02` from the untruncated model: same choice
    plain = Truncate(max_length="auto", max_accuracy_drop=0.02)
    plain.progress = False
    assert plain.apply(content_sensitive_bert, context(sst2_dev, tmp_path)).max_length == out.max_length
    assert all(r["drop_from_stage"] > 0.02 for r in step.search_results[1:-1])


def test_keep_within_must_name_an_earlier_stage(tmp_path: Path) -> None:
    raw = {
        "model": {"source": "some/model"},
        "data": {"path": "dev.tsv", "text": "sentence"},
        "steps": [{"truncate": {"keep_within": {"stage": "teacher", "max_drop": 0.01}}}],
    }
    with pytest.raises(ConfigError) as error:
        Recipe.from_dict(raw, base_dir=tmp_path)
    assert error.value.where == "steps[0].truncate.keep_within.stage" and "baseline" in error.value.fix


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"max_length": 0}, "max_length"),
        ({"max_length": "autox"}, "max_length"),
        ({"max_length": 32, "candidates": [16]}, "truncate"),
        ({"candidates": [0]}, "candidates"),
        ({"max_length": 32, "keep_within": {"stage": "teacher", "max_drop": 0.01}}, "truncate"),
        ({"keep_within": {"stage": "teacher", "max_drop": -0.1}}, "keep_within.max_drop"),
        ({"keep_within": {"stage": "teacher", "drop": 0.1}}, "keep_within"),
    ],
)
def test_invalid_config_is_rejected_with_the_field_named(fields, bad_field) -> None:
    with pytest.raises(ValidationError) as info:
        TruncateConfig(**fields)
    error = format_validation_error(info.value, source="recipe.yaml", prefix="truncate")
    assert isinstance(error, ConfigError) and bad_field in str(error) and "recipe.yaml" in str(error)
