"""The recover step on a tiny random Llama: a pruned model trained towards its dense stage gets closer to it, its
zeros stay exactly where pruning put them, the teacher must be an earlier stage, and what it cannot train is an
error before any work. The next-token losses against transformers' own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import context, copy_of, logits, probe_ids, tiny_llm_files

from compress.data.text_data import TextData
from compress.errors import ConfigError, DataError
from compress.models.handle import ModelHandle
from compress.prune.sparsity import follows_n_m
from compress.recipe import Recipe
from compress.steps.distill.losses import next_token_ce, next_token_kl
from compress.steps.prune.magnitude import Magnitude
from compress.steps.quantize.rtn import RTN
from compress.steps.recover import Recover

WINDOWS = {"samples": 32, "seq_len": 32}
FAST = {"data": WINDOWS, "epochs": 8, "learning_rate": 3e-3, "batch_size": 8, "progress": False}


def kl_to(reference: torch.Tensor, model: torch.nn.Module, ids: torch.Tensor) -> float:
    return float(next_token_kl(logits(model, ids), reference, torch.ones_like(ids), 1.0))


def test_recovery_moves_the_pruned_model_towards_its_teacher_and_keeps_the_zeros(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    dense = copy_of(tiny_llama)
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(dense.model, ids)
    pruned = Magnitude(sparsity=0.5).apply(tiny_llama, context(wiki, tmp_path))
    masks = {n: m.weight != 0 for n, m in pruned.model.named_modules() if isinstance(m, torch.nn.Linear)}
    before = kl_to(reference, pruned.model, ids)

    ctx = context(wiki, tmp_path)
    ctx.stage = lambda name: copy_of(dense) if name == "baseline" else pytest.fail(f"asked for {name}")
    step = Recover(**FAST)
    recovered = step.apply(pruned, ctx)

    after = kl_to(reference, recovered.model, ids)
    assert after < 0.7 * before, (before, after)
    for name, module in recovered.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.equal(module.weight != 0, masks[name]), name  # not one zero refilled, none added
    details = step.details()
    assert details["teacher"] == "baseline" and details["steps"] == 32 and details["loss_last"] < details["loss_first"]
    assert torch.equal(logits(dense.model, ids), reference)  # the teacher copy was only read


def test_a_recipe_recovers_from_its_baseline(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    files = tiny_llm_files(tiny_llama, tmp_path)
    windows = {**WINDOWS, "data": "calib.txt"}
    recipe = Recipe.from_dict(
        {
            "model": files["model"],
            "data": files["data"],
            "evaluate": {"batch_sizes": [1], "seq_len": 64, "decode_tokens": 0},
            "steps": [
                {"magnitude": {"sparsity": 0.5}},
                {"recover": {**FAST, "data": windows}},
            ],
        },
        base_dir=tmp_path,
    )
    result = recipe.run(tmp_path / "run")
    baseline, magnitude, recovered = result.stages
    assert [s.status for s in result.stages] == ["ok"] * 3
    assert recovered.sparsity == magnitude.sparsity and recovered.sparsity["down_proj"] == 0.5
    gap = {s.name: abs(s.metrics["perplexity"] - baseline.metrics["perplexity"]) for s in (magnitude, recovered)}
    assert gap["recover"] < gap["magnitude"]
    assert recovered.details["teacher"] == "baseline"


def test_the_teacher_must_be_an_earlier_stage(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    files = tiny_llm_files(tiny_llama, tmp_path)
    raw = {
        "model": files["model"],
        "data": files["data"],
        "steps": [{"recover": {"teacher": "magnitude"}}, {"magnitude": {"sparsity": 0.5}}],
    }
    with pytest.raises(ConfigError) as error:
        Recipe.from_dict(raw, base_dir=tmp_path)
    assert error.value.where == "steps[0].recover.teacher" and "baseline" in error.value.fix


def test_what_recover_cannot_train_fails_before_any_work(
    tiny_bert: ModelHandle, tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    ctx = context(wiki, tmp_path)
    ctx.stage = lambda name: pytest.fail("the teacher was loaded before the checks")
    with pytest.raises(ConfigError) as error:
        Recover(**FAST).apply(tiny_bert, ctx)
    assert error.value.where == "steps.recover" and "distill" in error.value.fix
    with pytest.raises(DataError) as error:
        Recover(data={"samples": 4, "seq_len": 1_000_000}).apply(tiny_llama, ctx)
    assert error.value.where == "steps.recover.data.samples"
    quantized = RTN(group_size=16).apply(tiny_llama, ctx)
    with pytest.raises(ConfigError) as error:
        Recover(**FAST).apply(quantized, ctx)
    assert "before quantization" in error.value.fix
    with pytest.raises(ValueError, match="both zero"):
        Recover(alpha_kd=0, alpha_ce=0)


def test_next_token_losses_match_transformers(tiny_llama: ModelHandle, wiki: TextData) -> None:
    ids = probe_ids(tiny_llama, wiki)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = tiny_llama.model(input_ids=ids, labels=ids)
    assert float(next_token_ce(out.logits, ids, mask)) == pytest.approx(float(out.loss), rel=1e-5)
    assert float(next_token_kl(out.logits, out.logits, mask, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # Padded positions count for nothing: garbage there changes neither loss.
    mask[:, -8:] = 0
    noisy = out.logits.clone()
    noisy[:, -8:] = torch.randn_like(noisy[:, -8:]) * 10
    assert float(next_token_kl(noisy, out.logits, mask, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(next_token_ce(noisy, ids, mask)) == pytest.approx(float(next_token_ce(out.logits, ids, mask)))


@pytest.mark.gpu
def test_recovery_runs_on_cuda_in_bf16(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    dense = copy_of(tiny_llama)
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(dense.model, ids)
    pruned = Magnitude(pattern="2:4").apply(tiny_llama, context(wiki, tmp_path))
    before = kl_to(reference, pruned.model, ids)
    ctx = context(wiki, tmp_path)
    ctx.device = torch.device("cuda")
    ctx.stage = lambda name: copy_of(dense)
    recovered = Recover(**FAST, mixed_precision="bf16").apply(pruned, ctx)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in recovered.model.parameters())
    assert all(follows_n_m(m.weight, 2, 4) for n, m in recovered.model.named_modules() if n.endswith("proj"))
    assert kl_to(reference, recovered.model, ids) < before
