"""`backend: auto-round` for the `autoround` step on tiny random Llamas: Intel's auto-round runs on the step's own
windows, its result becomes our QuantizedLinears that compute exactly what auto-round's own model computes, saves
and reloads (in compress and in plain transformers), beats RTN, lands near the native implementation, leaves no
trace on the model or the process, and refuses before any work what auto-round would not quantize.

Needs auto-round (`pip install "compress[autoround]"`); skipped elsewhere. The missing-package error is tested in
tests/test_autoround.py, which runs either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("auto_round")

from conftest import make_tiny_llama
from quant_helpers import CALIBRATION, all_plain, context, copy_of, logits, mean_error, probe_ids
from transformers import BertTokenizerFast

from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.models.compressed_tensors import QuantizedLinear
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.steps.quantize import autoround_backend as backend
from compress.steps.quantize.autoround import AutoRound
from compress.steps.quantize.rtn import RTN

# Every width a multiple of 32: auto-round leaves narrower Linears dense (see test_narrow_layers_are_refused).
GROUP = 32


@pytest.fixture(autouse=True)
def one_thread():
    """Hundreds of tiny forward/backward passes: a second thread buys nothing on tensors this small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def llama32(tiny_tokenizer: BertTokenizerFast) -> ModelHandle:
    """A random 2-layer Llama, hidden 64, MLP 128, 4 heads and 2 KV heads (k/v 32 wide)."""
    return make_tiny_llama(tiny_tokenizer, hidden=64)


def step(**settings: object) -> AutoRound:
    options: dict[str, object] = {"bits": 4, "group_size": GROUP, "iters": 10, "calibration": CALIBRATION}
    return AutoRound(**{**options, **settings})


def linear_kinds(handle: ModelHandle) -> dict[str, type]:
    return {n: type(m) for n, m in handle.model.named_modules() if isinstance(m, nn.Linear | QuantizedLinear)}


@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
def test_backend_computes_what_autoround_computes_and_reloads(
    symmetric: bool, llama32: ModelHandle, wiki: TextData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = probe_ids(llama32, wiki)
    seen: dict[str, torch.Tensor] = {}
    convert = backend._quantized_weights

    def spy(model: nn.Module, *args: object) -> object:
        # auto-round's own result, as the package hands it back: its fake-quantized model, before conversion.
        seen["logits"] = logits(model, ids)
        return convert(model, *args)

    monkeypatch.setattr(backend, "_quantized_weights", spy)
    ours = step(symmetric=symmetric, backend="auto-round")
    handle = ours.apply(llama32, context(wiki, tmp_path))

    kinds = linear_kinds(handle)
    assert kinds.pop("lm_head") is nn.Linear
    assert len(kinds) == 14 and all(kind is QuantizedLinear for kind in kinds.values())
    # Exact: the stored integers, zero points and scales dequantize to auto-round's very weights.
    assert torch.equal(logits(handle.model, ids), seen["logits"])
    if symmetric:  # auto-round's signed scales, stored as they are
        assert any(bool((m.weight_scale < 0).any()) for m in handle.model.modules() if isinstance(m, QuantizedLinear))

    details = ours.details()
    print(f"auto-round backend ({'symmetric' if symmetric else 'asymmetric'}): {details}")
    assert details["backend"] == "auto-round" and details["auto_round_version"] == backend.PINNED_VERSION
    assert details["quantized_modules"] == 14 and details["backend_seconds"] > 0
    settings = details["autoround_settings"]
    assert settings["algorithm"] == "SignRoundConfig" and settings["iters"] == 10
    assert settings["lr"] == pytest.approx(0.1) and settings["minmax_lr"] == pytest.approx(0.1)  # 1/iters
    assert (settings["nsamples"], settings["seqlen"], settings["batch_size"]) == (16, 64, 8)
    assert settings["amp"] is False and settings["torch_compile"] is False and settings["tuning_dtype"] == "float32"

    # Nothing of auto-round's is left on the model or in the process.
    assert not any("global_name" in m.__dict__ or "forward" in m.__dict__ for m in handle.model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in handle.model.modules())
    assert all(p.requires_grad for p in handle.model.parameters())
    assert {p.dtype for p in handle.model.parameters()} == {torch.float32}
    assert not torch.are_deterministic_algorithms_enabled()

    expected = logits(handle.model, ids)
    save_handle(handle, tmp_path / "stage")
    assert torch.equal(logits(load_handle(tmp_path / "stage").model, ids), expected)
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # As in test_quantize_steps: compressed-tensors 0.19 loads asymmetric checkpoints only by decompressing.
    options = {} if symmetric else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "stage", **options).eval()
    torch.testing.assert_close(logits(plain, ids), expected, atol=1e-4, rtol=1e-4)


def test_backend_beats_rtn_and_lands_near_native(llama32: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    ids = probe_ids(llama32, wiki)
    reference = logits(llama32.model, ids)
    ctx = context(wiki, tmp_path)
    errors = {
        "rtn": mean_error(RTN(bits=4, group_size=GROUP).apply(copy_of(llama32), ctx), reference, ids),
        "native": mean_error(step().apply(copy_of(llama32), ctx), reference, ids),
        "auto-round": mean_error(step(backend="auto-round").apply(copy_of(llama32), ctx), reference, ids),
    }
    print(f"logits MSE vs fp (10 iterations): {errors}")
    assert errors["auto-round"] < 0.9 * errors["rtn"]
    assert 0.5 < errors["auto-round"] / errors["native"] < 2.0


def test_zero_iterations_are_compress_rtn(llama32: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    """An independent check of the converted conventions: auto-round's plain RTN (its unsigned codes and zero
    points, shifted) is compress's RTN integer for integer (asymmetric; the symmetric grids differ by design)."""
    ctx = context(wiki, tmp_path)
    rtn = RTN(bits=4, group_size=GROUP).apply(copy_of(llama32), ctx)
    ours = step(iters=0, backend="auto-round")
    handle = ours.apply(llama32, ctx)
    assert ours.details()["autoround_settings"]["algorithm"] == "RTNConfig"
    theirs = dict(rtn.model.named_modules())
    compared = 0
    for name, module in handle.model.named_modules():
        if isinstance(module, QuantizedLinear):
            a, b = module.to_quantized(), theirs[name].to_quantized()
            assert torch.equal(a.values, b.values) and torch.equal(a.zero_point, b.zero_point), name
            torch.testing.assert_close(a.scale, b.scale, rtol=1e-6, atol=0)
            compared += 1
    assert compared == 14


def test_narrow_layers_are_refused_before_work(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    """tiny_llama's k/v projections are 16 wide: auto-round would silently keep them dense."""
    with pytest.raises(ConfigError) as error:
        AutoRound(group_size=16, backend="auto-round", calibration=CALIBRATION).apply(
            tiny_llama, context(wiki, tmp_path)
        )
    assert error.value.where == "autoround.targets" and "k_proj" in str(error.value)
    assert "multiple of 32" in str(error.value) and "backend: native" in error.value.fix
    assert all_plain(tiny_llama) and not list(tmp_path.iterdir())


def test_targets_outside_the_layers_are_refused_before_work(
    llama32: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as error:
        step(backend="auto-round", ignore=[]).apply(llama32, context(wiki, tmp_path))
    assert error.value.where == "autoround.ignore" and "lm_head" in error.value.fix
    assert all_plain(llama32)
