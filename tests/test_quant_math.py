"""The quantization math on single weight matrices: RTN round trip, GPTQ against RTN, AWQ scale and clip search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.quantize import awq
from compress.quantize.awq import activation_mean, activation_scale_search, apply_awq_scale, clip_search
from compress.quantize.gptq import accumulate_hessian, gptq_quantize
from compress.quantize.rtn import compute_qparams, fake_quantize, rtn_quantize
from compress.quantize.scheme import QuantizedWeight, QuantScheme

SCHEMES = [QuantScheme(bits, group, sym) for bits in (4, 8) for group in (None, 64) for sym in (False, True)]


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _output_error(x: torch.Tensor, weight: torch.Tensor, approx: torch.Tensor) -> float:
    return float((x @ weight.t() - x @ approx.t()).pow(2).sum())


# --- RTN ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_round_trip(scheme: QuantScheme) -> None:
    weight = torch.randn(32, 256, generator=_generator()) * 0.05
    weight[3] += 0.2  # an all-positive row: its range must still reach down to 0
    q = rtn_quantize(weight, scheme)
    groups = 1 if scheme.group_size is None else 256 // scheme.group_size
    assert q.values.dtype == torch.int8 and q.values.shape == (32, 256)
    assert q.scale.shape == (32, groups) and bool((q.scale > 0).all())
    assert int(q.values.min()) >= scheme.qmin and int(q.values.max()) <= scheme.qmax
    if scheme.symmetric:
        assert q.zero_point is None
    else:
        assert q.zero_point is not None and q.zero_point.dtype == torch.int8 and q.zero_point.shape == (32, groups)
    error = (q.dequantize() - weight).abs()
    half_step = q.scale[:, q.group_index()] / 2 * (1 + 1e-5)
    if scheme.symmetric:
        # The symmetric grid (compressed-tensors) is absmax / 2**(bits-1): +absmax lands on qmax + 1 and is clamped.
        clamped = q.values == scheme.qmax
        assert bool((error[~clamped] <= half_step[~clamped]).all())
        assert bool((error <= 2 * half_step).all())
    else:
        assert bool((error <= half_step).all())


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_zero_is_exact(scheme: QuantScheme) -> None:
    weight = torch.randn(16, 128, generator=_generator(1))
    weight[:, ::3] = 0.0
    weight[5] = 0.0  # an all-zero row gets the epsilon scale, not a division by zero
    dequantized = rtn_quantize(weight, scheme).dequantize()
    assert bool(torch.isfinite(dequantized).all())
    assert bool((dequantized[:, ::3] == 0).all()) and bool((dequantized[5] == 0).all())


def test_rtn_group_and_channel_shapes_differ_in_precision() -> None:
    weight = torch.randn(8, 512, generator=_generator(2))
    weight[:, :16] *= 10  # one group with a wide range would coarsen a per-channel grid everywhere
    per_channel = rtn_quantize(weight, QuantScheme(4, None, False))
    per_group = rtn_quantize(weight, QuantScheme(4, 128, False))
    assert per_channel.scale.shape == (8, 1) and per_group.scale.shape == (8, 4)
    error = (per_group.dequantize() - weight)[:, 128:].abs().mean()
    assert error < 0.5 * (per_channel.dequantize() - weight)[:, 128:].abs().mean()


def test_rtn_bad_scheme_raises() -> None:
    weight = torch.randn(4, 100)
    with pytest.raises(ValueError, match="does not divide"):
        rtn_quantize(weight, QuantScheme(4, 64, False))
    with pytest.raises(ValueError, match="bits"):
        rtn_quantize(weight, QuantScheme(9, None, False))
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize(weight, torch.eye(100), QuantScheme(4, 64, False))


def test_clip_ratio_shrinks_the_range() -> None:
    weight = torch.randn(4, 64, generator=_generator(3))
    scheme = QuantScheme(4, None, False)
    scale, _ = compute_qparams(weight, scheme)
    clipped_scale, zero_point = compute_qparams(weight, scheme, clip_ratio=torch.full((4,), 0.5))
    torch.testing.assert_close(clipped_scale, scale * 0.5)
    clipped = fake_quantize(weight, clipped_scale[:, None], zero_point[:, None], scheme)  # type: ignore[index]
    assert bool((clipped.amax(dim=1) <= weight.amax(dim=1) * 0.5 + clipped_scale).all())


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_matches_compressed_tensors(scheme: QuantScheme) -> None:
    """Bit-identical to the library that loads the checkpoints (when it is installed)."""
    quantization = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.utils import calculate_qparams

    weight = torch.randn(16, 256, generator=_generator(4))
    strategy = "channel" if scheme.group_size is None else "group"
    args = quantization.QuantizationArgs(
        num_bits=scheme.bits, symmetric=scheme.symmetric, strategy=strategy, group_size=scheme.group_size
    )
    groups = weight.reshape(16, -1, scheme.group_size or 256)
    scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    q = rtn_quantize(weight, scheme)
    assert torch.equal(q.scale, scale)
    if q.zero_point is not None:
        assert torch.equal(q.zero_point, zero_point)
    values = quantization.quantize(weight, scale, zero_point, args, dtype=torch.int8)
    assert torch.equal(q.values, values)
    assert torch.equal(q.dequantize(), quantization.fake_quantize(weight, scale, zero_point, args))


# --- GPTQ --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def correlated() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight (64, 256), inputs X = Z A (2048, 256) with a random mixing A, so H is far from diagonal, H)."""
    g = _generator(5)
    weight = torch.randn(64, 256, generator=g)
    x = torch.randn(2048, 256, generator=g) @ torch.randn(256, 256, generator=g)
    hessian, count = accumulate_hessian(None, x[:1000], 0)
    hessian, count = accumulate_hessian(hessian, x[1000:], count)
    return weight, x, hessian


def test_accumulate_hessian_is_the_running_mean() -> None:
    x = torch.randn(3, 40, 16, generator=_generator(6))
    hessian, count = None, 0
    for batch in x.split(1):  # (1, 40, 16) batches, as a forward hook sees them
        hessian, count = accumulate_hessian(hessian, batch, count)
    flat = x.reshape(-1, 16)
    assert count == 120 and hessian is not None
    torch.testing.assert_close(hessian, 2 / 120 * flat.t() @ flat)


@pytest.mark.parametrize(("act_order", "static_groups"), [(False, False), (True, False), (True, True)])
def test_gptq_beats_rtn_on_correlated_inputs(
    correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor], act_order: bool, static_groups: bool
) -> None:
    weight, x, hessian = correlated
    scheme = QuantScheme(4, 64, False)
    rtn = _output_error(x, weight, rtn_quantize(weight, scheme).dequantize())
    q, loss = gptq_quantize(weight, hessian, scheme, act_order=act_order, static_groups=static_groups)
    assert q.values.shape == weight.shape and q.scale.shape == (64, 4)
    assert int(q.values.min()) >= scheme.qmin and int(q.values.max()) <= scheme.qmax
    assert _output_error(x, weight, q.dequantize()) < 0.8 * rtn
    assert loss > 0


@pytest.mark.parametrize(("act_order", "static_groups"), [(False, False), (True, False), (True, True)])
def test_gptq_of_stacked_rows_equals_gptq_of_each(
    correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor], act_order: bool, static_groups: bool
) -> None:
    """Rows are independent given H: the GPTQ step quantizes q/k/v (sharing an input) as one stacked matrix."""
    weight, _x, hessian = correlated
    scheme = QuantScheme(4, 64, False)
    options = {"act_order": act_order, "static_groups": static_groups}
    stacked, stacked_loss = gptq_quantize(weight, hessian, scheme, **options)
    parts = stacked.split_rows([40, 24])
    for part, rows in zip(parts, (weight[:40], weight[40:]), strict=True):
        alone, _ = gptq_quantize(rows, hessian, scheme, **options)
        assert torch.equal(part.values, alone.values) and torch.equal(part.scale, alone.scale)
        assert part.zero_point is not None and alone.zero_point is not None
        assert torch.equal(part.zero_point, alone.zero_point)
        assert (part.g_idx is None) == (alone.g_idx is None)
    assert stacked_loss > 0


def test_gptq_symmetric_and_per_channel(correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    weight, x, hessian = correlated
    for scheme in (QuantScheme(4, 64, True), QuantScheme(4, None, False)):
        rtn = _output_error(x, weight, rtn_quantize(weight, scheme).dequantize())
        q, _ = gptq_quantize(weight, hessian, scheme, act_order=True)
        assert q.g_idx is None or scheme.group_size is not None
        assert _output_error(x, weight, q.dequantize()) < 0.8 * rtn


def test_gptq_static_groups_keep_the_plain_group_layout(
    correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    weight, _, hessian = correlated
    q, _ = gptq_quantize(weight, hessian, QuantScheme(4, 64, False), act_order=True, static_groups=True)
    assert q.g_idx is None
    assert torch.equal(q.group_index(), torch.arange(256) // 64)


def test_gptq_act_order_g_idx_maps_columns_to_their_groups(
    correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    weight, x, hessian = correlated
    scheme = QuantScheme(4, 64, False)
    q, _ = gptq_quantize(weight, hessian, scheme, act_order=True)
    assert q.g_idx is not None and q.g_idx.dtype == torch.int32
    assert torch.equal(torch.bincount(q.g_idx.long()), torch.full((4,), 64))
    assert not torch.equal(q.g_idx.long(), torch.arange(256) // 64)
    # The first group holds the columns with the largest H_ii (quantized first).
    top = torch.argsort(hessian.diagonal(), descending=True)[:64]
    assert bool((q.g_idx[top] == 0).all())
    # Dequantizing through g_idx is what makes the weights good; the plain layout would pair wrong scales.
    good = _output_error(x, weight, q.dequantize())
    wrong = QuantizedWeight(values=q.values, scale=q.scale, zero_point=q.zero_point, scheme=scheme).dequantize()
    assert _output_error(x, weight, wrong) > 1.5 * good


def test_gptq_dead_column(correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    weight, x, _ = correlated
    x = x.clone()
    x[:, 7] = 0.0
    hessian, _ = accumulate_hessian(None, x, 0)
    assert hessian[7, 7] == 0
    q, loss = gptq_quantize(weight, hessian, QuantScheme(4, 64, False), act_order=True)
    dequantized = q.dequantize()
    assert bool(torch.isfinite(dequantized).all()) and loss == loss
    assert bool((dequantized[:, 7] == 0).all())


def test_gptq_is_deterministic_and_leaves_inputs_alone(
    correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    weight, _, hessian = correlated
    weight_before, hessian_before = weight.clone(), hessian.clone()
    first, loss_1 = gptq_quantize(weight, hessian, QuantScheme(4, 64, False), act_order=True)
    second, loss_2 = gptq_quantize(weight, hessian, QuantScheme(4, 64, False), act_order=True)
    assert torch.equal(first.values, second.values) and torch.equal(first.scale, second.scale)
    assert loss_1 == loss_2
    assert torch.equal(weight, weight_before) and torch.equal(hessian, hessian_before)


def test_gptq_loss_shrinks_with_bits(correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    weight, _, hessian = correlated
    _, loss_4 = gptq_quantize(weight, hessian, QuantScheme(4, 64, False))
    _, loss_8 = gptq_quantize(weight, hessian, QuantScheme(8, 64, False))
    # One more bit quarters the squared rounding error: 4 more bits, about 256x.
    assert 0 < loss_8 < loss_4 / 100


def test_gptq_ill_conditioned_hessian(correlated: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    weight, x, _ = correlated
    scheme = QuantScheme(4, 64, False)
    # 32 tokens for 256 columns: H has rank 32 and, undamped, no Cholesky factor; the retry damps it.
    low_rank, _ = accumulate_hessian(None, x[:32], 0)
    q, loss = gptq_quantize(weight, low_rank, scheme, dampening=0.0)
    assert bool(torch.isfinite(q.dequantize()).all()) and loss == loss
    # Indefinite beyond any damping: a clear error rather than garbage.
    indefinite = 2 * torch.eye(256) - torch.ones(256, 256)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(weight, indefinite, scheme)
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(weight, torch.full((256, 256), float("nan")), scheme)


# --- AWQ ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outliers() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Two linears reading the same inputs, 4 of whose 256 channels are 30x larger (as in LLM activations)."""
    g = _generator(7)
    x = torch.randn(2048, 256, generator=g)
    x[:, [3, 50, 100, 200]] *= 30
    return [torch.randn(64, 256, generator=g), torch.randn(32, 256, generator=g)], x


def _awq_error(weights: list[torch.Tensor], x: torch.Tensor, scheme: QuantScheme, scales: torch.Tensor) -> float:
    return sum(_output_error(x, w, rtn_quantize(w * scales, scheme).dequantize() / scales) for w in weights)


def test_awq_scales_beat_rtn_on_outlier_channels(outliers: tuple[list[torch.Tensor], torch.Tensor]) -> None:
    weights, x = outliers
    scheme = QuantScheme(4, 64, False)
    scales = activation_scale_search(weights, x, scheme)
    assert scales.shape == (256,)
    assert bool((scales[[3, 50, 100, 200]] > scales.median()).all())  # the salient channels are scaled up
    assert _awq_error(weights, x, scheme, scales) < 0.8 * _awq_error(weights, x, scheme, torch.ones(256))


def test_awq_never_worse_than_rtn_without_outliers() -> None:
    g = _generator(8)
    weights, x = [torch.randn(48, 128, generator=g)], torch.randn(512, 128, generator=g)
    scheme = QuantScheme(4, 32, True)
    scales = activation_scale_search(weights, x, scheme, grid=10)
    assert _awq_error(weights, x, scheme, scales) <= _awq_error(weights, x, scheme, torch.ones(128)) * (1 + 1e-6)


def test_awq_output_fn_matches_the_default_objective(outliers: tuple[list[torch.Tensor], torch.Tensor]) -> None:
    weights, x = outliers
    scheme = QuantScheme(4, 64, False)

    def block(ws: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([x @ w.t() for w in ws], dim=1)

    default = activation_scale_search(weights, x, scheme, grid=8)
    torch.testing.assert_close(activation_scale_search(weights, x, scheme, grid=8, output_fn=block), default)


def test_awq_chunking_does_not_change_results(
    outliers: tuple[list[torch.Tensor], torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, x = outliers
    scheme = QuantScheme(4, 64, False)

    def results() -> tuple[torch.Tensor, ...]:
        scales = activation_scale_search(weights, x, scheme, grid=6)
        return activation_mean(x), scales, clip_search(weights[0], x, scheme)

    whole = results()
    monkeypatch.setattr(awq, "_CHUNK_ELEMENTS", 5000)  # a few dozen tokens / rows per chunk
    for a, b in zip(whole, results(), strict=True):
        torch.testing.assert_close(a, b)


def test_clip_search_never_increases_the_error(outliers: tuple[list[torch.Tensor], torch.Tensor]) -> None:
    weights, x = outliers
    weight, scheme = weights[0], QuantScheme(4, 64, False)
    ratios = clip_search(weight, x, scheme, n_sample_tokens=4096)  # all 2048 tokens: the exact objective
    assert ratios.shape == (64, 4)
    assert float(ratios.min()) >= 0.55 - 1e-6 and float(ratios.max()) == 1.0 and float(ratios.min()) < 1.0

    def group_errors(clip: float | torch.Tensor) -> torch.Tensor:
        difference = (weight - rtn_quantize(weight, scheme, clip_ratio=clip).dequantize()).reshape(64, 4, 64)
        return torch.einsum("tgk,ogk->otg", x.reshape(-1, 4, 64), difference).pow(2).mean(dim=1)

    assert bool((group_errors(ratios) <= group_errors(1.0) * (1 + 1e-5)).all())
    clipped = rtn_quantize(weight, scheme, clip_ratio=ratios).dequantize()
    assert _output_error(x, weight, clipped) < _output_error(x, weight, rtn_quantize(weight, scheme).dequantize())


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def test_apply_awq_scale_preserves_the_function() -> None:
    g = _generator(9)
    x = torch.randn(16, 64, generator=g)
    scales = torch.rand(64, generator=g) * 4 + 0.25

    # RMSNorm weight -> two Linears.
    norm = torch.rand(64, generator=g) + 0.5
    q_proj, k_proj = nn.Linear(64, 32), nn.Linear(64, 16)
    before = [lin(_rms_norm(x, norm)) for lin in (q_proj, k_proj)]
    apply_awq_scale([q_proj, k_proj], norm, scales)
    for lin, out in zip((q_proj, k_proj), before, strict=True):
        torch.testing.assert_close(lin(_rms_norm(x, norm)), out, rtol=1e-5, atol=1e-5)

    # LayerNorm (weight and bias) -> Linear weight tensor.
    layer_norm, fc = nn.LayerNorm(64), torch.randn(8, 64, generator=g)
    nn.init.normal_(layer_norm.bias)
    with torch.no_grad():
        reference = layer_norm(x) @ fc.t()
    apply_awq_scale([fc], layer_norm, scales)
    with torch.no_grad():
        torch.testing.assert_close(layer_norm(x) @ fc.t(), reference, rtol=1e-5, atol=1e-5)

    # Linear with bias (v_proj) -> Linear (o_proj), given as (weight, bias) tensors.
    v_proj, o_proj = nn.Linear(32, 64), nn.Linear(64, 32)
    with torch.no_grad():
        reference = o_proj(v_proj(x[:, :32]))
        apply_awq_scale([o_proj.weight], (v_proj.weight, v_proj.bias), scales)
        torch.testing.assert_close(o_proj(v_proj(x[:, :32])), reference, rtol=1e-5, atol=1e-5)


def test_apply_awq_scale_checks_before_modifying() -> None:
    norm, weight = torch.ones(64), torch.randn(8, 32)
    with pytest.raises(ValueError, match="cannot scale"):
        apply_awq_scale([weight], norm, torch.full((64,), 2.0))
    assert bool((norm == 1).all())
    with pytest.raises(ValueError, match="positive"):
        apply_awq_scale([torch.randn(8, 64)], norm, torch.zeros(64))
