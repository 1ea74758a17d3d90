"""The runner: every stage evaluated, gates stop a recipe, stages cached and resumed, exports isolated."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import compress as cx
from compress.errors import CompressError
from compress.export.base import Exporter
from compress.models.handle import ModelHandle
from compress.registry import STEPS
from compress.runtime.torch import TorchRuntime
from compress.steps.base import StageContext, Step, StepConfig


def make_recipe(model_dir: Path, data_file: Path, steps, **kwargs) -> cx.Recipe:
    return cx.Recipe(
        model=cx.ModelSpec(str(model_dir)),
        data=cx.DataSpec(path=str(data_file), text="sentence", label_names=["0", "1"]),
        steps=steps,
        evaluate=cx.EvalSpec(batch_sizes=[1, 8], warmup_batches=1, threads=1),
        **kwargs,
    )


def test_every_stage_is_evaluated_and_reported(model_dir, data_file, tmp_path):
    recipe = make_recipe(model_dir, data_file, [cx.steps.Truncate(max_length=16), cx.steps.DynamicInt8()])
    result = recipe.run(tmp_path / "run", progress=False)
    assert [s.name for s in result.stages] == ["baseline", "truncate", "dynamic_int8"]
    for stage in result.stages:
        assert stage.status == "ok"
        assert 0.0 <= stage.metrics["accuracy"] <= 1.0
        assert set(stage.latency) == {"1", "8"}
        assert stage.latency["1"].samples == 48
        assert stage.size_mb > 0 and stage.peak_memory_mb > 0
    assert result["dynamic_int8"].size_mb < result["truncate"].size_mb  # int8 weights really are smaller
    assert result["truncate"].prediction_agreement is not None
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [s["kind"] for s in report["stages"]] == ["baseline", "step", "step"]
    for name in ("report.md", "report.html"):
        assert (tmp_path / "run" / name).exists()
    assert "truncate" in result.table()


class FlipClassifier(Step):
    """Negates the classifier head: every binary prediction flips (a real, maximal accuracy loss)."""

    name: ClassVar[str] = "flip_classifier"

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        flipped = copy.deepcopy(model.model)
        with torch.no_grad():
            flipped.classifier.weight.neg_()
            flipped.classifier.bias.neg_()
        return model.replace(model=flipped)


@pytest.fixture
def self_labelled_data(tiny_bert, data_file, tmp_path) -> Path:
    """The dev rows labelled with the tiny model's own predictions, so the baseline scores 100 %."""
    rows = data_file.read_text().splitlines()[1:]
    texts = [r.rsplit("\t", 1)[0] for r in rows]
    batch = dict(tiny_bert.tokenizer(texts, padding=True, return_tensors="np"))
    predictions = TorchRuntime(tiny_bert).predict(batch).argmax(-1)
    path = tmp_path / "self-labelled.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{p}\n" for t, p in zip(texts, predictions, strict=True)))
    return path


def test_step_gate_stops_the_recipe(model_dir, self_labelled_data, tmp_path):
    recipe = make_recipe(
        model_dir, self_labelled_data, [FlipClassifier(StepConfig(max_accuracy_drop=0.1)), cx.steps.DynamicInt8()]
    )
    result = recipe.run(tmp_path / "run", progress=False)
    assert result["baseline"].metrics["accuracy"] == 1.0
    flipped = result["flip_classifier"]
    assert flipped.metrics["accuracy"] == 0.0
    assert flipped.status == "gate_failed"
    assert "gate failed" in flipped.message and "flip_classifier" in flipped.message
    assert [s.name for s in result.stages] == ["baseline", "flip_classifier"]  # dynamic_int8 never ran
    assert result.report.stopped == flipped.message
    assert "gate failed" in (tmp_path / "run" / "report.md").read_text()


def test_recipe_gate_uses_the_reference(model_dir, data_file, tmp_path):
    recipe = make_recipe(
        model_dir, data_file, [cx.steps.Truncate(max_length=2)], gates=cx.GateSpec(max_accuracy_drop=0.0)
    )
    result = recipe.run(tmp_path / "run", progress=False)
    drop = result["baseline"].metrics["accuracy"] - result["truncate"].metrics["accuracy"]
    assert (result["truncate"].status == "gate_failed") == (drop > 0)


class ExplodesOnce(Step):
    """Fails the first time it runs in a process, like a run killed half-way."""

    name: ClassVar[str] = "explodes_once"
    calls: ClassVar[int] = 0

    def apply(self, model: ModelHandle, ctx: StageContext) -> ModelHandle:
        type(self).calls += 1
        if type(self).calls == 1:
            raise KeyboardInterrupt("simulated interruption")
        return model.replace()


def test_resume_after_interruption_reuses_finished_stages(model_dir, data_file, tmp_path):
    STEPS.register("explodes_once")(ExplodesOnce)
    recipe = make_recipe(model_dir, data_file, [cx.steps.Truncate(max_length=16), ExplodesOnce(StepConfig())])
    with pytest.raises(KeyboardInterrupt):
        recipe.run(tmp_path / "run", progress=False)
    truncate_dir = next((tmp_path / "run" / "stages").glob("01-truncate-*"))
    stamp = (truncate_dir / "result.json").stat().st_mtime_ns
    assert not list((tmp_path / "run" / "stages").glob("02-*/result.json"))  # nothing half-written
    result = recipe.run(tmp_path / "run", progress=False)
    assert [s.cached for s in result.stages] == [True, True, False]
    assert (truncate_dir / "result.json").stat().st_mtime_ns == stamp
    assert result["explodes_once"].status == "ok"
    # Changing a step re-runs it and what follows, not what precedes it.
    changed = make_recipe(model_dir, data_file, [cx.steps.Truncate(max_length=12), ExplodesOnce(StepConfig())])
    again = changed.run(tmp_path / "run", progress=False)
    assert [s.cached for s in again.stages] == [True, False, False]


class BrokenExporter(Exporter):
    """An exporter whose conversion fails, as an unsupported op would."""

    name: ClassVar[str] = "broken"

    def export(self, model, ctx, out_dir):
        (out_dir / "half-written.onnx").write_text("partial")
        raise CompressError("cannot convert op 'aten::frobnicate'", where="export 'broken'")

    def load_runtime(self, artifact_dir, ctx):  # pragma: no cover - never reached
        raise AssertionError


class TorchDirExporter(Exporter):
    """Saves the model with compress's own format and runs it back in PyTorch: a real, minimal export."""

    name: ClassVar[str] = "torchdir"

    def export(self, model, ctx, out_dir):
        from compress.models.serialize import save_handle

        save_handle(model, out_dir)

    def load_runtime(self, artifact_dir, ctx):
        from compress.models.serialize import load_handle
        from compress.runtime.torch import TorchRuntime

        return TorchRuntime(load_handle(artifact_dir))


def test_failed_export_is_reported_and_others_still_run(model_dir, data_file, tmp_path):
    recipe = make_recipe(
        model_dir,
        data_file,
        [cx.steps.Truncate(max_length=16)],
        exports=[BrokenExporter(), TorchDirExporter()],
    )
    result = recipe.run(tmp_path / "run", progress=False)
    broken, good = result["export:broken"], result["export:torchdir"]
    assert broken.status == "failed" and "aten::frobnicate" in broken.message
    assert not list((tmp_path / "run" / "stages").glob("*export-broken*/artifact"))
    assert good.status == "ok" and good.kind == "export"
    assert good.max_abs_diff == 0.0 and good.prediction_agreement == 1.0
    assert good.metrics["accuracy"] == result["truncate"].metrics["accuracy"]


def test_an_export_of_an_earlier_stage_gets_its_weights_after_later_steps_changed_them_in_place(
    model_dir, data_file, tmp_path, monkeypatch
):
    """baseline → truncate → dynamic_int8, exporting the baseline and truncate: dynamic_int8 quantized the very
    module truncate handed it, yet each export reloads its own stage and reproduces its outputs exactly."""
    real_deepcopy = copy.deepcopy

    def no_module_copies(value, memo=None):
        assert not isinstance(value, torch.nn.Module), "a model was deep-copied"
        return real_deepcopy(value, memo)

    monkeypatch.setattr(copy, "deepcopy", no_module_copies)  # the whole run: steps, runner, exports
    recipe = make_recipe(
        model_dir,
        data_file,
        [cx.steps.Truncate(max_length=16), cx.steps.DynamicInt8()],
        exports=[TorchDirExporter(label="fp32", source="baseline"), TorchDirExporter(label="short", source="truncate")],
    )
    result = recipe.run(tmp_path / "run", progress=False)
    baseline, truncate, quantized = result["baseline"], result["truncate"], result["dynamic_int8"]
    fp32, short = result["export:fp32"], result["export:short"]
    assert quantized.max_abs_diff > 0  # int8 really changed the outputs...
    for export, source in ((fp32, baseline), (short, truncate)):  # ...but not those of the stages before it
        assert export.status == "ok" and export.source == source.name
        assert export.max_abs_diff == 0.0 and export.prediction_agreement == 1.0
        assert export.metrics == source.metrics
    stage_dirs = tmp_path / "run" / "stages"
    fp32_outputs = np.load(next(stage_dirs.glob("*export-fp32*")) / "outputs.npy")
    np.testing.assert_array_equal(fp32_outputs, np.load(next(stage_dirs.glob("00-baseline-*")) / "outputs.npy"))


def test_steps_record_their_own_peak_memory_and_their_size_on_disk(model_dir, data_file, tmp_path):
    from compress.models.size import saved_weight_bytes

    recipe = make_recipe(model_dir, data_file, [cx.steps.DynamicInt8()], exports=[TorchDirExporter()])
    result = recipe.run(tmp_path / "run", progress=False)
    baseline, quantized, export = result["baseline"], result["dynamic_int8"], result["export:torchdir"]
    assert baseline.step_peak_memory_mb is None  # no step ran
    for stage in (quantized, export):
        assert stage.step_peak_memory_mb > 50  # process RSS: a Python process with torch loaded
        assert stage.step_peak_cuda_memory_mb is None  # a CPU run
    saved = saved_weight_bytes(Path(quantized.artifact))
    assert saved > 0 and quantized.size_mb == pytest.approx(saved / 2**20)  # the safetensors file, header and all
    assert quantized.size_mb < baseline.size_mb
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Step peak mem MB" in report and "Step peak mem is the process RSS" in report
    # Resumed from the cache, the stage keeps what was measured when it ran.
    again = recipe.run(tmp_path / "run", progress=False)
    assert again["dynamic_int8"].cached
    assert again["dynamic_int8"].step_peak_memory_mb == quantized.step_peak_memory_mb


def test_truncate_search_then_an_in_place_step(model_dir, data_file, tmp_path):
    """truncate scores many lengths on the model it is given; the in-place step after it still sees that model."""
    recipe = make_recipe(
        model_dir,
        data_file,
        [cx.steps.Truncate(max_length="auto", candidates=[4, 8, 16]), cx.steps.DynamicInt8()],
        exports=[TorchDirExporter(source="truncate")],
    )
    result = recipe.run(tmp_path / "run", progress=False)
    truncate = result["truncate"]
    assert len(truncate.details["search"]) >= 2 and truncate.status == "ok"
    assert result["dynamic_int8"].status == "ok"
    assert result["export:torchdir"].metrics == truncate.metrics


@pytest.mark.gpu
def test_on_cuda_a_step_records_its_gpu_peak_separately(model_dir, data_file, tmp_path):
    from compress.models.size import saved_weight_bytes

    recipe = cx.Recipe(
        model=cx.ModelSpec(str(model_dir)),
        data=cx.DataSpec(path=str(data_file), text="sentence", label_names=["0", "1"]),
        steps=[cx.steps.Cast(dtype="float16")],
        evaluate=cx.EvalSpec(batch_sizes=[8], warmup_batches=0, device="cuda"),
    )
    result = recipe.run(tmp_path / "run", progress=False)
    cast = result["cast"]
    assert cast.status == "ok" and cast.device == "cuda"
    assert cast.step_peak_cuda_memory_mb > 0 and cast.step_peak_memory_mb > 50
    # On disk: the fp16 safetensors file, whose header is a few percent of a model this small.
    assert cast.size_mb == pytest.approx(saved_weight_bytes(Path(cast.artifact)) / 2**20)
    assert 0.5 < cast.size_mb / result["baseline"].size_mb < 0.55
