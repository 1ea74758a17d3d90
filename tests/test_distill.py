"""Distillation: student construction, each loss, the teacher-logit cache, and end-to-end training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_bert
from pydantic import ValidationError
from train_helpers import accuracy, make_context, mean_loss

from compress.data.text_data import TextData
from compress.errors import ConfigError, DataError, ModelError
from compress.models.handle import ModelHandle
from compress.registry import STEPS
from compress.steps.distill.losses import (
    attention_transfer,
    hard_label_ce,
    hidden_state_mse,
    soft_target_kl,
    uniform_layer_map,
)
from compress.steps.distill.step import Distill
from compress.steps.distill.student import encoder_layers, select_layers, smaller_student
from compress.steps.distill.teacher_cache import teacher_logits_path
from compress.steps.distill.unlabeled import read_unlabeled
from compress.steps.finetune import Finetune
from compress.train.batches import IGNORE_LABEL


@pytest.fixture
def four_layer_bert(tiny_tokenizer) -> ModelHandle:
    return make_tiny_bert(tiny_tokenizer, layers=4)


# --- student construction ---------------------------------------------------------------------------


def test_layer_selection_copies_exactly_the_chosen_layers(four_layer_bert: ModelHandle) -> None:
    teacher = four_layer_bert.model
    student = select_layers(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(encoder_layers(student)) == 2
    assert len(encoder_layers(teacher)) == 4  # the teacher is untouched
    for student_index, teacher_index in enumerate([0, 3]):
        s_state = encoder_layers(student)[student_index].state_dict()
        t_state = encoder_layers(teacher)[teacher_index].state_dict()
        assert s_state.keys() == t_state.keys()
        for name in t_state:
            assert torch.equal(s_state[name], t_state[name]), name
            assert s_state[name].data_ptr() != t_state[name].data_ptr()  # copies, not shared tensors
    for prefix in ("bert.embeddings.", "bert.pooler.", "classifier."):
        for name, tensor in teacher.state_dict().items():
            if name.startswith(prefix):
                assert torch.equal(student.state_dict()[name], tensor), name
    ids = four_layer_bert.tokenizer(["a good film"], return_tensors="pt")
    assert student(**ids).logits.shape == (1, 2)
    assert student.num_parameters() < teacher.num_parameters()


def test_every_other_keeps_even_layers_and_bad_indices_are_config_errors(
    four_layer_bert: ModelHandle,
) -> None:
    student = select_layers(four_layer_bert.model, "every_other")
    expected = encoder_layers(four_layer_bert.model)[2].state_dict()
    for name, tensor in encoder_layers(student)[1].state_dict().items():
        assert torch.equal(tensor, expected[name])
    with pytest.raises(ConfigError, match="distinct indices"):
        select_layers(four_layer_bert.model, [0, 4])
    with pytest.raises(ConfigError, match="distinct indices"):
        select_layers(four_layer_bert.model, [1, 1])


def test_smaller_student_has_the_asked_dimensions_and_teacher_embeddings(
    four_layer_bert: ModelHandle,
) -> None:
    teacher = four_layer_bert.model
    student = smaller_student(teacher, num_layers=1, hidden_size=16, num_heads=2, intermediate_size=24)
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (1, 16, 2)
    assert config.intermediate_size == 24 and len(encoder_layers(student)) == 1
    layer = encoder_layers(student)[0]
    assert layer.intermediate.dense.weight.shape == (24, 16)
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(student.state_dict()[word], teacher.state_dict()[word][:, :16])
    ids = four_layer_bert.tokenizer(["a good film"], return_tensors="pt")
    assert student(**ids).logits.shape == (1, 2)
    with pytest.raises(ConfigError, match="not divisible"):
        smaller_student(teacher, hidden_size=30, num_heads=4)


def test_unsupported_architectures_are_model_errors(tiny_llama: ModelHandle) -> None:
    with pytest.raises(ModelError, match="encoder layers"):
        select_layers(tiny_llama.model, [0])


# --- losses ------------------------------------------------------------------------------------------


def test_soft_target_kl_is_zero_for_equal_logits_and_matches_the_formula() -> None:
    logits = torch.randn(5, 3)
    assert soft_target_kl(logits, logits.clone(), 2.0).abs() < 1e-6
    student, teacher, t = torch.randn(5, 3), torch.randn(5, 3), 3.0
    p_teacher = F.softmax(teacher / t, -1)
    by_hand = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t**2
    assert torch.allclose(soft_target_kl(student, teacher, t), by_hand, atol=1e-6)
    torch_kl = F.kl_div(F.log_softmax(student / t, -1), p_teacher, reduction="batchmean") * t**2
    assert torch.allclose(soft_target_kl(student, teacher, t), torch_kl, atol=1e-6)


def test_hard_label_ce_skips_unlabeled_rows() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, IGNORE_LABEL, 2, IGNORE_LABEL])
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([0, 2]))
    assert torch.allclose(hard_label_ce(logits, labels), expected)
    none_labelled = hard_label_ce(logits, torch.full((4,), IGNORE_LABEL))
    assert none_labelled.item() == 0.0
    none_labelled.backward()  # still part of the graph
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_uniform_layer_map_ends_on_the_last_teacher_layer() -> None:
    assert uniform_layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert uniform_layer_map(2, 2) == [(0, 0), (1, 1)]
    assert uniform_layer_map(1, 4) == [(0, 3)]


def test_hidden_state_mse_projects_the_student_width_and_ignores_padding() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    teacher = [torch.randn(2, 4, 32) for _ in range(5)]  # embeddings + 4 layers
    layer_map = uniform_layer_map(2, 4)
    assert hidden_state_mse(teacher[:1] + teacher[2::2], teacher, layer_map, mask) == 0  # identical layers

    student = [torch.randn(2, 4, 16, requires_grad=True) for _ in range(3)]
    projection = torch.nn.Linear(16, 32)
    loss = hidden_state_mse(student, teacher, layer_map, mask, projection)
    loss.backward()
    assert loss.ndim == 0 and projection.weight.grad is not None and projection.weight.grad.shape == (32, 16)
    # What sits on padded positions does not matter.
    padded = [t.clone() for t in teacher]
    for t in padded:
        t[0, 3] += 100
    assert torch.allclose(hidden_state_mse(student, padded, layer_map, mask, projection), loss)
    by_hand = torch.stack(
        [((projection(student[s + 1]) - teacher[t + 1]) ** 2)[mask.bool()].mean() for s, t in layer_map]
    ).mean()
    assert torch.allclose(loss, by_hand, atol=1e-5)


def test_attention_transfer_mse_kl_and_head_averaging() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1]])
    teacher = [torch.softmax(torch.randn(1, 4, 3, 3), -1) for _ in range(2)]
    same = [t.clone() for t in teacher]
    for kind in ("mse", "kl"):
        assert attention_transfer(same, teacher, [(0, 0), (1, 1)], mask, kind).abs() < 1e-6
    student = [torch.softmax(torch.randn(1, 4, 3, 3), -1) for _ in range(2)]
    mse = attention_transfer(student, teacher, [(0, 1)], mask, "mse")
    assert torch.allclose(mse, ((student[0] - teacher[1]) ** 2).mean())
    kl = attention_transfer(student, teacher, [(0, 1)], mask, "kl")
    by_hand = (teacher[1] * (teacher[1].log() - student[0].log())).sum(-1).mean()
    assert torch.allclose(kl, by_hand, atol=1e-5)
    # Two student heads against four teacher heads: both sides averaged over heads.
    two_heads = [torch.softmax(torch.randn(1, 2, 3, 3), -1)]
    averaged = attention_transfer(two_heads, teacher, [(0, 0)], mask, "mse")
    assert torch.allclose(averaged, ((two_heads[0].mean(1) - teacher[0].mean(1)) ** 2).mean())


# --- the step ---------------------------------------------------------------------------------------


def test_distill_is_registered_and_validates_its_config() -> None:
    assert STEPS.get("distill") is Distill
    assert Distill.Config(student={"layers": [0, 2]}).student.layers == [0, 2]
    assert Distill.Config(student={"num_layers": 2}).student.num_layers == 2
    assert Distill.Config(student={"source": "some/dir"}).student.source == "some/dir"
    with pytest.raises(ValidationError):
        Distill.Config(student={"depth": 2})
    with pytest.raises(ValidationError):
        Distill.Config(alpha_kd=0, alpha_ce=0)


def _forward_counter(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_teacher_logits_are_cached_and_reused(four_layer_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    train = sst2_train.head(64)
    teacher_calls = _forward_counter(four_layer_bert.model)  # deepcopies keep the hook
    options = {"student": {"num_layers": 1}, "epochs": 2, "batch_size": 16, "teacher_batch_size": 32}
    Distill(progress=False, **options).apply(four_layer_bert, make_context(train, sst2_dev, tmp_path))
    assert teacher_calls[0] == 2  # 64 rows in batches of 32, once for both epochs
    assert len(list((tmp_path / "teacher").glob("teacher-logits-*.safetensors"))) == 1

    # Other training settings: the student trains again, but the teacher does not run.
    Distill(progress=False, learning_rate=3e-4, **options).apply(
        four_layer_bert, make_context(train, sst2_dev, tmp_path)
    )
    assert teacher_calls[0] == 2
    cache = teacher_logits_path(tmp_path / "teacher", four_layer_bert.model, four_layer_bert.tokenizer, train, 128)
    assert cache.exists()


def test_hidden_and_attention_transfer_run_the_teacher_online(
    four_layer_bert, sst2_train, sst2_dev, tmp_path: Path
) -> None:
    teacher_calls = _forward_counter(four_layer_bert.model)
    step = Distill(
        student={"num_layers": 2, "hidden_size": 16, "num_heads": 2},
        alpha_hidden=1.0,
        alpha_attn=1.0,
        attention_loss="kl",
        epochs=1,
        batch_size=16,
        progress=False,
    )
    result = step.apply(four_layer_bert, make_context(sst2_train.head(64), sst2_dev, tmp_path))
    assert teacher_calls[0] == 4  # once per training step, no cache
    assert not (tmp_path / "teacher").exists()
    assert result.model.config.hidden_size == 16
    # The student was switched to eager attention for the transfer, and back afterwards.
    assert result.model.config._attn_implementation == four_layer_bert.model.config._attn_implementation


def test_distill_end_to_end_trains_a_smaller_student(tiny_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    teacher_handle = tiny_bert
    ctx = make_context(sst2_train, sst2_dev, tmp_path / "finetune")
    teacher = Finetune(epochs=6, learning_rate=3e-3, batch_size=16, progress=False).apply(teacher_handle, ctx)
    teacher_before = copy.deepcopy(teacher.model.state_dict())
    unlabeled = tmp_path / "extra.txt"
    unlabeled.write_text("\n".join(sst2_dev.texts[:32]) + "\n\n")

    step = Distill(student={"layers": [1]}, epochs=4, learning_rate=3e-3, batch_size=16, unlabeled=str(unlabeled))
    step.config.progress = False
    student = step.apply(teacher, make_context(sst2_train, sst2_dev, tmp_path / "distill"))

    assert student.model.config.num_hidden_layers == 1
    assert not student.model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in student.model.parameters())
    for name, tensor in teacher.model.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    untrained = teacher.replace(model=select_layers(teacher.model, [1]))
    assert mean_loss(student, sst2_train) < mean_loss(untrained, sst2_train)
    assert accuracy(student, sst2_train) > 0.7


def test_unlabeled_text_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert read_unlabeled(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"sentence": "x"}\n{"sentence": "y"}\n')
    assert read_unlabeled(tmp_path / "b.jsonl", column="sentence", limit=1) == ["x"]
    (tmp_path / "c.tsv").write_text("text\tother\nhello\t1\n")
    assert read_unlabeled(tmp_path / "c.tsv") == ["hello"]
    with pytest.raises(DataError, match="does not exist"):
        read_unlabeled(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no text field 'text'"):
        read_unlabeled(tmp_path / "b.jsonl")
    (tmp_path / "d.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match="unknown format"):
        read_unlabeled(tmp_path / "d.bin")


def test_distill_refuses_a_quantized_teacher(tiny_bert, sst2_dev, tmp_path: Path) -> None:
    quantized = tiny_bert.replace(transforms=[{"name": "dynamic_int8"}])
    with pytest.raises(ConfigError, match="float teacher"):
        Distill().apply(quantized, make_context(TextData(["a"], labels=[0]), sst2_dev, tmp_path))


@pytest.mark.gpu
def test_distill_runs_on_cuda_with_bf16(tiny_bert, sst2_train, sst2_dev, tmp_path: Path) -> None:
    ctx = make_context(sst2_train, sst2_dev, tmp_path)
    ctx.device = torch.device("cuda")
    step = Distill(student={"layers": [1]}, epochs=2, batch_size=32, mixed_precision="bf16", learning_rate=3e-3)
    step.progress = False
    student = step.apply(tiny_bert, ctx)
    assert student.model.config.num_hidden_layers == 1
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in student.model.parameters())
    untrained = tiny_bert.replace(model=select_layers(tiny_bert.model, [1]))
    assert mean_loss(student, sst2_train) < mean_loss(untrained, sst2_train)
