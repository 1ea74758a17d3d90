"""The `bnb` step on a tiny random Llama: bitsandbytes LLM.int8 and NF4/FP4 through transformers, what it
replaces, how close it stays, the checkpoint transformers writes and reloads, and the errors before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import WIKITEXT, make_tiny_llama
from quant_helpers import context, logits, probe_ids
from transformers import BertTokenizerFast

from compress.data.text_data import TextData
from compress.errors import ConfigError, MissingExtra
from compress.models.handle import ModelHandle
from compress.steps.quantize.bnb import BitsAndBytes
from compress.steps.quantize.rtn import RTN


@pytest.fixture
def tiny_llama(tiny_tokenizer: BertTokenizerFast) -> ModelHandle:
    """64 wide, not conftest's 32: on a CPU with AVX-512 BF16, bitsandbytes repacks 4-bit weights for its CPU kernel,
    which needs every Linear's input to span whole 64-value quantization blocks (a 32-wide input fails inside
    bitsandbytes 0.50.2 with "shape '[32, 0]' is invalid"). Real models' widths are multiples of 64."""
    return make_tiny_llama(tiny_tokenizer, hidden=64)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected).norm() / expected.norm())


def bnb_modules(model: torch.nn.Module) -> dict[str, str]:
    return {
        name: type(m).__name__
        for name, m in model.named_modules()
        if type(m).__name__ in ("Linear8bitLt", "Linear4bit")
    }


def assert_reloads_identically(reloaded: torch.Tensor, expected: torch.Tensor, quantized: torch.nn.Module) -> None:
    """Bit for bit, except where bitsandbytes repacked 4-bit weights for its AVX-512 BF16 CPU kernel on the first
    forward: that path computes in bfloat16 and a reloaded model is repacked, so equal to bfloat16's rounding."""
    # The layer's own flag for that path (on a CPU tensor, in eval mode, without gradients).
    packed = any(getattr(m, "support_avx512bf16_for_cpu", False) for m in quantized.modules())
    if packed:
        assert relative_error(reloaded, expected) < 1e-2
    else:
        assert torch.equal(reloaded, expected)


def quantize(handle: ModelHandle, step: BitsAndBytes, wiki: TextData, tmp_path: Path, device: str = "cpu"):
    ctx = context(wiki, tmp_path / "work")
    ctx.device = torch.device(device)
    return step.apply(handle, ctx)


def test_int8_quantizes_every_linear_but_the_head(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    step = BitsAndBytes(mode="int8")
    handle = quantize(tiny_llama, step, wiki, tmp_path)
    kinds = bnb_modules(handle.model)
    assert len(kinds) == 14 and set(kinds.values()) == {"Linear8bitLt"}  # 7 per layer
    assert type(handle.model.lm_head) is torch.nn.Linear
    assert handle.model.model.layers[0].mlp.down_proj.weight.dtype == torch.int8
    assert 0 < relative_error(logits(handle.model, ids), reference) < 0.05
    details = step.details()
    assert details["mode"] == "int8" and details["quantized_modules"] == 14 and details["quantize_seconds"] >= 0
    assert not (tmp_path / "work").exists()  # quantized from the tensors in memory: nothing written


@pytest.mark.parametrize("mode", ["int8", "nf4", "fp4"])
def test_checkpoint_is_transformers_own_and_reloads_identically(
    mode: str, tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    ids = probe_ids(tiny_llama, wiki)
    tiny_llama.model.save_pretrained(tmp_path / "float")
    handle = quantize(tiny_llama, BitsAndBytes(mode=mode), wiki, tmp_path)
    expected = logits(handle.model, ids)
    handle.model.save_pretrained(tmp_path / "bnb")
    config = json.loads((tmp_path / "bnb" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config["llm_int8_skip_modules"] == ["lm_head"]
    if mode == "int8":
        assert config["load_in_8bit"] and config["llm_int8_threshold"] == 6.0
    else:
        assert config["load_in_4bit"] and config["bnb_4bit_quant_type"] == mode
        assert config["bnb_4bit_use_double_quant"] and config["bnb_4bit_compute_dtype"] == "float32"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb", device_map={"": "cpu"}).eval()
    assert set(bnb_modules(reloaded).values()) == set(bnb_modules(handle.model).values())
    assert_reloads_identically(logits(reloaded, ids), expected, handle.model)
    size = (tmp_path / "bnb" / "model.safetensors").stat().st_size
    assert size < (tmp_path / "float" / "model.safetensors").stat().st_size  # (mostly float embeddings here)


def test_stage_saves_and_reloads_through_compress(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    """What the runner does with the stage: save_handle, then load_handle (evaluate_saved)."""
    pytest.importorskip("bitsandbytes")
    from compress.models.serialize import load_handle, save_handle

    ids = probe_ids(tiny_llama, wiki)
    handle = quantize(tiny_llama, BitsAndBytes(mode="nf4"), wiki, tmp_path)
    expected = logits(handle.model, ids)
    save_handle(handle, tmp_path / "stage")
    config = json.loads((tmp_path / "stage" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config["bnb_4bit_quant_type"] == "nf4"
    reloaded = load_handle(tmp_path / "stage")
    assert set(bnb_modules(reloaded.model).values()) == {"Linear4bit"}
    assert_reloads_identically(logits(reloaded.model, ids), expected, handle.model)


def test_four_bit_on_cpu_is_close_to_the_float_model(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    """bitsandbytes 0.50 runs NF4/FP4 on CPU; FP4's coarser code costs more than NF4's on Gaussian weights."""
    bnb = pytest.importorskip("bitsandbytes")
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    errors = {}
    for mode in ("nf4", "fp4"):
        float_model = tiny_llama.model
        step = BitsAndBytes(mode=mode, double_quant=True)
        handle = quantize(tiny_llama.replace(model=float_model), step, wiki, tmp_path)
        layer = handle.model.model.layers[0].self_attn.q_proj
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.nested  # double quant
        errors[mode] = relative_error(logits(handle.model, ids), reference)
        assert step.details()["compute_dtype"] == "float32"  # `auto`: the model's dtype
    assert 0 < errors["nf4"] < errors["fp4"] < 0.5


def test_a_build_that_cannot_run_four_bit_is_refused_before_any_work(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bnb = pytest.importorskip("bitsandbytes")

    def no_kernel(*_: object, **__: object) -> None:
        raise NotImplementedError("no 4-bit kernel for this device")

    model = tiny_llama.model
    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", no_kernel)  # as a build without a 4-bit backend behaves
    with pytest.raises(ConfigError) as error:
        quantize(tiny_llama, BitsAndBytes(mode="nf4"), wiki, tmp_path)
    assert error.value.where == "bnb.mode" and "no 4-bit kernel" in error.value.message
    assert "mode: int8" in error.value.fix and "CUDA" in error.value.fix
    assert tiny_llama.model is model and not bnb_modules(model)

    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"})
    with pytest.raises(ConfigError) as error:
        quantize(tiny_llama, BitsAndBytes(mode="fp4"), wiki, tmp_path)
    assert error.value.where == "bnb.mode" and "does not support the device 'cpu'" in error.value.message
    with pytest.raises(ConfigError) as error:
        quantize(tiny_llama, BitsAndBytes(mode="int8"), wiki, tmp_path)
    assert error.value.where == "evaluate.device"


def test_missing_bitsandbytes_names_the_extra(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import bitsandbytes` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    model = tiny_llama.model
    with pytest.raises(MissingExtra) as error:
        quantize(tiny_llama, BitsAndBytes(mode="int8"), wiki, tmp_path)
    assert error.value.where == "bnb" and 'pip install "compress[bnb]"' in error.value.fix
    assert tiny_llama.model is model and not (tmp_path / "work").exists()


def test_ignore_follows_transformers_and_is_checked(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    float_model = tiny_llama.model
    handle = quantize(tiny_llama, BitsAndBytes(mode="int8", ignore=["lm_head", "model.layers.0"]), wiki, tmp_path)
    kept_layer_zero = bnb_modules(handle.model)
    assert len(kept_layer_zero) == 7 and all(".layers.1." in name for name in kept_layer_zero)
    for ignore, where in ((["("], "bnb.ignore[0]"), (["lm_head", "model"], "bnb.ignore")):
        with pytest.raises(ConfigError) as error:
            quantize(tiny_llama.replace(model=float_model), BitsAndBytes(mode="int8", ignore=ignore), wiki, tmp_path)
        assert error.value.where == where


def test_an_already_quantized_model_is_refused(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    handle = RTN(group_size=16).apply(tiny_llama, context(wiki, tmp_path))
    with pytest.raises(ConfigError, match="already quantized") as error:
        quantize(handle, BitsAndBytes(mode="int8"), wiki, tmp_path)
    assert error.value.where == "bnb"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"mode": "int4"}, "steps[0].bnb.mode"),
        ({"mode": "int8", "double_quant": False}, "double_quant"),
        ({"mode": "nf4", "llm_int8_threshold": 4.0}, "llm_int8_threshold"),
        ({"mode": "nf4", "compute_dtype": "float64"}, "steps[0].bnb.compute_dtype"),
        ({"bits": 4}, "steps[0].bnb.bits"),
    ],
)
def test_a_bad_field_is_named(settings: dict, field: str, tmp_path: Path) -> None:
    from compress.recipe import Recipe
    from compress.registry import STEPS

    STEPS.register("bnb")(BitsAndBytes)  # until pyproject registers the entry point, the recipe finds it here
    with pytest.raises(ConfigError) as error:
        Recipe.from_dict(
            {
                "model": {"source": "x", "task": "causal-lm"},
                "data": {"path": "eval.txt", "label": None},
                "steps": [{"bnb": settings}],
            },
            base_dir=tmp_path,
        )
    assert field in str(error.value)


def test_recipe_evaluates_the_saved_int8_stage(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from compress.recipe import Recipe
    from compress.registry import STEPS

    STEPS.register("bnb")(BitsAndBytes)
    tiny_llama.model.save_pretrained(tmp_path / "tiny")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "tiny")
    rows = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    (tmp_path / "eval.txt").write_text("\n".join(rows[:40]), encoding="utf-8")
    recipe = Recipe.from_dict(
        {
            "model": {"source": str(tmp_path / "tiny"), "task": "causal-lm"},
            "data": {"path": "eval.txt", "label": None},
            "evaluate": {"batch_sizes": [2], "seq_len": 64, "decode_tokens": 4, "threads": 1},
            "steps": [{"bnb": {"mode": "int8"}}],
        },
        base_dir=tmp_path,
    )
    baseline, bnb = recipe.run(tmp_path / "run", progress=False).stages
    assert bnb.status == "ok" and bnb.details["quantized_modules"] == 14
    assert bnb.max_abs_diff > 0 and bnb.size_mb < baseline.size_mb
    assert bnb.metrics["perplexity"] == pytest.approx(baseline.metrics["perplexity"], rel=0.05)
    config = json.loads((Path(bnb.artifact) / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"


@pytest.mark.gpu
def test_nf4_double_quant_on_cuda(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    from compress.models.serialize import load_handle, save_handle

    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    step = BitsAndBytes(mode="nf4", double_quant=True, compute_dtype="bfloat16")
    handle = quantize(tiny_llama, step, wiki, tmp_path, device="cuda")
    layer = handle.model.model.layers[0].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.device.type == "cuda"
    assert layer.weight.quant_state.nested and layer.compute_dtype == torch.bfloat16
    expected = logits(handle.model, ids.cuda()).cpu()
    assert relative_error(expected, reference) < 0.3
    save_handle(handle, tmp_path / "stage")
    config = json.loads((tmp_path / "stage" / "config.json").read_text())["quantization_config"]
    assert config["bnb_4bit_use_double_quant"] and config["bnb_4bit_compute_dtype"] == "bfloat16"
    # The runner reloads the stage on the CPU and its runtime moves it to the GPU.
    reloaded = load_handle(tmp_path / "stage").model.to("cuda")
    assert torch.equal(logits(reloaded, ids.cuda()).cpu(), expected)
