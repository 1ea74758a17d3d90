"""The rtn / gptq / awq steps on a tiny random Llama: what they replace, how close they stay, what they save,
and the errors they give before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import WIKITEXT
from quant_helpers import CALIBRATION, all_plain, context, copy_of, logits, mean_error, probe_ids, tiny_llm_files
from safetensors.torch import load_file

from compress.data.text_data import TextData
from compress.errors import CompressError, ConfigError, DataError
from compress.models.compressed_tensors import QuantizedLinear
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.steps.quantize.awq import AWQ
from compress.steps.quantize.gptq import GPTQ
from compress.steps.quantize.rtn import RTN


def quantized(handle: ModelHandle, step, wiki: TextData, tmp_path: Path) -> ModelHandle:
    return step.apply(handle, context(wiki, tmp_path))


def test_rtn_replaces_every_linear_but_the_head(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    handle = quantized(tiny_llama, RTN(bits=4, group_size=16), wiki, tmp_path)
    kinds = {
        name: type(m) for name, m in handle.model.named_modules() if isinstance(m, torch.nn.Linear | QuantizedLinear)
    }
    assert kinds.pop("lm_head") is torch.nn.Linear
    assert kinds and all(kind is QuantizedLinear for kind in kinds.values())
    config = handle.model.config.quantization_config
    assert config["quant_method"] == "compressed-tensors" and config["ignore"] == ["lm_head"]
    error = (logits(handle.model, ids) - reference).abs().mean() / reference.abs().mean()
    assert 0 < error < 0.5  # quantized, yet still the same model


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_saved_checkpoint_reloads_identically(
    symmetric: bool, tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    ids = probe_ids(tiny_llama, wiki)
    handle = quantized(tiny_llama, RTN(bits=4, group_size=16, symmetric=symmetric), wiki, tmp_path)
    expected = logits(handle.model, ids)
    save_handle(handle, tmp_path / "stage")
    tensors = load_file(str(tmp_path / "stage" / "model.safetensors"))
    assert tensors["model.layers.0.mlp.down_proj.weight_packed"].dtype == torch.int32
    assert "model.layers.0.mlp.down_proj.weight" not in tensors
    reloaded = load_handle(tmp_path / "stage")
    assert torch.equal(logits(reloaded.model, ids), expected)
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # compressed-tensors 0.19 cannot build packed asymmetric zero points on the meta device (its own
    # checkpoints fail too); asking it to decompress on load is the documented way round.
    options = {} if symmetric else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "stage", **options).eval()
    torch.testing.assert_close(logits(plain, ids), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make_step",
    [
        lambda: GPTQ(bits=4, group_size=16, calibration=CALIBRATION),
        lambda: GPTQ(bits=4, group_size=16, act_order=True, calibration=CALIBRATION),
        lambda: AWQ(bits=4, group_size=16, calibration=CALIBRATION),
    ],
    ids=["gptq", "gptq-act-order", "awq"],
)
def test_calibrated_methods_beat_rtn(make_step, tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    rtn = quantized(copy_of(tiny_llama), RTN(bits=4, group_size=16), wiki, tmp_path)
    calibrated = quantized(tiny_llama, make_step(), wiki, tmp_path)
    assert mean_error(calibrated, reference, ids) < mean_error(rtn, reference, ids)
    save_handle(calibrated, tmp_path / "stage")
    assert torch.equal(logits(load_handle(tmp_path / "stage").model, ids), logits(calibrated.model, ids))


def test_group_size_that_does_not_divide_fails_before_work(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as error:
        quantized(tiny_llama, GPTQ(group_size=24, calibration=CALIBRATION), wiki, tmp_path)
    assert error.value.where == "gptq.group_size" and "[32, 64]" in str(error.value)
    assert all_plain(tiny_llama)


def test_too_little_calibration_text(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    short = TextData(["a few words only"], source="short.txt")
    with pytest.raises(DataError) as error:
        quantized(tiny_llama, AWQ(group_size=16, calibration=CALIBRATION), short, tmp_path)
    assert error.value.where == "awq.calibration.samples" and "short.txt" in str(error.value)
    assert all_plain(tiny_llama)


def test_bad_targets(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        quantized(tiny_llama, RTN(group_size=16, targets=["re:(unclosed"]), wiki, tmp_path)
    with pytest.raises(ConfigError) as error:
        quantized(tiny_llama, RTN(group_size=16, targets=["re:.*nothing_here"]), wiki, tmp_path)
    assert error.value.where == "rtn.targets"
    assert all_plain(tiny_llama)


def test_refuses_a_run_that_will_not_fit(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    class Tiny:
        available = 1024

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    with pytest.raises(CompressError) as error:
        quantized(tiny_llama, GPTQ(group_size=16, calibration=CALIBRATION), wiki, tmp_path)
    assert "will not fit" in str(error.value) and "calibration.samples" in error.value.fix
    assert all_plain(tiny_llama)


def test_quantizing_twice_is_refused(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    handle = quantized(tiny_llama, RTN(group_size=16), wiki, tmp_path)
    with pytest.raises(ConfigError, match="already weight-quantized"):
        quantized(handle, RTN(group_size=16), wiki, tmp_path)


def test_recipe_compares_methods_from_one_baseline(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    from compress.recipe import Recipe

    files = tiny_llm_files(tiny_llama, tmp_path)
    calibration = files["calibration"]
    recipe = Recipe.from_dict(
        {
            "model": files["model"],
            "data": files["data"],
            "evaluate": {"batch_sizes": [1, 2], "seq_len": 64, "decode_tokens": 8},
            "steps": [
                {"rtn": {"source": "baseline", "group_size": 16}},
                {"gptq": {"source": "baseline", "group_size": 16, "calibration": calibration}},
                {"cast": {"source": "gptq", "label": "gptq-bf16", "dtype": "bfloat16"}},
            ],
        },
        base_dir=tmp_path,
    )
    result = recipe.run(tmp_path / "run")
    baseline, rtn, gptq, half = result.stages
    assert rtn.source == "baseline" and gptq.source == "baseline"
    assert all(s.status == "ok" for s in result.stages)
    # Each method starts from the unquantized weights and is evaluated from its saved checkpoint.
    # (a random model's perplexity is ~its vocabulary either way: which method is better is tested on logits above)
    assert rtn.max_abs_diff > 0 and gptq.max_abs_diff > 0
    assert gptq.size_mb < baseline.size_mb  # (the tiny model is mostly embeddings, kept in float)
    for stage in result.stages:
        assert stage.metrics["decode_tokens_per_s"] > 0 and stage.metrics["decode_p99_ms"] > 0
    assert gptq.step_peak_memory_mb is not None and gptq.details["quantized_modules"] == 14
    # The quantized checkpoint with its float tensors (embeddings, norms, scales) in bfloat16: smaller again.
    assert half.source == "gptq" and half.size_mb < 0.6 * gptq.size_mb
    assert half.metrics["perplexity"] == pytest.approx(gptq.metrics["perplexity"], rel=0.02)


def test_step_source_must_be_an_earlier_stage(tmp_path: Path) -> None:
    from compress.recipe import Recipe

    with pytest.raises(ConfigError) as error:
        Recipe.from_dict(
            {
                "model": {"source": "x", "task": "causal-lm"},
                "data": {"path": "eval.txt", "label": None},
                "steps": [{"rtn": {"source": "gptq"}}, {"gptq": {}}],
            }
        )
    assert error.value.where == "steps[0].rtn.source" and "baseline" in error.value.fix


def test_perplexity_windows_follow_seq_len_not_the_tokenizer_limit(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    """`evaluate.seq_len` sets a causal LM's windows; `evaluate.max_length` (a classifier's tokenizer limit) must not
    cap them (it did: every LLM stage was scored on 512-token windows whatever seq_len said)."""
    from compress.recipe import Recipe

    tiny_llama.model.save_pretrained(tmp_path / "tiny")
    tiny_llama.tokenizer.save_pretrained(tmp_path / "tiny")
    rows = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()][:40]
    (tmp_path / "eval.txt").write_text("\n".join(rows), encoding="utf-8")
    recipe = Recipe.from_dict(
        {
            "model": {"source": str(tmp_path / "tiny"), "task": "causal-lm"},
            "data": {"path": "eval.txt", "label": None},
            "evaluate": {"batch_sizes": [1], "seq_len": 128, "max_length": 32, "decode_tokens": 0},
            "steps": [],
        },
        base_dir=tmp_path,
    )
    (baseline,) = recipe.run(tmp_path / "run").stages
    tokens = len(tiny_llama.tokenizer("\n\n".join(rows))["input_ids"])
    assert baseline.eval_samples in (tokens // 128, -(-tokens // 128))
