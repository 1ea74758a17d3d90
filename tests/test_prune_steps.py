"""The pruning steps on a tiny random Llama: sparsity reached, criteria against magnitude, errors before any work,
pruned + 4-bit checkpoints, masks through recovery training, and the sparsity every stage reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_helpers import CALIBRATION, context, copy_of, logits, mean_error, probe_ids, tiny_llm_files

from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.models.handle import ModelHandle
from compress.models.serialize import load_handle, save_handle
from compress.prune.sparsity import follows_n_m, measure_sparsity
from compress.registry import STEPS
from compress.steps.prune.magnitude import Magnitude
from compress.steps.prune.semi_structured import SemiStructured
from compress.steps.prune.sparsegpt import SparseGPT
from compress.steps.prune.wanda import Wanda
from compress.steps.quantize.gptq import GPTQ
from compress.steps.quantize.rtn import RTN


def pruned(handle: ModelHandle, step, wiki: TextData, tmp_path: Path) -> ModelHandle:
    return step.apply(handle, context(wiki, tmp_path))


def decoder_weights(handle: ModelHandle) -> dict[str, torch.Tensor]:
    return {
        name: module.weight
        for name, module in handle.model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }


def test_steps_are_registered() -> None:
    for name in ("magnitude", "wanda", "sparsegpt", "semi_structured"):
        assert STEPS.get(name).name == name


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_calibrated_criteria_beat_magnitude(pattern: str, tiny_llama: ModelHandle, wiki: TextData, tmp_path) -> None:
    ids = probe_ids(tiny_llama, wiki)
    reference = logits(tiny_llama.model, ids)
    magnitude = pruned(copy_of(tiny_llama), Magnitude(pattern=pattern), wiki, tmp_path)
    wanda = pruned(copy_of(tiny_llama), Wanda(pattern=pattern, calibration=CALIBRATION), wiki, tmp_path)
    sparsegpt = pruned(tiny_llama, SparseGPT(pattern=pattern, calibration=CALIBRATION), wiki, tmp_path)
    for handle in (magnitude, wanda, sparsegpt):
        weights = decoder_weights(handle)
        zeros = sum(int((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())
        assert zeros == pytest.approx(0.5, abs=0.01)
        if pattern == "2:4":
            assert all(follows_n_m(w, 2, 4) for w in weights.values())
        assert bool((handle.model.lm_head.weight != 0).all())  # ignored by default
    error = {name: mean_error(h, reference, ids) for name, h in [("m", magnitude), ("w", wanda), ("s", sparsegpt)]}
    assert error["w"] < error["m"] and error["s"] < error["m"]
    assert sparsegpt.model.config.to_dict().get("quantization_config") is None  # pruning alone stays a dense model


def test_details_and_global_magnitude(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    step = Magnitude(sparsity=0.7, scope="global", targets=["re:.*mlp\\..*"])
    handle = pruned(tiny_llama, step, wiki, tmp_path)
    details = step.details()
    assert details["pruned_modules"] == 6 and details["reached_sparsity"] == pytest.approx(0.7, abs=0.01)
    sparsity = measure_sparsity(handle.model)
    assert sparsity["q_proj"] == 0 and sparsity["gate_proj"] > 0.3 and sparsity["lm_head"] == 0


def test_bad_settings_fail_before_work(tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path) -> None:
    from compress.recipe import Recipe

    before = {name: w.clone() for name, w in decoder_weights(tiny_llama).items()}
    with pytest.raises(ConfigError) as error:
        pruned(tiny_llama, Wanda(pattern="2:5", calibration=CALIBRATION), wiki, tmp_path)
    assert error.value.where == "wanda.pattern" and "multiples of 5" in str(error.value)
    with pytest.raises(ConfigError) as error:
        pruned(tiny_llama, SemiStructured(pattern="2:5", method="magnitude"), wiki, tmp_path)
    assert error.value.where == "semi_structured.pattern"
    with pytest.raises(ConfigError) as error:
        pruned(tiny_llama, Magnitude(targets=["re:nothing.*"]), wiki, tmp_path)
    assert error.value.where == "magnitude.targets"
    assert all(torch.equal(before[name], w) for name, w in decoder_weights(tiny_llama).items())
    quantized = pruned(tiny_llama, RTN(group_size=16), wiki, tmp_path)
    with pytest.raises(ConfigError, match="prune first"):
        pruned(quantized, Magnitude(), wiki, tmp_path)
    for step, where in [
        ({"magnitude": {"sparsity": 1.0}}, "steps[0].magnitude.sparsity"),
        ({"wanda": {"pattern": "4:2"}}, "steps[0].wanda.pattern"),
        ({"semi_structured": {"pattern": "unstructured"}}, "steps[0].semi_structured.pattern"),
    ]:
        with pytest.raises(ConfigError) as error:
            Recipe.from_dict({"model": {"source": "x", "task": "causal-lm"}, "data": {"path": "e"}, "steps": [step]})
        assert f"{where}:" in str(error.value)


def test_sparse_then_gptq_keeps_2_of_4_through_the_checkpoint(
    tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    ids = probe_ids(tiny_llama, wiki)
    handle = pruned(tiny_llama, SemiStructured(calibration=CALIBRATION), wiki, tmp_path)
    handle = pruned(handle, GPTQ(bits=4, group_size=16, calibration=CALIBRATION), wiki, tmp_path)
    sparsity = measure_sparsity(handle.model)
    assert sparsity["q_proj"] >= 0.5 and sparsity["down_proj"] >= 0.5  # zeros kept (and a few more rounded to 0)
    config = handle.model.config.quantization_config
    assert config["sparsity_config"]["sparsity_structure"] == "2:4"
    assert config["sparsity_config"]["format"] == "dense"
    expected = logits(handle.model, ids)
    save_handle(handle, tmp_path / "stage")
    reloaded = load_handle(tmp_path / "stage")
    assert torch.equal(logits(reloaded.model, ids), expected)
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    plain = AutoModelForCausalLM.from_pretrained(
        tmp_path / "stage", quantization_config=CompressedTensorsConfig(dequantize=True)
    ).eval()
    torch.testing.assert_close(logits(plain, ids), expected, atol=1e-4, rtol=1e-4)


def test_recipe_reports_sparsity_per_stage(tiny_llama: ModelHandle, tmp_path: Path) -> None:
    from compress.recipe import Recipe
    from compress.report.markdown import stage_table

    files = tiny_llm_files(tiny_llama, tmp_path)
    calibration = files["calibration"]
    recipe = Recipe.from_dict(
        {
            "model": files["model"],
            "data": files["data"],
            "evaluate": {"batch_sizes": [1], "seq_len": 64, "decode_tokens": 0},
            "steps": [
                {"magnitude": {"source": "baseline", "pattern": "2:4", "label": "magnitude-2of4"}},
                {"sparsegpt": {"source": "baseline", "pattern": "2:4", "calibration": calibration}},
                {"gptq": {"group_size": 16, "calibration": calibration}},
            ],
        },
        base_dir=tmp_path,
    )
    result = recipe.run(tmp_path / "run")
    baseline, magnitude, sparsegpt, gptq = result.stages
    assert all(s.status == "ok" for s in result.stages)
    assert baseline.sparsity["overall"] == 0
    # The head (kept dense) is a third of this tiny model's Linear weights: decoder layers alone are 50 %.
    assert magnitude.sparsity["q_proj"] == 0.5 and sparsegpt.sparsity["down_proj"] == 0.5
    assert gptq.sparsity["down_proj"] >= 0.5 and gptq.source == "sparsegpt"
    assert sparsegpt.metrics["perplexity"] < magnitude.metrics["perplexity"] * 1.5
    table = stage_table(result.stages)
    assert "Sparsity" in table.splitlines()[0]


def test_recovery_training_keeps_the_zeros(tiny_bert: ModelHandle, sst2_train, sst2_dev, tmp_path: Path) -> None:
    from train_helpers import make_context

    from compress.steps.finetune import Finetune

    handle = Magnitude(pattern="2:4", targets=["re:.*encoder.*"]).apply(tiny_bert, context(sst2_train, tmp_path))
    before = {n: w.clone() for n, w in decoder_weights(handle).items() if "encoder" in n}
    ctx = make_context(sst2_train, sst2_dev, tmp_path)
    trained = Finetune(epochs=1, batch_size=16, learning_rate=1e-3, progress=False).apply(handle, ctx)
    after = {n: w for n, w in decoder_weights(trained).items() if "encoder" in n}
    for name, weight in after.items():
        assert torch.equal(weight == 0, before[name] == 0), name  # the same zeros, no more, no fewer
        assert not torch.equal(weight, before[name])  # and the kept weights did train


@pytest.mark.parametrize("step_class", [Wanda, SparseGPT])
def test_owl_sets_each_layers_sparsity_and_keeps_the_mean(
    step_class, tiny_llama: ModelHandle, wiki: TextData, tmp_path: Path
) -> None:
    step = step_class(sparsity=0.5, layer_sparsity="owl", owl_spread=0.1, calibration=CALIBRATION)
    handle = pruned(tiny_llama, step, wiki, tmp_path)
    details = step.details()
    targets = details["owl_layer_sparsity"]
    assert len(targets) == len(details["owl_outlier_ratio"]) == handle.model.config.num_hidden_layers
    assert sum(targets) / len(targets) == pytest.approx(0.5, abs=1e-3) and max(targets) - min(targets) > 0.19
    weights = decoder_weights(handle)
    for index, target in enumerate(targets):
        layer = [w for name, w in weights.items() if f"layers.{index}." in name]
        reached = sum(int((w == 0).sum()) for w in layer) / sum(w.numel() for w in layer)
        assert reached == pytest.approx(target, abs=0.03)  # whole weights per row of a tiny layer
    assert details["reached_sparsity"] == pytest.approx(0.5, abs=0.02)


def test_owl_settings_are_checked() -> None:
    from compress.recipe import Recipe

    for settings, message in [
        ({"pattern": "2:4", "layer_sparsity": "owl"}, "needs pattern 'unstructured'"),
        ({"sparsity": 0.95, "layer_sparsity": "owl"}, "lower owl_spread"),
    ]:
        with pytest.raises(ConfigError) as error:
            Recipe.from_dict(
                {"model": {"source": "x", "task": "causal-lm"}, "data": {"path": "e"}, "steps": [{"wanda": settings}]}
            )
        assert "steps[0].wanda" in str(error.value) and message in str(error.value)
