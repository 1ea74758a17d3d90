"""SmoothQuant → W8A8: the smoothing scales, the integer kernels, and the `smoothquant` step on a tiny Llama
(what it replaces, how close it stays, what it saves, and what transformers makes of the checkpoint)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from quant_helpers import CALIBRATION, context, logits, probe_ids
from safetensors.torch import load_file
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from compress.data.text_data import TextData
from compress.errors import ModelError
from compress.models.compressed_tensors import build_quantized_skeleton
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.models.w8a8 import (
    W8A8Linear,
    fbgemm_available,
    quantize_per_token,
    replace_with_w8a8,
    w8a8_quantization_config,
)
from compress.quantize.awq import apply_awq_scale
from compress.quantize.smoothquant import channel_absmax, outlier_ratio, smoothing_scales
from compress.steps.quantize.smoothquant import SmoothQuant

CPU_KERNELS = ["int_mm"] + (["fbgemm", "fbgemm_act"] if fbgemm_available() else [])
needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="fbgemm is not in this torch build")


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output.float() - reference.float()).norm() / reference.float().norm())


# --- the scales ----------------------------------------------------------------------------------------------


def test_scales_follow_the_formula_and_the_reference_clamps() -> None:
    absmax = torch.tensor([4.0, 9.0, 0.0, 1.0])
    # Column maxima over both weights: [2, 1, 3, 0] (the last column is all zero).
    w1 = torch.tensor([[2.0, -0.5, 1.0, 0.0], [-1.0, 1.0, 0.0, 0.0]])
    w2 = torch.tensor([[0.5, 0.25, -3.0, 0.0]])
    scales = smoothing_scales(absmax, [w1, w2], alpha=0.5)
    expected = torch.tensor([(4 / 2) ** 0.5, (9 / 1) ** 0.5, 1e-5, 1 / 1e-5**0.5])  # dead channel, zero column
    torch.testing.assert_close(scales, expected)
    torch.testing.assert_close(smoothing_scales(absmax[:2], [w1[:, :2]], alpha=1.0), torch.tensor([4.0, 9.0]))
    torch.testing.assert_close(smoothing_scales(absmax[:2], [w1[:, :2]], alpha=0.0), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="alpha"):
        smoothing_scales(absmax, [w1], alpha=1.5)
    with pytest.raises(ValueError, match="does not read"):
        smoothing_scales(absmax, [w1[:, :3]], alpha=0.5)


def test_channel_absmax_is_a_running_max_over_tokens() -> None:
    first = torch.tensor([[[1.0, -5.0], [2.0, 0.5]]])  # (batch, tokens, channels)
    second = torch.tensor([[-3.0, 1.0]])
    torch.testing.assert_close(channel_absmax(second, channel_absmax(first)), torch.tensor([3.0, 5.0]))


def outlier_inputs(tokens: int = 256, channels: int = 128, outliers: int = 4, factor: float = 50.0) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(tokens, channels)
    x[:, :outliers] *= factor  # a few channels 50x larger in every token, as in the paper's Figure 4
    return x


def test_smoothing_flattens_the_activations_and_keeps_the_function() -> None:
    torch.manual_seed(0)
    norm = LlamaRMSNorm(128)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.rand(128))
        norm.weight[:4] *= 50  # outlier channels come out of the norm's gain, as in real LLMs
    q, k = nn.Linear(128, 64, bias=False), nn.Linear(128, 32, bias=False)
    x = torch.randn(2, 96, 128)
    with torch.no_grad():
        before = norm(x)
        outputs = [q(before), k(before)]
        absmax = channel_absmax(before)
        apply_awq_scale([q, k], norm, smoothing_scales(absmax, [q.weight, k.weight], alpha=0.5))
        after = norm(x)
        for linear, output in zip((q, k), outputs, strict=True):
            torch.testing.assert_close(linear(after), output, atol=1e-4, rtol=1e-4)
    assert outlier_ratio(absmax) > 40
    assert outlier_ratio(channel_absmax(after)) < outlier_ratio(absmax) / 5


# --- the W8A8 Linear -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_w8a8_is_close_to_fp32_without_outliers(kernel: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    layer = W8A8Linear.from_linear(linear)
    layer.kernel = kernel
    x = torch.randn(4, 16, 256)
    with torch.no_grad():
        output, reference = layer(x), linear(x)
    assert output.shape == reference.shape
    assert relative_error(output, reference) < 0.02


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_smoothing_beats_plain_w8a8_on_outlier_channels(kernel: str) -> None:
    x = outlier_inputs()
    torch.manual_seed(1)
    linear = nn.Linear(128, 96, bias=False)
    with torch.no_grad():
        # Every channel matters as much to the output (outlier columns scaled down by as much as their inputs
        # are up): otherwise the outliers dominate the output and hide what happens to the other channels.
        linear.weight[:, :4] /= 50
        reference = linear(x)
        plain = W8A8Linear.from_linear(linear)
        plain.kernel = kernel
        plain_error = relative_error(plain(x), reference)
        scales = smoothing_scales(channel_absmax(x), [linear.weight], alpha=0.5)
        smoothed_linear = copy.deepcopy(linear)
        smoothed_linear.weight.mul_(scales)  # the fold into the producing op is x / scales
        smoothed = W8A8Linear.from_linear(smoothed_linear)
        smoothed.kernel = kernel
        smoothed_error = relative_error(smoothed(x / scales), reference)
    assert plain_error > 0.1  # per-token int8 spends its levels on the outliers: the other channels round to 0
    assert smoothed_error < 0.02 and smoothed_error < plain_error / 10


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_the_int8_path_accumulates_exact_integers(kernel: str) -> None:
    torch.manual_seed(0)
    layer = W8A8Linear(1024, 48, bias=False)
    weight = torch.randint(-128, 128, (48, 1024), dtype=torch.int8)
    # Worst cases for AVX2's saturating int16 pair sums: extreme codes meeting extreme weights of both signs.
    weight[0], weight[1] = 127, -128
    layer.weight.copy_(weight)
    layer.kernel = kernel
    codes = torch.randint(-128, 128, (9, 1024), dtype=torch.int8)
    codes[0], codes[1] = 127, -128
    exact = codes.long() @ weight.long().t()  # |values| < 2**24: float32 holds them exactly
    assert torch.equal(layer.accumulate(codes), exact.float())
    if kernel == "int_mm":
        assert torch._int_mm(codes, weight.t()).dtype == torch.int32
    # The forward is that integer product rescaled, not a float matmul of the dequantized weight.
    x = torch.randn(9, 1024)
    quantized, scale = quantize_per_token(x)
    expected = (quantized.long() @ weight.long().t()).double() * scale.double() * layer.weight_scale.double().t()
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("tokens", [1, 2, 3])
def test_decode_sized_worst_cases_are_exact(kernel: str, tokens: int) -> None:
    """The operands that saturate AVX2's int16 pair sums soonest, at decode sizes (fbgemm may take other code
    paths for a handful of rows): every sign combination of extreme codes against extreme weights, and codes
    alternating between the extremes, which `fbgemm_act` splits into its largest uint8 operands (127, 128)."""
    torch.manual_seed(0)
    in_features = 512
    weight = torch.empty(6, in_features, dtype=torch.int8)
    weight[0], weight[1], weight[2] = 127, -128, 0
    weight[3, 0::2], weight[3, 1::2] = 127, -128
    weight[4] = torch.randint(-128, 128, (in_features,), dtype=torch.int8)
    weight[5, 0::2], weight[5, 1::2] = -128, 127
    layer = W8A8Linear(in_features, 6, bias=False)
    layer.weight.copy_(weight)
    layer.kernel = kernel
    rows = torch.empty(5, in_features, dtype=torch.int8)
    rows[0], rows[1] = 127, -128
    rows[2, 0::2], rows[2, 1::2] = 127, -128
    rows[3, 0::2], rows[3, 1::2] = -128, 127
    rows[4, 0::2], rows[4, 1::2] = -127, 126  # odd codes: the two halves differ
    for start in range(rows.shape[0] - tokens + 1):
        codes = rows[start : start + tokens]
        assert torch.equal(layer.accumulate(codes), (codes.long() @ weight.long().t()).float())


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_large_inputs_are_exact_while_the_sums_fit_float32(kernel: str) -> None:
    """Past 2048 inputs, extreme codes could make one activation half exceed 2**24 while the total does not;
    `fbgemm_act` halves differ by at most one per code, so they stay exact whenever the total is."""
    torch.manual_seed(0)
    in_features = 8192
    weight = torch.empty(3, in_features, dtype=torch.int8)
    weight[0, 0::2], weight[0, 1::2] = 127, -127  # cancels against constant codes: a small total
    weight[1] = torch.randint(-128, 128, (in_features,), dtype=torch.int8)
    weight[2, : in_features // 2], weight[2, in_features // 2 :] = 127, -128
    layer = W8A8Linear(in_features, 3, bias=False)
    layer.weight.copy_(weight)
    layer.kernel = kernel
    codes = torch.empty(3, in_features, dtype=torch.int8)
    codes[0], codes[1] = 127, -128
    codes[2] = torch.randint(-128, 128, (in_features,), dtype=torch.int8)
    exact = codes.long() @ weight.long().t()
    assert exact.abs().max() < 2**24
    assert torch.equal(layer.accumulate(codes), exact.float())


@needs_fbgemm
def test_kernels_agree_and_tokens_are_independent() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    layers = {kernel: W8A8Linear.from_linear(linear) for kernel in ("int_mm", *CPU_KERNELS[1:], "auto")}
    for kernel, layer in layers.items():
        layer.kernel = kernel
    x = outlier_inputs(tokens=12, channels=64)
    x[5] = 0  # an all-zero token: its scale is clamped, its codes are 0
    reference = layers["int_mm"](x)
    for kernel, layer in layers.items():
        # The same integers and the same rescale: the kernels give bit-identical outputs, with or without
        # autograd recording, whatever the input's leading dimensions.
        assert torch.equal(layer(x), reference), kernel
        with torch.no_grad():
            assert torch.equal(layer(x.reshape(3, 4, 64)), reference.reshape(3, 4, 40)), kernel
            assert torch.equal(layer(x[7]), reference[7]), kernel  # one unbatched token
            # per-token scales: a token's output does not depend on its batch
            assert torch.equal(layer(x[3:4]), reference[3:4]), kernel
        copied = copy.deepcopy(layer)
        assert torch.equal(copied(x), reference)
    assert torch.equal(reference[5], linear.bias.detach())
    with torch.no_grad():  # prefill-sized: `fbgemm_act` takes a fresh buffer rather than its kept one
        many = torch.randn(2, 400, 64)
        assert torch.equal(layers["fbgemm_act"](many), layers["int_mm"](many))


@needs_fbgemm
def test_auto_splits_activations_on_avx2_and_follows_new_weights() -> None:
    torch.manual_seed(0)
    layer = W8A8Linear.from_linear(nn.Linear(32, 16))
    assert layer.resolved_kernel() == ("int_mm" if torch.cpu._is_vnni_supported() else "fbgemm_act")
    x = torch.randn(5, 32)
    with torch.no_grad():
        layer(x[:1]), layer(x)  # prepares (packs) the kernels' weights
        other = W8A8Linear.from_linear(nn.Linear(32, 16))
        layer.load_state_dict(other.state_dict())  # the packed weights must not outlive the weights
        assert torch.equal(layer(x[:1]), other(x[:1])) and torch.equal(layer(x), other(x))


# --- the step ------------------------------------------------------------------------------------------------


def with_outlier_channels(handle: ModelHandle) -> ModelHandle:
    """The tiny Llama with a few 50x norm-gain channels, the activation outliers SmoothQuant is for."""
    with torch.no_grad():
        for layer in handle.model.model.layers:
            layer.input_layernorm.weight[:3] *= 50
            layer.post_attention_layernorm.weight[5:7] *= 50
    return handle


def test_step_replaces_linears_smooths_and_saves(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    handle = with_outlier_channels(tiny_llama)
    ids = probe_ids(handle, wiki)
    reference = logits(handle.model, ids)
    plain = handle.replace(model=copy.deepcopy(handle.model))
    replace_with_w8a8(plain.model, [n for n, m in plain.model.named_modules() if isinstance(m, nn.Linear)][:-1])

    step = SmoothQuant(calibration=CALIBRATION)
    quantized = step.apply(handle, context(wiki, tmp_path))
    kinds = {n: type(m) for n, m in quantized.model.named_modules() if isinstance(m, nn.Linear | W8A8Linear)}
    assert kinds.pop("lm_head") is nn.Linear
    assert len(kinds) == 14 and all(kind is W8A8Linear for kind in kinds.values())
    details = step.details()
    assert details["smoothed"] == 4  # two norm → projections mappings per layer, none from a Linear
    assert details["outlier_ratio_after"] < details["outlier_ratio_before"] / 3
    config = quantized.model.config.quantization_config
    assert config["format"] == "int-quantized" and config["ignore"] == ["lm_head"]
    assert config["config_groups"]["group_0"]["input_activations"]["strategy"] == "token"

    expected = logits(quantized.model, ids)
    error = relative_error(expected, reference)
    assert 0 < error < 0.05
    assert error < relative_error(logits(plain.model, ids), reference)  # smoothing pays off

    save_handle(quantized, tmp_path / "stage")
    tensors = load_file(str(tmp_path / "stage" / "model.safetensors"))
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == torch.int8
    assert tensors["model.layers.0.mlp.down_proj.weight_scale"].shape == (32, 1)
    reloaded = load_handle(tmp_path / "stage")
    assert isinstance(reloaded.model.model.layers[1].self_attn.q_proj, W8A8Linear)
    assert torch.equal(logits(reloaded.model, ids), expected)

    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    # compressed-tensors decompresses the int8 weights and simulates per-token int8 activations in float.
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "stage").eval()
    assert relative_error(logits(hf, ids), expected) < 2e-2


def test_bits_and_scheme_are_fixed() -> None:
    assert SmoothQuant().config.scheme.bits == 8 and SmoothQuant().config.alpha == 0.5
    for bad in ({"bits": 4}, {"group_size": 128}, {"symmetric": False}, {"alpha": 1.5}):
        with pytest.raises(ValidationError):
            SmoothQuant(**bad)


def test_skeleton_rejects_int_quantized_groups_that_are_not_w8a8(tiny_llama: ModelHandle) -> None:
    config = w8a8_quantization_config(["Linear"], ["lm_head"])
    config["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor"
    with pytest.raises(ModelError, match=re.escape("input_activations.strategy='tensor'")):
        build_quantized_skeleton(tiny_llama.model, config)
