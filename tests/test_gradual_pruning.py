"""Gradual magnitude pruning during training: Zhu & Gupta's cubic schedule, masks that only grow, the target
reached exactly, heads left dense, settings checked before work, and a resumed run landing where an uninterrupted
one does."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from train_helpers import make_context

from compress.models.handle import ModelHandle
from compress.prune.schedule import GradualMagnitude, cubic_sparsity, ramp_steps
from compress.steps.finetune import Finetune, FinetuneConfig


def test_cubic_schedule_shape() -> None:
    values = [cubic_sparsity(step, 10, 110, 0.8) for step in range(0, 130)]
    assert values[10] == 0 and values[110] == values[129] == 0.8
    assert cubic_sparsity(60, 10, 110, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))  # halfway: 7/8 of the way
    assert all(b >= a for a, b in itertools.pairwise(values))  # never falls
    assert cubic_sparsity(20, 10, 110, 0.8, initial=0.3) > 0.3  # starts from an already pruned model
    assert ramp_steps(100, 0.1, 0.75) == (10, 75)


def test_masks_only_grow_and_reach_the_target() -> None:
    torch.manual_seed(0)
    layers = {"a": torch.nn.Linear(64, 32), "b": torch.nn.Linear(32, 16)}
    pruner = GradualMagnitude(layers, final=0.75, start=0, end=40, every=5)
    seen, previous = [], {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in layers.items()}
    for step in range(1, 51):
        with torch.no_grad():  # an optimizer step moves every weight, pruned ones too
            for linear in layers.values():
                linear.weight.add_(0.01 * torch.randn_like(linear.weight))
        pruner.step(step)
        for name, linear in layers.items():
            alive = linear.weight != 0
            assert not (alive & ~previous[name]).any(), f"a pruned weight of {name} came back at step {step}"
            previous[name] = alive
        seen.append(
            sum(int((m.weight == 0).sum()) for m in layers.values()) / sum(m.weight.numel() for m in layers.values())
        )
    assert seen[0] < seen[20] < seen[39]
    for linear in layers.values():  # per layer, exactly
        assert (linear.weight == 0).float().mean().item() == pytest.approx(0.75, abs=1e-3)


def test_global_scope_prunes_small_weights_anywhere() -> None:
    torch.manual_seed(0)
    small, large = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
    with torch.no_grad():
        small.weight.mul_(0.01)
    pruner = GradualMagnitude({"small": small, "large": large}, final=0.5, start=0, end=1, every=1, scope="global")
    pruner.step(1)
    assert (small.weight == 0).float().mean() > 0.95 and (large.weight == 0).float().mean() < 0.05


def test_ramp_order_is_checked() -> None:
    with pytest.raises(ValidationError, match="must come after start"):
        FinetuneConfig(gradual_pruning={"sparsity": 0.5, "start": 0.8, "end": 0.5})
    with pytest.raises(ValidationError):
        FinetuneConfig(gradual_pruning={"sparsity": 1.0})


def test_finetune_prunes_gradually_and_keeps_the_head(
    tiny_bert: ModelHandle, sst2_train, sst2_dev, tmp_path: Path
) -> None:
    ctx = make_context(sst2_train, sst2_dev, tmp_path)
    step = Finetune(
        epochs=2, batch_size=16, learning_rate=1e-3, progress=False, gradual_pruning={"sparsity": 0.6, "end": 0.5}
    )
    trained = step.apply(tiny_bert, ctx).model
    for name, module in trained.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        share = (module.weight == 0).float().mean().item()
        if name == "classifier":
            assert share == 0, "the head stays dense by default"
        else:
            assert share == pytest.approx(0.6, abs=0.01), name


def test_a_resumed_run_prunes_like_an_uninterrupted_one(tiny_tokenizer, sst2_train, tmp_path: Path) -> None:
    from conftest import make_tiny_bert

    from compress.train import TrainSettings, tokenize_rows, train

    data = sst2_train.head(64)  # 8 batches of 8: 8 steps
    settings = TrainSettings(
        epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        checkpoint_every=2,
        progress=False,
        gradual_pruning={"sparsity": 0.5, "end": 0.75, "every": 1},
    )
    calls = 0

    def loss(module: torch.nn.Module, batch: dict[str, torch.Tensor], stop_at: int | None = None) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == stop_at:  # dies during step 5, mid-ramp; the last checkpoint is step 4
            raise KeyboardInterrupt
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return module(**inputs, labels=batch["labels"]).loss

    def run(work: Path, stop_at: int | None = None) -> torch.nn.Module:
        return train(
            make_tiny_bert(tiny_tokenizer, seed=0).model,
            tokenize_rows(data, tiny_tokenizer, 32),
            lambda module, batch: loss(module, batch, stop_at),
            settings,
            work_dir=work,
            key="gradual",
            pad_token_id=0,
            device=torch.device("cpu"),
            seed=0,
        ).model

    whole = run(tmp_path / "whole")
    calls = 0
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", stop_at=5)
    calls = 0
    resumed = run(tmp_path / "run")
    assert calls == 4  # steps 5–8 only
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), name
        torch.testing.assert_close(a, b)
