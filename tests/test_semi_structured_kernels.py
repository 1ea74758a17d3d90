"""2:4 Linears through cuSPARSELt (`compress.runtime.semi_structured`): the kernel matches dense, the per-layer
choice switches only measured winners, switched layers undo cleanly and notice a changed weight, and a recipe with
`evaluate.semi_structured_kernels` reports its choices. The kernel itself needs CUDA; what the CPU can check runs
here too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import tiny_llm_files
from torch import nn

from compress.config import EvalSpec
from compress.models.handle import ModelHandle
from compress.prune.masks import keep_mask
from compress.prune.pattern import SparsityPattern
from compress.runtime.semi_structured import (
    PACKED,
    accelerate_semi_structured,
    restore_dense,
    sparse_linear,
    unsupported_reason,
)
from compress.runtime.torch import TorchRuntime

gpu = pytest.mark.gpu


def prune_2of4(model: nn.Module) -> None:
    """Magnitude 2:4 on every Linear but the head."""
    pattern = SparsityPattern.parse("2:4", None)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name != "lm_head":
                module.weight.mul_(keep_mask(module.weight.abs(), pattern))


def sparse_bf16_llama(handle: ModelHandle) -> ModelHandle:
    prune_2of4(handle.model)
    handle.model.to("cuda", torch.bfloat16)
    return handle


def test_candidates_are_2of4_layers_and_others_say_why() -> None:
    dense = nn.Linear(32, 16)
    assert unsupported_reason(dense) == "weight does not follow 2:4"
    prune_2of4(dense)
    assert unsupported_reason(dense) == "not on a CUDA device"


@gpu
def test_cuda_layers_cusparselt_cannot_run_say_why() -> None:
    fp32 = nn.Linear(32, 16).cuda()
    prune_2of4(fp32)
    assert "cast to bfloat16" in unsupported_reason(fp32)
    odd = nn.Linear(24, 16).cuda().to(torch.bfloat16)
    prune_2of4(odd)
    assert "multiples of 16" in unsupported_reason(odd)


def test_cpu_runtime_leaves_the_model_alone(tiny_llama: ModelHandle) -> None:
    prune_2of4(tiny_llama.model)
    runtime = TorchRuntime(tiny_llama, "cpu", semi_structured_tokens=64)
    assert runtime.semi_structured == [] and runtime.details() == {}
    assert accelerate_semi_structured(tiny_llama.model, 64)[0].reason == "not on a CUDA device"
    assert not any(PACKED in m._buffers for m in tiny_llama.model.modules())


def test_the_option_is_in_the_schema() -> None:
    assert EvalSpec(semi_structured_kernels=True).semi_structured_kernels
    assert not EvalSpec().semi_structured_kernels


@gpu
@pytest.mark.parametrize("rows", [13, 64])  # 13: padded to cuSPARSELt's multiple of 8 and cut back
def test_kernel_matches_dense(rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 64).cuda().to(torch.bfloat16)
    prune_2of4(linear)
    x = torch.randn(2, rows, 128, device="cuda", dtype=torch.bfloat16)
    packed = torch._cslt_compress(linear.weight.detach())
    got = sparse_linear(x, packed, linear.bias.detach(), alg_id=0)
    assert got.shape == (2, rows, 64)
    torch.testing.assert_close(got, linear(x), atol=3e-2, rtol=3e-2)


@gpu
@pytest.mark.parametrize("graphs", [False, True])
def test_switched_model_matches_and_restores(tiny_llama: ModelHandle, graphs: bool) -> None:
    handle = sparse_bf16_llama(tiny_llama)
    ids = torch.randint(0, handle.model.config.vocab_size, (2, 32), device="cuda")
    with torch.inference_mode():
        dense = handle.model(ids).logits.float()
    # min_speedup 0: every supported layer is switched, whatever the timing says
    choices = accelerate_semi_structured(handle.model, 64, graphs=graphs, min_speedup=0)
    assert len(choices) == 2 * 7 and all(c.sparse and c.alg_id is not None and c.speedup for c in choices)
    with torch.inference_mode():
        sparse = handle.model(ids).logits.float()
    torch.testing.assert_close(sparse, dense, atol=0.1, rtol=0.05)
    assert not any(PACKED in key for key in handle.model.state_dict())  # saves as before
    assert restore_dense(handle.model) == 14
    assert "forward" not in handle.model.model.layers[0].mlp.up_proj.__dict__


@gpu
def test_only_measured_winners_switch_and_a_changed_weight_runs_dense(tiny_llama: ModelHandle) -> None:
    handle = sparse_bf16_llama(tiny_llama)
    never = accelerate_semi_structured(handle.model, 64, min_speedup=1e9)
    assert never and not any(c.sparse for c in never)
    assert not any(PACKED in m._buffers for m in handle.model.modules())
    accelerate_semi_structured(handle.model, 64, min_speedup=0)
    layer = handle.model.model.layers[0].mlp.up_proj
    x = torch.randn(8, layer.in_features, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.zero_()  # a later step changing the weight in place: the packed copy is stale
        assert layer(x).abs().max() == 0  # the dense path ran (Llama's Linears have no bias)


@gpu
def test_recipe_reports_the_kernel_choice(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    from compress.recipe import Recipe

    files = tiny_llm_files(tiny_llama, tmp_path)
    recipe = Recipe.from_dict(
        {
            "model": files["model"],
            "data": files["data"],
            "evaluate": {
                "batch_sizes": [2],
                "seq_len": 64,
                "decode_tokens": 0,
                "device": "cuda",
                "semi_structured_kernels": True,
            },
            "steps": [{"cast": {"dtype": "bfloat16"}}, {"magnitude": {"pattern": "2:4"}}],
        },
        base_dir=tmp_path,
    )
    result = recipe.run(tmp_path / "run")
    baseline, cast, magnitude = result.stages
    assert "semi_structured_kernels" not in cast.details  # bfloat16 but dense
    assert all(s.status == "ok" for s in result.stages)
    assert "semi_structured_kernels" not in baseline.details  # float32 and dense: nothing to choose
    kernels = magnitude.details["semi_structured_kernels"]
    assert kernels["candidate_layers"] == 14 and len(kernels["layers"]) == 14
    assert all(row["tokens"] == 128 and row["dense_ms"] > 0 for row in kernels["layers"])
    assert kernels["sparse_layers"] == sum(row["sparse"] for row in kernels["layers"])
    assert torch.isfinite(torch.tensor(magnitude.metrics["perplexity"]))
