"""Pruning math on single weight matrices: patterns, masks, Wanda's and SparseGPT's criteria, GPTQ keeping zeros."""

from __future__ import annotations

import pytest
import torch

from compress.prune.masks import SparsityKeeper, global_threshold, keep_mask
from compress.prune.pattern import SparsityPattern
from compress.prune.sparsegpt import sparsegpt_prune
from compress.prune.sparsity import follows_n_m, measure_sparsity, sparsity_structure
from compress.prune.wanda import accumulate_input_norms, wanda_scores
from compress.quantize.gptq import accumulate_hessian, gptq_quantize
from compress.quantize.scheme import QuantScheme

TWO_FOUR = SparsityPattern.parse("2:4", None)
HALF = SparsityPattern.parse("unstructured", 0.5)


def _layer(rows: int = 48, columns: int = 128, tokens: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and inputs whose features differ in scale (as LLM activations do, with outlier channels)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, columns, generator=generator)
    mixing = torch.eye(columns) + 0.3 * torch.randn(columns, columns, generator=generator)
    x = torch.randn(tokens, columns, generator=generator) @ mixing
    x *= torch.rand(columns, generator=generator) * 3
    x[:, :4] *= 20  # outlier features
    return weight, x


def _output_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ weight.t() - x @ pruned.t()).pow(2).mean())


def test_patterns_parse_and_refuse() -> None:
    assert TWO_FOUR.sparsity == 0.5 and (TWO_FOUR.n, TWO_FOUR.m) == (2, 4) and TWO_FOUR.name == "2:4"
    assert SparsityPattern.parse("unstructured", None).sparsity == 0.5
    assert SparsityPattern.parse("4:8", 0.5).structured
    for pattern, sparsity, message in [
        ("4:2", None, "0 < N < M"),
        ("two:four", None, "unstructured' or 'N:M"),
        ("2:4", 0.7, "contradicts"),
        ("unstructured", 1.0, r"\(0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            SparsityPattern.parse(pattern, sparsity)


def test_n_m_masks_keep_exactly_n_of_every_m() -> None:
    scores = torch.rand(8, 32)
    mask = keep_mask(scores, TWO_FOUR)
    blocks = mask.reshape(8, 8, 4)
    assert bool((blocks.sum(-1) == 2).all())
    # The kept two are the two largest of each block.
    top = scores.reshape(8, 8, 4).topk(2, dim=-1).indices.sort(-1).values
    assert torch.equal(blocks.nonzero()[:, 2].reshape(8, 8, 2), top)
    with pytest.raises(ValueError, match="multiple of 4"):
        keep_mask(torch.rand(4, 30), TWO_FOUR)


def test_unstructured_masks_row_layer_and_global() -> None:
    scores = torch.rand(10, 40)
    per_row = keep_mask(scores, HALF, scope="row")
    assert bool((per_row.sum(1) == 20).all())
    per_layer = keep_mask(scores, HALF, scope="layer")
    assert int(per_layer.sum()) == 200 and not bool((per_layer.sum(1) == 20).all())
    ties = torch.ones(4, 8)  # equal scores: still exactly the requested count
    assert int(keep_mask(ties, HALF, scope="layer").sum()) == 16
    small, large = torch.rand(100) * 0.1, torch.rand(100) + 1
    threshold = global_threshold([small, large], 0.5)
    assert float(small.max()) <= threshold < float(large.min())


def test_wanda_statistics_and_scores() -> None:
    x = torch.randn(3, 5, 16)
    squared, count = accumulate_input_norms(None, x[:2], 0)
    squared, count = accumulate_input_norms(squared, x[2:], count)
    assert count == 15
    torch.testing.assert_close(squared, x.reshape(-1, 16).pow(2).mean(0))
    weight = torch.randn(4, 16)
    torch.testing.assert_close(wanda_scores(weight, squared), weight.abs() * squared.sqrt())


@pytest.mark.parametrize("pattern", [HALF, TWO_FOUR], ids=["unstructured-50", "2:4"])
def test_wanda_and_sparsegpt_beat_magnitude(pattern: SparsityPattern) -> None:
    weight, x = _layer()
    magnitude = weight * keep_mask(weight.abs(), pattern, scope="row")
    squared, _ = accumulate_input_norms(None, x, 0)
    wanda = weight * keep_mask(wanda_scores(weight, squared), pattern, scope="row")
    hessian, _ = accumulate_hessian(None, x, 0)
    sparsegpt, loss = sparsegpt_prune(weight, hessian, pattern)
    assert loss > 0
    errors = {name: _output_error(weight, w, x) for name, w in [("m", magnitude), ("w", wanda), ("s", sparsegpt)]}
    # Both far below magnitude; SparseGPT's update matters most under 2:4 (unstructured, Wanda is about as good).
    assert errors["s"] < errors["m"] / 2 and errors["w"] < errors["m"] / 1.5
    for pruned in (wanda, sparsegpt):
        assert float((pruned == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
        if pattern.structured:
            assert follows_n_m(pruned, 2, 4)


def test_sparsegpt_refuses_bad_inputs() -> None:
    weight, x = _layer(8, 64, 256)
    hessian, _ = accumulate_hessian(None, x, 0)
    with pytest.raises(ValueError, match="Hessian shape"):
        sparsegpt_prune(weight, hessian[:32, :32], HALF)
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsegpt_prune(weight[:, :62], hessian[:62, :62], TWO_FOUR)
    bad = hessian.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        sparsegpt_prune(weight, bad, HALF)


def test_gptq_keeps_zeros_only_when_asked() -> None:
    weight, x = _layer()
    hessian, _ = accumulate_hessian(None, x, 0)
    sparse, _ = sparsegpt_prune(weight, hessian, TWO_FOUR)
    scheme = QuantScheme(4, 32, False)
    kept, _ = gptq_quantize(sparse, hessian, scheme, preserve_zeros=True, kernel="torch")
    assert bool((kept.dequantize()[sparse == 0] == 0).all()) and follows_n_m(kept.dequantize(), 2, 4)
    filled, _ = gptq_quantize(sparse, hessian, scheme, kernel="torch")
    assert not follows_n_m(filled.dequantize(), 2, 4)  # plain GPTQ spreads its error into the pruned weights


def test_measured_sparsity_and_structure() -> None:
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(8, 4, bias=False))
    model.add_module("down_proj", torch.nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        model.q_proj.weight.copy_(torch.tensor([[1.0, 0, 2, 0, 3, 0, 0, 4]] * 4))  # 2:4
        model.down_proj.weight.fill_(1.0)
    measured = measure_sparsity(model)
    assert measured == {"overall": 0.25, "down_proj": 0.0, "q_proj": 0.5}
    assert sparsity_structure([model.q_proj.weight]) == "2:4"
    assert sparsity_structure([model.q_proj.weight, model.down_proj.weight]) == "unstructured"
    assert sparsity_structure([model.down_proj.weight]) is None


def test_sparsity_keeper_restores_zeros_after_an_update() -> None:
    layer = torch.nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    dense = torch.nn.Linear(8, 4)
    holder = torch.nn.ModuleDict({"pruned": layer, "dense": dense})
    keeper = SparsityKeeper(holder)
    assert len(keeper) == 1  # the dense layer has no zeros to keep
    optimizer = torch.optim.AdamW(holder.parameters(), lr=0.1)
    holder["pruned"](torch.randn(2, 8)).sum().backward()
    optimizer.step()
    assert bool((layer.weight[:, ::2] != 0).any())  # the optimizer refilled them...
    keeper.apply()
    assert bool((layer.weight[:, ::2] == 0).all()) and bool((layer.weight[:, 1::2] != 0).all())


def test_owl_outlier_ratio_and_layer_sparsities() -> None:
    from compress.prune.owl import layer_sparsities, outlier_ratio

    scores = [torch.ones(10, 10), torch.tensor([[100.0, 1.0]])]  # one score far above 5 × the mean of 102
    assert outlier_ratio(scores, threshold=5) == pytest.approx(1 / 102)
    assert outlier_ratio([torch.ones(4, 4)], threshold=5) == 0
    sparsities = layer_sparsities([0.01, 0.02, 0.03], target=0.5, spread=0.08)
    assert sparsities == pytest.approx([0.58, 0.5, 0.42])  # more outliers → denser, the mean kept
    uneven = layer_sparsities([0.0, 0.0, 0.1, 0.05], target=0.6, spread=0.1)
    assert sum(uneven) / 4 == pytest.approx(0.6) and max(uneven) - min(uneven) == pytest.approx(0.2)
    assert layer_sparsities([0.2, 0.2], target=0.5, spread=0.08) == [0.5, 0.5]
    with pytest.raises(ValueError, match="outside"):
        layer_sparsities([0.0, 1.0], target=0.95, spread=0.08)
