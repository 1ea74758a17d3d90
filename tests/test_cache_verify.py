"""Verified stage caches: a stage whose files changed after they were saved re-runs, with a warning naming the file;
a distill stage's key holds the bytes of the files it reads; leftovers of killed runs are swept."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import compress as cx
from compress.cache import MANIFEST_FILE, StageStore
from compress.export.onnx import OnnxExporter
from compress.runner import RunResult
from compress.steps.distill.step import Distill
from compress.steps.truncate import Truncate

REPO = Path(__file__).resolve().parents[1]


def make_recipe(model_dir: Path, data: str | dict[str, str], steps: list, exports: list | None = None) -> cx.Recipe:
    return cx.Recipe(
        model=cx.ModelSpec(str(model_dir)),
        data=cx.DataSpec(path=data, text="sentence", label_names=["0", "1"]),
        steps=steps,
        exports=exports or [],
        evaluate=cx.EvalSpec(batch_sizes=[8], warmup_batches=0, threads=1),
    )


def stage(run: Path, prefix: str) -> Path:
    (folder,) = (run / "stages").glob(f"{prefix}-*")
    return folder


def flip_last_byte(path: Path) -> None:
    """One flipped bit pattern, size kept: what a bad disk or a stray write does to a weight."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def cached(result: RunResult) -> list[bool]:
    return [s.cached for s in result.stages]


def rerun_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "compress.cache" and "re-running" in r.getMessage()]


@pytest.fixture
def two_steps(model_dir: Path, data_file: Path, tmp_path: Path) -> tuple[cx.Recipe, Path, RunResult]:
    """baseline → truncate → dynamic_int8, run once: every stage is on disk with its manifest."""
    recipe = make_recipe(model_dir, str(data_file), [cx.steps.Truncate(max_length=16), cx.steps.DynamicInt8()])
    run = tmp_path / "run"
    first = recipe.run(run, progress=False)
    assert cached(first) == [False, False, False]
    return recipe, run, first


def test_a_flipped_byte_in_a_saved_model_reruns_that_stage_only(two_steps, caplog) -> None:
    recipe, run, first = two_steps
    truncate = stage(run, "01-truncate")
    weights = truncate / "model" / "model.safetensors"
    flip_last_byte(weights)
    corrupted = weights.read_bytes()
    with caplog.at_level(logging.WARNING, logger="compress.cache"):
        again = recipe.run(run, progress=False)
    # dynamic_int8's key chains from truncate's key, not from its bytes: its own verified folder is reused.
    assert cached(again) == [True, False, True]
    assert weights.read_bytes() != corrupted  # the step ran again and wrote the model anew
    assert again["truncate"].metrics == first["truncate"].metrics
    (warning, *_) = rerun_warnings(caplog)
    assert str(truncate) in warning and "model/model.safetensors" in warning
    assert cached(recipe.run(run, progress=False)) == [True, True, True]  # the re-run's manifest holds


def test_a_flipped_byte_in_outputs_reruns_the_evaluation(two_steps, caplog) -> None:
    recipe, run, first = two_steps
    baseline = stage(run, "00-baseline")
    flip_last_byte(baseline / "outputs.npy")
    with caplog.at_level(logging.WARNING, logger="compress.cache"):
        again = recipe.run(run, progress=False)
    assert cached(again) == [False, True, True]
    assert again["baseline"].metrics == first["baseline"].metrics
    (warning,) = rerun_warnings(caplog)
    assert str(baseline) in warning and "outputs.npy" in warning


def test_an_edited_result_is_re_evaluated_without_redoing_the_step(two_steps, caplog, monkeypatch) -> None:
    recipe, run, first = two_steps
    result_file = stage(run, "01-truncate") / "result.json"
    edited = json.loads(result_file.read_text())
    edited["metrics"]["accuracy"] = 1.0
    result_file.write_text(json.dumps(edited, indent=2))

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the step's verified model was there: only its evaluation had to run again")

    monkeypatch.setattr(Truncate, "apply", must_not_run)
    with caplog.at_level(logging.WARNING, logger="compress.cache"):
        again = recipe.run(run, progress=False)
    assert cached(again) == [True, False, True]
    assert again["truncate"].metrics == first["truncate"].metrics != edited["metrics"]
    (warning,) = rerun_warnings(caplog)
    assert "result.json" in warning


def test_a_stage_without_a_manifest_reruns(two_steps, caplog) -> None:
    """A folder written before caches were verified (or whose manifest was lost) is not trusted."""
    recipe, run, _ = two_steps
    quantized = stage(run, "02-dynamic_int8")
    (quantized / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="compress.cache"):
        again = recipe.run(run, progress=False)
    assert cached(again) == [True, True, False]
    assert any(str(quantized) in w and MANIFEST_FILE in w for w in rerun_warnings(caplog))


def test_a_flipped_byte_in_an_exported_onnx_reruns_the_export(model_dir, data_file, tmp_path, caplog) -> None:
    recipe = make_recipe(model_dir, str(data_file), [cx.steps.Truncate(max_length=16)], [OnnxExporter()])
    run = tmp_path / "run"
    first = recipe.run(run, progress=False)
    assert first["export:onnx"].status == "ok"
    export = stage(run, "02-export-onnx")
    graph = next((export / "artifact").glob("*.onnx"))
    flip_last_byte(graph)
    with caplog.at_level(logging.WARNING, logger="compress.cache"):
        again = recipe.run(run, progress=False)
    assert cached(again) == [True, True, False]
    assert again["export:onnx"].status == "ok"
    assert again["export:onnx"].metrics == first["export:onnx"].metrics
    (warning,) = rerun_warnings(caplog)
    assert str(export) in warning and f"artifact/{graph.name}" in warning


def test_a_file_added_to_a_saved_model_reruns_the_stage(two_steps) -> None:
    """The loader reads what is in the folder: a file the manifest does not list is a change too."""
    recipe, run, _ = two_steps
    (stage(run, "01-truncate") / "model" / "extra.bin").write_bytes(b"\0")
    assert cached(recipe.run(run, progress=False)) == [True, False, True]


# ---------------------------------------------------------------- distill keys


def test_editing_the_unlabeled_file_changes_the_distill_key(tmp_path: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("one more sentence\n")
    step = Distill(unlabeled=str(extra))
    before = step.cache_key()
    assert step.cache_key() == before  # the same bytes, the same key
    extra.write_text("another sentence\n")
    assert step.cache_key() != before


def test_a_relative_unlabeled_file_is_read_from_the_recipe_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "extra.txt").write_text("first\n")
    (tmp_path / "b" / "extra.txt").write_text("second\n")
    step = Distill(unlabeled="extra.txt")
    step.base_dir = tmp_path / "a"
    in_a = step.cache_key()
    step.base_dir = tmp_path / "b"
    assert step.cache_key() != in_a
    from compress.recipe import Recipe

    (tmp_path / "a" / "recipe.yaml").write_text(
        "model: {source: some/model}\ndata: {path: dev.tsv}\nsteps: [{distill: {unlabeled: extra.txt}}]\n"
    )
    (recipe_step,) = Recipe.from_yaml(tmp_path / "a" / "recipe.yaml").steps  # the Recipe hands it its folder
    assert recipe_step.base_dir == tmp_path / "a" and recipe_step.cache_key() == in_a


def test_a_local_teacher_folder_is_in_the_distill_key(model_dir: Path) -> None:
    step = Distill(teacher=str(model_dir))
    before = step.cache_key()
    flip_last_byte(model_dir / "model.safetensors")
    assert step.cache_key() != before
    assert "teacher_sha256" not in Distill(teacher="some-org/hub-model").cache_key()  # a hub name: by name


def test_a_distill_stage_reruns_after_its_unlabeled_file_changed(model_dir: Path, data_file: Path, tmp_path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("a wonderful film\nthe plot is dull\n")
    distill = Distill(student={"layers": [1]}, epochs=1, batch_size=16, unlabeled=str(extra), progress=False)
    train = tmp_path / "train.tsv"
    train.write_text("\n".join((REPO / "evals/data/sst2/train.tsv").read_text().splitlines()[:49]) + "\n")
    recipe = make_recipe(model_dir, {"train": str(train), "validation": str(data_file)}, [distill])
    run = tmp_path / "run"
    recipe.run(run, progress=False)
    assert cached(recipe.run(run, progress=False)) == [True, True]
    extra.write_text("a wonderful film\nthe plot is sharp\n")
    assert cached(recipe.run(run, progress=False)) == [True, False]


# ---------------------------------------------------------------- leftovers


def leftovers(run: Path) -> dict[str, Path]:
    """What a killed run leaves, named as `compress.io`'s atomic writes name them: a half-written model folder and
    result file, an empty scratch folder; and a scratch folder holding a checkpoint, which resumes training."""
    folder = run / "stages" / "01-truncate-0123456789"
    partial = folder / ".model.k1ll3d.partial"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    (folder / ".result.json.k1ll3d.tmp").write_text("{")
    empty = run / "stages" / ".work" / "0123456789abcdef"
    empty.mkdir(parents=True)
    resumable = run / "stages" / ".work" / "fedcba9876543210"
    (resumable / "checkpoints").mkdir(parents=True)
    (resumable / "checkpoints" / "state.pt").write_bytes(b"checkpoint")
    return {"partial": partial, "tmp": folder / ".result.json.k1ll3d.tmp", "empty": empty, "resumable": resumable}


def test_opening_a_run_folder_sweeps_what_a_killed_run_left(tmp_path: Path) -> None:
    left = leftovers(tmp_path / "run")
    StageStore(tmp_path / "run")
    assert not left["partial"].exists() and not left["tmp"].exists() and not left["empty"].exists()
    assert (left["resumable"] / "checkpoints" / "state.pt").exists()


def test_a_folder_locked_by_another_run_is_not_swept(tmp_path: Path) -> None:
    """Runner opens its StageStore before it takes the run lock: a second run into a folder in use must not
    delete the first one's half-written stage on its way to being refused."""
    left = leftovers(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from compress.run_lock import run_lock; from pathlib import Path\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()",
         str(tmp_path / "run")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        StageStore(tmp_path / "run")
        assert all(path.exists() for path in left.values())
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    StageStore(tmp_path / "run")
    assert not left["partial"].exists() and not left["empty"].exists()


def test_a_finished_stage_sweeps_empty_scratch_folders(model_dir: Path, data_file: Path, tmp_path: Path) -> None:
    """Exports never discard their scratch folder (the ONNX exporter converts in one): saving their result does."""
    recipe = make_recipe(model_dir, str(data_file), [cx.steps.Truncate(max_length=16)], [OnnxExporter()])
    run = tmp_path / "run"
    recipe.run(run, progress=False)
    assert list((run / "stages" / ".work").iterdir()) == []
