"""Quantized checkpoints in the compressed-tensors `pack-quantized` layout: written by compress, read back by
compress and by plain transformers (with compressed-tensors installed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from compress.errors import ModelError
from compress.models.compressed_tensors import (
    QuantizedLinear,
    build_quantized_skeleton,
    quantization_config,
    quantization_config_for,
    replace_linears,
)
from compress.models.handle import ModelHandle
from compress.quantize.pack import pack_int, pack_zero_point, unpack_int, unpack_zero_point
from compress.quantize.scheme import QuantizedWeight, QuantScheme

TEXT = "a gripping , funny and moving film about the lives of ordinary people"


def rtn(weight: torch.Tensor, scheme: QuantScheme, g_idx: torch.Tensor | None = None) -> QuantizedWeight:
    """Round-to-nearest with per-group min/max, in the signed convention of QuantizedWeight."""
    weight = weight.detach().float()
    columns = weight.shape[1]
    index = g_idx.long() if g_idx is not None else torch.arange(columns) // (scheme.group_size or columns)
    groups = scheme.groups(columns)
    scale = torch.empty(weight.shape[0], groups)
    zero = torch.zeros(weight.shape[0], groups)
    for g in range(groups):
        block = weight[:, index == g]
        if scheme.symmetric:
            scale[:, g] = (block.abs().amax(1) / scheme.qmax).clamp(min=1e-8)
        else:
            lo, hi = block.amin(1).clamp(max=0), block.amax(1).clamp(min=0)
            scale[:, g] = ((hi - lo) / (2**scheme.bits - 1)).clamp(min=1e-8)
            zero[:, g] = (scheme.qmin - lo / scale[:, g]).round().clamp(scheme.qmin, scheme.qmax)
    values = (weight / scale[:, index] + zero[:, index]).round().clamp(scheme.qmin, scheme.qmax)
    return QuantizedWeight(
        values=values.to(torch.int8),
        scale=scale,
        zero_point=None if scheme.symmetric else zero.to(torch.int8),
        scheme=scheme,
        g_idx=None if g_idx is None else g_idx.to(torch.int32),
    )


def act_order_g_idx(columns: int, group_size: int, seed: int) -> torch.Tensor:
    """A GPTQ-style act-order mapping: groups of `group_size` columns taken in a random column order."""
    perm = torch.randperm(columns, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(columns, dtype=torch.int32)
    g_idx[perm] = (torch.arange(columns) // group_size).to(torch.int32)
    return g_idx


def quantize_all(model: torch.nn.Module, scheme: QuantScheme, act_order: bool = False) -> dict[str, QuantizedWeight]:
    out = {}
    for i, (name, module) in enumerate(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            g_idx = act_order_g_idx(module.in_features, scheme.group_size, i) if act_order else None
            out[name] = rtn(module.weight, scheme, g_idx)
    return out


def save(handle: ModelHandle, directory: Path, config: dict) -> None:
    model = handle.model
    model.config.quantization_config = config
    model.config.save_pretrained(directory)
    handle.tokenizer.save_pretrained(directory)
    tensors, seen = {}, set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident not in seen:  # tied weights are stored once
            seen.add(ident)
            tensors[key] = tensor.contiguous()
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def logits(model: torch.nn.Module, handle: ModelHandle) -> torch.Tensor:
    ids = handle.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def reload_with_skeleton(directory: Path) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(directory)
    model = build_quantized_skeleton(AutoModelForCausalLM.from_config(config), config.quantization_config)
    missing, unexpected = model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
    tied = list(getattr(model, "_tied_weights_keys", None) or [])
    assert not unexpected
    assert all(key in tied for key in missing), missing
    return model.eval()


CASES = {
    "sym-group": (QuantScheme(bits=4, group_size=16, symmetric=True), False),
    "sym-channel": (QuantScheme(bits=4, group_size=None, symmetric=True), False),
    "asym-group": (QuantScheme(bits=4, group_size=16, symmetric=False), False),
    "asym-channel": (QuantScheme(bits=4, group_size=None, symmetric=False), False),
    "sym-group-8bit": (QuantScheme(bits=8, group_size=16, symmetric=True), False),
    "asym-group-3bit": (QuantScheme(bits=3, group_size=16, symmetric=False), False),
    "sym-group-act-order": (QuantScheme(bits=4, group_size=16, symmetric=True), True),
}


@dataclass
class Checkpoint:
    handle: ModelHandle  # its model now holds the QuantizedLinears
    quantized: dict[str, QuantizedWeight]
    scheme: QuantScheme
    act_order: bool
    directory: Path
    dense_logits: torch.Tensor  # before quantization


@pytest.fixture(params=list(CASES), ids=list(CASES))
def checkpoint(request: pytest.FixtureRequest, tiny_llama: ModelHandle, tmp_path: Path) -> Checkpoint:
    scheme, act_order = CASES[request.param]
    dense = logits(tiny_llama.model, tiny_llama)
    quantized = quantize_all(tiny_llama.model, scheme, act_order)
    replace_linears(tiny_llama.model, quantized, torch.float32)
    config = quantization_config({"Linear": scheme}, ["lm_head"], actorder="group" if act_order else None)
    save(tiny_llama, tmp_path, config)
    return Checkpoint(tiny_llama, quantized, scheme, act_order, tmp_path, dense)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33), (4, 64), (2, 100)])
def test_pack_round_trip_matches_compressed_tensors(bits: int, shape: tuple[int, int]) -> None:
    rows, cols = shape
    generator = torch.Generator().manual_seed(bits * 1000 + cols)
    values = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), shape, generator=generator, dtype=torch.int8)
    values[0, 0] = -(2 ** (bits - 1))  # both ends of the range, where an offset or sign bug shows
    values[-1, -1] = 2 ** (bits - 1) - 1
    packed = pack_int(values, bits)
    assert packed.dtype == torch.int32 and packed.shape == (rows, -(-cols * bits // 32))
    assert torch.equal(unpack_int(packed, bits, cols), values)
    packed_zp = pack_zero_point(values, bits)
    assert packed_zp.shape == (-(-rows * bits // 32), cols)
    assert torch.equal(unpack_zero_point(packed_zp, bits, rows), values)

    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    assert torch.equal(packed, helpers.pack_to_int32(values, bits))
    assert torch.equal(helpers.unpack_from_int32(packed, bits, torch.Size(shape)), values)
    assert torch.equal(packed_zp, helpers.pack_to_int32(values, bits, packed_dim=0))
    assert torch.equal(helpers.unpack_from_int32(packed_zp, bits, torch.Size(shape), packed_dim=0), values)


def test_pack_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="4-bit range"):
        pack_int(torch.tensor([[8]], dtype=torch.int8), 4)


def test_quantized_linear_state_dict_and_forward(tiny_llama: ModelHandle) -> None:
    scheme = QuantScheme(bits=4, group_size=16, symmetric=False)
    linear = tiny_llama.model.model.layers[0].self_attn.q_proj
    qw = rtn(linear.weight, scheme)
    layer = QuantizedLinear.from_quantized(qw, bias=torch.randn(linear.out_features), dtype=torch.float32)
    state = layer.state_dict()
    assert {k: v.dtype for k, v in state.items()} == {
        "weight_packed": torch.int32,
        "weight_scale": torch.float32,
        "weight_zero_point": torch.int32,
        "weight_shape": torch.int64,
        "bias": torch.float32,
    }
    assert state["weight_packed"].shape == (32, 4) and state["weight_zero_point"].shape == (4, 2)
    assert state["weight_shape"].tolist() == [32, 32]
    x = torch.randn(3, 32)
    assert torch.allclose(layer(x), x @ qw.dequantize().T + layer.bias, atol=1e-6)
    round_trip = layer.to_quantized()
    assert torch.equal(round_trip.values, qw.values) and torch.equal(round_trip.zero_point, qw.zero_point)
    assert "bits=4, group_size=16, symmetric=False, act_order=False" in repr(layer)
    # The cached dense weight must follow a dtype change rather than serve the stale float32 copy.
    assert layer.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_config_is_valid_for_compressed_tensors(checkpoint: Checkpoint) -> None:
    scheme, act_order = checkpoint.scheme, checkpoint.act_order
    config = json.loads((checkpoint.directory / "config.json").read_text())["quantization_config"]
    ct = pytest.importorskip("compressed_tensors")
    assert config["version"] == ct.__version__
    assert config["ignore"] == ["lm_head"] and config["config_groups"]["group_0"]["targets"] == ["Linear"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert weights["strategy"] == ("channel" if scheme.group_size is None else "group")
    from compressed_tensors.quantization import QuantizationConfig

    if act_order:
        # compressed-tensors 0.19.0 removed actorder "group" (the g_idx layout); older releases and vLLM read it.
        with pytest.raises(ValueError, match="actorder='group' has been removed"):
            QuantizationConfig.model_validate(config)
    else:
        parsed = QuantizationConfig.model_validate(config)
        assert parsed.config_groups["group_0"].weights.num_bits == scheme.bits


def test_reload_with_skeleton_matches_in_memory(checkpoint: Checkpoint) -> None:
    handle = checkpoint.handle
    expected = logits(handle.model, handle)
    assert not torch.allclose(expected, checkpoint.dense_logits, atol=1e-5)  # the layers really are quantized
    for name, qw in checkpoint.quantized.items():
        assert torch.allclose(handle.model.get_submodule(name).dequantized_weight(), qw.dequantize(), atol=1e-7)
    reloaded = reload_with_skeleton(checkpoint.directory)
    assert isinstance(reloaded.model.layers[1].mlp.down_proj, QuantizedLinear)
    assert reloaded.model.layers[1].mlp.down_proj.scheme == checkpoint.scheme
    assert (reloaded.model.layers[1].mlp.down_proj.weight_g_idx is not None) == checkpoint.act_order
    assert isinstance(reloaded.lm_head, torch.nn.Linear)
    torch.testing.assert_close(logits(reloaded, handle), expected, atol=1e-5, rtol=0)


def test_plain_transformers_loads_checkpoint(checkpoint: Checkpoint) -> None:
    """What compressed-tensors 0.19.0 + transformers 5 can read of our checkpoints, case by case."""
    pytest.importorskip("compressed_tensors")
    from transformers import CompressedTensorsConfig

    handle, scheme, directory = checkpoint.handle, checkpoint.scheme, checkpoint.directory
    expected = logits(handle.model, handle)
    if checkpoint.act_order:
        with pytest.raises(ValueError, match="actorder='group' has been removed"):
            AutoModelForCausalLM.from_pretrained(directory)
        return
    if scheme.symmetric:
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        torch.testing.assert_close(logits(model, handle), expected, atol=1e-4, rtol=0)
    else:
        # The default (compressed) load builds the layers on the meta device, where compressed-tensors does not
        # pack the zero point, so its shape clashes with the packed one in the file. compressed-tensors' own
        # asymmetric pack-quantized checkpoints fail the same way.
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            AutoModelForCausalLM.from_pretrained(directory)
    # Dequantize-at-load reads every case; `run_compressed=False` as a plain from_pretrained kwarg does not work.
    loader = CompressedTensorsConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=loader).eval()
    torch.testing.assert_close(logits(model, handle), expected, atol=1e-4, rtol=0)


def test_packed_bytes_per_weight(checkpoint: Checkpoint) -> None:
    scheme = checkpoint.scheme
    with safe_open(str(checkpoint.directory / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        for name, qw in checkpoint.quantized.items():
            packed = f.get_tensor(f"{name}.weight_packed")
            assert packed.dtype == torch.int32
            bytes_per_weight = packed.numel() * 4 / qw.values.numel()
            assert bytes_per_weight == pytest.approx(scheme.bits / 8)  # in_features * bits is a multiple of 32 here
            assert f.get_tensor(f"{name}.weight_shape").tolist() == list(qw.values.shape)
            assert (f"{name}.weight_zero_point" in keys) == (not scheme.symmetric)
            assert f"{name}.weight" not in keys
    assert "lm_head.weight" in keys


def test_mixed_schemes_use_name_targets(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    attention = QuantScheme(bits=4, group_size=16, symmetric=True)
    mlp = QuantScheme(bits=8, group_size=None, symmetric=True)
    model = tiny_llama.model
    quantized = {
        name: rtn(module.weight, mlp if ".mlp." in name else attention)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    del quantized["model.layers.0.self_attn.o_proj"]  # one Linear left dense, outside both groups
    replace_linears(model, quantized)
    config = quantization_config_for(model, quantized)
    assert len(config["config_groups"]) == 2
    assert all(t.startswith("re:") for g in config["config_groups"].values() for t in g["targets"])
    save(tiny_llama, tmp_path, config)
    expected = logits(model, tiny_llama)
    reloaded = reload_with_skeleton(tmp_path)
    assert isinstance(reloaded.model.layers[0].self_attn.o_proj, torch.nn.Linear)
    assert reloaded.model.layers[1].mlp.up_proj.scheme == mlp
    torch.testing.assert_close(logits(reloaded, tiny_llama), expected, atol=1e-5, rtol=0)
    pytest.importorskip("compressed_tensors")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(plain, tiny_llama), expected, atol=1e-4, rtol=0)


def test_tied_output_embedding(tiny_tokenizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tiny_tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    handle = ModelHandle(model=LlamaForCausalLM(config).eval(), tokenizer=tiny_tokenizer, task="causal-lm")
    scheme = QuantScheme(bits=4, group_size=16, symmetric=True)
    with pytest.raises(ModelError, match="shares its weight"):
        replace_linears(handle.model, {"lm_head": rtn(handle.model.lm_head.weight, scheme)})
    replace_linears(handle.model, quantize_all(handle.model, scheme))
    save(handle, tmp_path, quantization_config({"Linear": scheme}, ["lm_head"]))
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))  # stored once, as the embedding
    expected = logits(handle.model, handle)
    reloaded = reload_with_skeleton(tmp_path)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    torch.testing.assert_close(logits(reloaded, handle), expected, atol=1e-5, rtol=0)
    pytest.importorskip("compressed_tensors")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(plain, handle), expected, atol=1e-4, rtol=0)


def test_skeleton_rejects_what_it_cannot_run(tiny_llama: ModelHandle) -> None:
    config = quantization_config({"Linear": QuantScheme(bits=8, group_size=None, symmetric=True)}, ["lm_head"])
    config["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int", "dynamic": True}
    with pytest.raises(ModelError, match="activation quantization"):
        build_quantized_skeleton(tiny_llama.model, config)
    with pytest.raises(ModelError, match="not 'compressed-tensors'"):
        build_quantized_skeleton(tiny_llama.model, {"quant_method": "gptq"})
