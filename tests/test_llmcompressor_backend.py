"""`backend: llmcompressor` for gptq / awq on a tiny random Llama: llm-compressor's `oneshot` runs, its result
becomes our QuantizedLinears, stays close to the fp model, saves the very tensors llm-compressor itself writes,
and lands in the same error range as the native implementation.

Needs llmcompressor (its own environment: `nox -s llmcompressor`); skipped elsewhere."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("llmcompressor")


from quant_helpers import CALIBRATION, context, copy_of, logits, mean_error, probe_ids

from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.models.compressed_tensors import QuantizedLinear, quantization_config
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.steps.quantize import llmcompressor_backend as backend
from compress.steps.quantize.awq import AWQ, AWQConfig
from compress.steps.quantize.gptq import GPTQ, GPTQConfig
from compress.steps.quantize.rtn import RTN

CPU = torch.device("cpu")


def configured(method: str, **settings: object) -> GPTQConfig | AWQConfig:
    kind = GPTQConfig if method == "gptq" else AWQConfig
    return kind(bits=4, group_size=16, calibration=CALIBRATION, **settings)


def windows(handle: ModelHandle, config: GPTQConfig | AWQConfig, wiki: TextData, tmp_path: Path) -> list[torch.Tensor]:
    """The calibration windows the native step draws for the same settings."""
    step = GPTQ(config) if isinstance(config, GPTQConfig) else AWQ(config)
    return step.calibration_batches(handle, context(wiki, tmp_path))


def run_backend(
    method: str, handle: ModelHandle, config: GPTQConfig | AWQConfig, batches: list[torch.Tensor], tmp_path: Path
) -> dict[str, object]:
    """What the step does with backend llmcompressor: quantize in place, then record the checkpoint's config."""
    details = backend.quantize_with_llmcompressor(
        method, handle.model, handle.tokenizer, config, batches, CPU, tmp_path / "work"
    )
    actorder = "static" if getattr(config, "act_order", False) else None
    handle.model.config.quantization_config = quantization_config(
        dict.fromkeys(config.targets, config.scheme), config.ignore, actorder=actorder
    )
    return details


@pytest.mark.parametrize(
    ("method", "settings"),
    [("gptq", {}), ("gptq", {"act_order": True}), ("gptq", {"symmetric": True}), ("awq", {}), ("awq", {"clip": False})],
    ids=["gptq", "gptq-act-order", "gptq-symmetric", "awq", "awq-no-clip"],
)
def test_backend_quantizes_every_linear_but_the_head(
    method: str, settings: dict[str, object], tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    rtn = RTN(bits=4, group_size=16, symmetric=bool(settings.get("symmetric", False)))
    rtn_error = mean_error(rtn.apply(copy_of(tiny_llama), context(wiki, tmp_path)), reference, ids)
    config = configured(method, **settings)
    details = run_backend(method, tiny_llama, config, windows(tiny_llama, config, wiki, tmp_path), tmp_path)
    assert details["llmcompressor_version"] == backend.PINNED_VERSION
    kinds = {
        n: type(m) for n, m in tiny_llama.model.named_modules() if isinstance(m, torch.nn.Linear | QuantizedLinear)
    }
    assert kinds.pop("lm_head") is torch.nn.Linear
    assert kinds and all(kind is QuantizedLinear for kind in kinds.values())
    # llm-compressor's offloading, hooks and save_pretrained are gone: a plain model with our layers.
    assert "save_pretrained" not in tiny_llama.model.__dict__
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_llama.model.modules())
    error = mean_error(tiny_llama, reference, ids)
    print(f"{method} {settings}: llm-compressor error {error:.3e}, rtn {rtn_error:.3e}, details {details}")
    assert 0 < error < 1.5 * rtn_error
    expected = logits(tiny_llama.model, ids)
    save_handle(tiny_llama, tmp_path / "stage")
    assert torch.equal(logits(load_handle(tmp_path / "stage").model, ids), expected)


@pytest.mark.parametrize(("method", "settings"), [("gptq", {}), ("awq", {})], ids=["gptq", "awq"])
def test_checkpoint_matches_llmcompressors_own(
    method: str, settings: dict[str, object], tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    """Our saved tensors equal those llm-compressor writes itself (`save_pretrained(save_compressed=True)`)."""
    config = configured(method, **settings)
    batches = windows(tiny_llama, config, wiki, tmp_path)
    theirs = copy.deepcopy(tiny_llama.model)
    backend._run_oneshot(method, theirs, tiny_llama.tokenizer, config, batches, tmp_path / "theirs-work")
    theirs.save_pretrained(tmp_path / "theirs", save_compressed=True)
    run_backend(method, tiny_llama, config, batches, tmp_path)
    save_handle(tiny_llama, tmp_path / "ours")
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    reference = load_file(str(tmp_path / "theirs" / "model.safetensors"))
    packed = [k for k in reference if k.endswith((".weight_packed", ".weight_scale", ".weight_zero_point"))]
    assert len(packed) == 3 * 7 * 2  # three tensors for each of the 7 Linears in both layers
    for key in [*packed, "model.norm.weight", "model.layers.0.input_layernorm.weight", "lm_head.weight"]:
        assert torch.equal(ours[key], reference[key]), key


def test_native_and_llmcompressor_gptq_are_comparable(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    config = configured("gptq")
    batches = windows(tiny_llama, config, wiki, tmp_path)
    rtn = RTN(bits=4, group_size=16).apply(copy_of(tiny_llama), context(wiki, tmp_path))
    native = GPTQ(config).apply(copy_of(tiny_llama), context(wiki, tmp_path))
    theirs = copy_of(tiny_llama)
    run_backend("gptq", theirs, config, batches, tmp_path)
    errors = {name: mean_error(h, reference, ids) for name, h in [("rtn", rtn), ("native", native), ("llmc", theirs)]}
    print(f"logits MSE vs fp: {errors}")
    assert errors["native"] < 1.5 * errors["rtn"] and errors["llmc"] < 1.5 * errors["rtn"]


def test_act_order_groups_are_refused_before_work(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    config = configured("gptq", act_order=True, static_groups=False)
    batches = [torch.zeros(1, 8, dtype=torch.int64)]
    with pytest.raises(ConfigError) as error:
        backend.quantize_with_llmcompressor(
            "gptq", tiny_llama.model, tiny_llama.tokenizer, config, batches, CPU, tmp_path
        )
    assert error.value.where == "gptq.static_groups" and "static_groups: true" in error.value.fix
    assert not any(isinstance(m, QuantizedLinear) for m in tiny_llama.model.modules())
