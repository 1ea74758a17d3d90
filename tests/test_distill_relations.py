"""MiniLMv2's self-attention relation loss (`alpha_relations`): zero for identical projections, blind to padding,
gradients reaching the student, widths free to differ; Q/K/V captured where the architecture map says; a distill
run with it is deterministic and checked before any work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert
from train_helpers import make_context

from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.steps.distill.capture import captured_qkv, qkv_widths
from compress.steps.distill.losses import self_attention_relations
from compress.steps.distill.step import Distill


def _qkv(batch: int, seq: int, width: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, width, generator=generator) for _ in range(3)]


def test_relations_are_zero_for_equal_projections_and_ignore_padding() -> None:
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    teacher = _qkv(2, 6, 16, 0)
    assert self_attention_relations(teacher, teacher, mask, 4).item() == pytest.approx(0, abs=1e-6)
    student = _qkv(2, 6, 8, 1)  # a narrower student: relations are seq × seq, no projection needed
    loss = self_attention_relations(student, teacher, mask, 4)
    assert loss.item() > 0
    changed = [t.clone() for t in teacher]
    for t in changed:
        t[1, 4:] = 100.0  # what padding holds must not matter, as query or as key
    assert self_attention_relations(student, changed, mask, 4).item() == pytest.approx(loss.item(), rel=1e-5)


def test_relation_gradients_reach_the_student() -> None:
    mask = torch.ones(2, 5, dtype=torch.long)
    student = [t.requires_grad_() for t in _qkv(2, 5, 8, 2)]
    self_attention_relations(student, _qkv(2, 5, 12, 3), mask, 4).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in student)
    with pytest.raises(ValueError, match="must divide"):
        self_attention_relations(_qkv(1, 3, 10, 0), _qkv(1, 3, 12, 0), torch.ones(1, 3), 4)


def test_qkv_of_a_layer_are_captured_and_the_hooks_removed(tiny_bert: ModelHandle) -> None:
    ids = torch.randint(5, 100, (2, 7))
    with captured_qkv(tiny_bert.model, -1) as outputs:
        tiny_bert.model(input_ids=ids)
    assert [tuple(t.shape) for t in outputs] == [(2, 7, 32)] * 3
    layer = tiny_bert.model.bert.encoder.layer[-1].attention.self
    assert not layer.query._forward_hooks and not layer.value._forward_hooks
    assert qkv_widths(tiny_bert.model, 0) == [32, 32, 32]


def test_distill_with_relations_is_deterministic(tiny_tokenizer, sst2_train, sst2_dev, tmp_path: Path) -> None:
    def run(folder: str) -> list[torch.Tensor]:
        teacher = make_tiny_bert(tiny_tokenizer, layers=4)
        step = Distill(
            student={"num_layers": 2, "hidden_size": 16, "num_heads": 2},
            alpha_relations=1.0,
            relation_heads=4,
            relation_layer=2,
            epochs=1,
            batch_size=16,
            progress=False,
        )
        (tmp_path / folder).mkdir()
        student = step.apply(teacher, make_context(sst2_train.head(48), sst2_dev, tmp_path / folder)).model
        return [p.detach().clone() for p in student.parameters()]

    first, second = run("a"), run("b")
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_relation_settings_are_checked_before_training(tiny_bert: ModelHandle, sst2_train, sst2_dev, tmp_path) -> None:
    ctx = make_context(sst2_train.head(16), sst2_dev, tmp_path)
    bad_heads = Distill(student={"num_layers": 1}, alpha_relations=1.0, relation_heads=5, progress=False)
    with pytest.raises(ConfigError, match="does not divide") as error:
        bad_heads.apply(copy.deepcopy(tiny_bert), ctx)
    assert error.value.where == "steps.distill.relation_heads"
    bad_layer = Distill(student={"num_layers": 1}, alpha_relations=1.0, relation_layer=7, progress=False)
    with pytest.raises(ConfigError, match="outside the teacher"):
        bad_layer.apply(copy.deepcopy(tiny_bert), ctx)
