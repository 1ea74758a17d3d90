"""Teacher-sliced students (Minitron-style width pruning): wiring, importance ordering, errors, and the head start."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert
from train_helpers import make_context

from compress.data.text_data import TextData
from compress.errors import ConfigError, ModelError
from compress.models.handle import ModelHandle
from compress.steps.distill.config import DistillConfig, SmallerStudent
from compress.steps.distill.losses import soft_target_kl
from compress.steps.distill.student import encoder_layers, smaller_student
from compress.steps.distill.width_slice import default_layers, plan_slices
from compress.steps.finetune import Finetune


@pytest.fixture
def four_layer_bert(tiny_tokenizer) -> ModelHandle:
    return make_tiny_bert(tiny_tokenizer, layers=4)  # hidden 32, 4 heads of 8, FFN 64


def logits(handle: ModelHandle, model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    encoded = handle.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**encoded).logits


def test_slicing_to_the_same_dimensions_reproduces_the_teacher(four_layer_bert: ModelHandle, sst2_dev) -> None:
    teacher = four_layer_bert.model
    student = smaller_student(teacher, num_layers=4, hidden_size=32, num_heads=4, intermediate_size=64, init="slice")
    texts = sst2_dev.texts[:16]
    assert torch.allclose(logits(four_layer_bert, student, texts), logits(four_layer_bert, teacher, texts), atol=1e-5)
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[name], tensor), name


def test_default_layers_are_evenly_spaced_and_end_with_the_last() -> None:
    assert default_layers(2, 6) == [2, 5]
    assert default_layers(3, 6) == [1, 3, 5]
    assert default_layers(6, 6) == list(range(6))
    assert default_layers(1, 4) == [3]


def test_a_narrower_student_is_filled_from_the_teacher(four_layer_bert: ModelHandle) -> None:
    teacher = four_layer_bert.model
    student = smaller_student(teacher, num_layers=2, hidden_size=16, num_heads=2, intermediate_size=24, init="slice")
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 16, 2)
    assert config.intermediate_size == 24 and len(encoder_layers(student)) == 2
    plan = plan_slices(teacher, [1, 3], 16, 2, 24)
    hidden = plan.hidden
    assert hidden.tolist() == sorted(hidden.tolist()) and len(hidden) == 16
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(
        s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"][:, hidden]
    )
    assert torch.equal(s["bert.embeddings.LayerNorm.weight"], t["bert.embeddings.LayerNorm.weight"][hidden])
    # Student layer 1 comes from teacher layer 3; head size stays 8, so whole heads are kept.
    rows = plan.query_key[1]
    assert len(rows) == 16 and all(
        len(set(rows[i : i + 8].div(8, rounding_mode="floor").tolist())) == 1 for i in (0, 8)
    )
    layer = "bert.encoder.layer.{}."
    q = "attention.self.query.weight"
    assert torch.equal(s[layer.format(1) + q], t[layer.format(3) + q][rows][:, hidden])
    o = "attention.output.dense.weight"
    assert torch.equal(s[layer.format(1) + o], t[layer.format(3) + o][hidden][:, plan.value_output[1]])
    w_in, w_out = "intermediate.dense.weight", "output.dense.weight"
    assert torch.equal(s[layer.format(0) + w_in], t[layer.format(1) + w_in][plan.ffn[0]][:, hidden])
    assert torch.equal(s[layer.format(0) + w_out], t[layer.format(1) + w_out][hidden][:, plan.ffn[0]])
    assert torch.equal(s["bert.pooler.dense.weight"], t["bert.pooler.dense.weight"][hidden][:, hidden])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"][:, hidden])
    assert torch.equal(s["classifier.bias"], t["classifier.bias"])
    ids = four_layer_bert.tokenizer(["a good film"], return_tensors="pt")
    assert student(**ids).logits.shape == (1, 2)
    assert student.num_parameters() < teacher.num_parameters()


def test_heads_are_cut_or_merged_when_the_head_size_changes(four_layer_bert: ModelHandle) -> None:
    teacher = four_layer_bert.model
    ids = four_layer_bert.tokenizer(["a good film"], return_tensors="pt")
    # 4 heads of 4 (teacher: 8): the 4 heads each keep their 4 best query/key dimensions.
    cut = plan_slices(teacher, [0], 16, 4, 64)
    assert [len(set(cut.query_key[0][i : i + 4].div(8, rounding_mode="floor").tolist())) for i in range(0, 16, 4)] == [
        1
    ] * 4
    assert math.isclose(cut.query_scale, math.sqrt(0.5))
    # 2 heads of 16 at full width: each is two whole teacher heads; the query keeps the teacher's 1/√8.
    merged = smaller_student(teacher, num_layers=1, num_heads=2, layers=[0], init="slice")
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(merged.state_dict()[q], teacher.state_dict()[q] * math.sqrt(2))
    for student in (merged, smaller_student(teacher, hidden_size=16, num_heads=4, init="slice")):
        assert torch.isfinite(student(**ids).logits).all()
    with pytest.raises(ConfigError, match="neither a divisor nor a multiple"):
        smaller_student(teacher, hidden_size=24, num_heads=2, init="slice")
    with pytest.raises(ConfigError, match="only shrink"):
        smaller_student(teacher, intermediate_size=128, init="slice")
    with pytest.raises(ConfigError, match="only shrink"):
        smaller_student(teacher, num_layers=5, init="slice")
    with pytest.raises(ConfigError, match="distinct indices"):
        smaller_student(teacher, hidden_size=16, layers=[0, 0], init="slice")


def test_importance_keeps_the_strongest_channel_head_and_neuron(four_layer_bert: ModelHandle) -> None:
    teacher = four_layer_bert.model
    layer = encoder_layers(teacher)[3]  # the layer a 1-layer student keeps
    with torch.no_grad():
        for norm in (teacher.bert.embeddings.LayerNorm, layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight[7] = 10.0
        layer.intermediate.dense.weight[5] *= 10
        layer.output.dense.weight[:, 5] *= 10
        layer.attention.self.value.weight[24:32] *= 10  # head 3
    plan = plan_slices(teacher, [3], 8, 1, 4)
    assert 7 in plan.hidden.tolist()
    assert 5 in plan.ffn[0].tolist()
    assert plan.query_key[0].tolist() == list(range(24, 32))
    student = smaller_student(teacher, num_layers=1, hidden_size=8, num_heads=1, intermediate_size=4, init="slice")
    kept_row = plan.ffn[0].tolist().index(5)
    assert torch.equal(
        encoder_layers(student)[0].intermediate.dense.weight[kept_row], layer.intermediate.dense.weight[5, plan.hidden]
    )


def test_unsupported_architectures_are_model_errors(tiny_llama: ModelHandle) -> None:
    with pytest.raises(ModelError, match="encoder layers"):
        smaller_student(tiny_llama.model, hidden_size=16, init="slice")


def test_config_defaults_to_slice_and_checks_layers() -> None:
    spec = DistillConfig(student={"num_layers": 2, "hidden_size": 16, "num_heads": 2}).student
    assert isinstance(spec, SmallerStudent) and spec.init == "slice" and spec.layers is None
    assert DistillConfig(student={"hidden_size": 16, "layers": [0, 3]}).student.layers == [0, 3]
    with pytest.raises(ValueError, match="only applies"):
        SmallerStudent(hidden_size=16, layers=[0], init="random")
    with pytest.raises(ValueError, match="layers given"):
        SmallerStudent(num_layers=2, layers=[0])


def test_a_sliced_student_starts_closer_to_a_trained_teacher_than_a_random_one(
    tiny_tokenizer, sst2_train: TextData, sst2_dev: TextData, tmp_path: Path
) -> None:
    untrained = make_tiny_bert(tiny_tokenizer, layers=4)
    ctx = make_context(sst2_train, sst2_dev, tmp_path)
    teacher = Finetune(epochs=6, learning_rate=3e-3, batch_size=16, progress=False).apply(untrained, ctx)
    dims = {"num_layers": 2, "hidden_size": 24, "num_heads": 3, "intermediate_size": 32}
    sliced = smaller_student(teacher.model, **dims, init="slice")
    random = smaller_student(teacher.model, **dims, init="random")
    texts = sst2_dev.texts
    target = logits(teacher, teacher.model, texts)
    kl = {
        name: float(soft_target_kl(logits(teacher, m, texts), target, 1.0))
        for name, m in [("s", sliced), ("r", random)]
    }
    agree = {
        name: float((logits(teacher, m, texts).argmax(-1) == target.argmax(-1)).float().mean())
        for name, m in [("s", sliced), ("r", random)]
    }
    assert kl["s"] < kl["r"], kl
    assert agree["s"] > agree["r"], agree
