"""The shared training loop: batching, padding, checkpoints and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert

from compress.data.text_data import TextData
from compress.train import (
    LengthGroupedBatches,
    TrainSettings,
    forward_inputs,
    pad_collate,
    tokenize_rows,
    train,
)
from compress.train.batches import IGNORE_LABEL

CPU = torch.device("cpu")


def test_length_grouped_batches_cover_every_row_once_and_group_similar_lengths() -> None:
    lengths = [int(x) for x in torch.randint(1, 100, (1000,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedBatches(lengths, batch_size=10, seed=3)  # groups of 50 batches
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 5  # random batches of 10 from 1..99 spread ~80


def test_length_grouped_batches_depend_only_on_seed_and_epoch() -> None:
    lengths = list(range(1, 201))
    a, b = LengthGroupedBatches(lengths, 8, seed=1), LengthGroupedBatches(lengths, 8, seed=1)
    torch.manual_seed(123)  # global random state must not matter
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


def test_tokenize_rows_truncates_and_marks_unlabeled_rows(tiny_tokenizer) -> None:
    data = TextData(["a very good movie " * 20, "bad"])
    rows = tokenize_rows(data, tiny_tokenizer, max_length=16, index_offset=5)
    assert len(rows[0]["input_ids"]) == 16 and len(rows[1]["input_ids"]) == 3
    assert [r["labels"] for r in rows] == [IGNORE_LABEL, IGNORE_LABEL]
    assert [r["index"] for r in rows] == [5, 6]


def test_pad_collate_pads_to_the_longest_row_of_the_batch() -> None:
    rows = [
        {"input_ids": [2, 7, 3], "token_type_ids": [0, 0, 0], "labels": 1, "index": 0},
        {"input_ids": [2, 3], "token_type_ids": [0, 0], "labels": 0, "index": 1},
    ]
    batch = pad_collate(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["index"].tolist() == [0, 1]


def _classification_loss(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return module(**forward_inputs(module, batch), labels=batch["labels"]).loss


def _run(tokenizer, data: TextData, work_dir: Path, loss_fn=_classification_loss, **settings):
    model = make_tiny_bert(tokenizer, seed=0)
    options = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every": 2, "progress": False}
    return train(
        model.model,
        tokenize_rows(data, tokenizer, 32),
        loss_fn,
        TrainSettings(**{**options, **settings}),
        work_dir=work_dir,
        key="test",
        pad_token_id=0,
        device=CPU,
        seed=0,
    )


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_with_the_same_weights(
    tiny_tokenizer, sst2_train, tmp_path: Path
) -> None:
    data = sst2_train.head(64)  # 8 batches of 8: 8 steps
    reference = _run(tiny_tokenizer, data, tmp_path / "reference")
    assert reference.steps == 8 and reference.resumed_from == 0

    calls = 0

    def interrupted_loss(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 6:  # dies during step 6; the last checkpoint is step 4
            raise KeyboardInterrupt
        return _classification_loss(module, batch)

    with pytest.raises(KeyboardInterrupt):
        _run(tiny_tokenizer, data, tmp_path / "run", loss_fn=interrupted_loss)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000004"]

    calls = 0

    def counting_loss(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return _classification_loss(module, batch)

    resumed = _run(tiny_tokenizer, data, tmp_path / "run", loss_fn=counting_loss)
    assert resumed.resumed_from == 4 and resumed.steps == 8
    assert calls == 4  # only the remaining steps ran
    assert resumed.losses[:4] == reference.losses[:4]  # history carried over from the checkpoint
    reference_state, resumed_state = reference.model.state_dict(), resumed.model.state_dict()
    for name, tensor in reference_state.items():
        assert torch.equal(tensor, resumed_state[name]), name


def test_checkpoints_of_other_settings_are_not_resumed(tiny_tokenizer, sst2_train, tmp_path: Path) -> None:
    data = sst2_train.head(32)
    assert _run(tiny_tokenizer, data, tmp_path).steps == 4
    again = _run(tiny_tokenizer, data, tmp_path)  # finished training: nothing left to do
    assert again.resumed_from == 4
    other = _run(tiny_tokenizer, data, tmp_path, learning_rate=5e-4)
    assert other.resumed_from == 0 and other.steps == 4


def test_gradient_accumulation_and_fractional_epochs_count_optimizer_steps(
    tiny_tokenizer, sst2_train, tmp_path: Path
) -> None:
    data = sst2_train.head(64)  # 8 batches
    assert _run(tiny_tokenizer, data, tmp_path / "a", gradient_accumulation_steps=2).steps == 4
    assert _run(tiny_tokenizer, data, tmp_path / "b", epochs=1.5).steps == 12
    assert _run(tiny_tokenizer, data, tmp_path / "c", max_steps=3).steps == 3


def test_mixed_precision_bf16_trains_on_cpu_and_fp16_falls_back(tiny_tokenizer, sst2_train, tmp_path: Path) -> None:
    data = sst2_train.head(16)
    bf16 = _run(tiny_tokenizer, data, tmp_path / "bf16", mixed_precision="bf16")
    assert bf16.steps == 2 and all(torch.isfinite(torch.tensor(bf16.losses)))
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # autocast, weights stay fp32
    fp16 = _run(tiny_tokenizer, data, tmp_path / "fp16", mixed_precision="fp16")
    assert fp16.steps == 2
