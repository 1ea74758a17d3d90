"""What a report records beside the stage table, from real tiny-model runs: extra metrics as columns, per-class
figures and confusion matrices, the dataset, the resolved recipe, compute vs. wall time on a cached re-run, the
machine's load; the deploy sample of a sentence-pair model; no folder left by a run rejected before any stage."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import compress as cx
from compress.cache import OUTPUTS_FILE
from compress.errors import CompressError, DataError
from compress.evaluate import cpu_competition
from compress.evaluate.cpu_competition import (
    CpuSample,
    cores_used_by_others,
    machine_busy_seconds,
    others_compete,
    own_busy_seconds,
)
from compress.export.deploy import DEPLOY_FILE, PAIR_FIRST, PAIR_SECOND
from compress.export.onnx import OnnxExporter
from compress.recipe import Recipe
from compress.report import read_report, write_reports
from compress.report.build import is_contended
from compress.result import MachineLoad
from compress.run_lock import LOCK_FILE
from compress.steps.base import StageContext, Step, StepConfig

REPO = Path(__file__).resolve().parents[1]


def make_recipe(model_dir: Path, data: cx.DataSpec, steps=(), exports=(), **evaluate) -> Recipe:
    spec = {"batch_sizes": [1, 8], "warmup_batches": 1, "threads": 1, **evaluate}
    return Recipe(
        model=cx.ModelSpec(str(model_dir)),
        data=data,
        steps=list(steps),
        exports=list(exports),
        evaluate=cx.EvalSpec(**spec),
        name="fields",
    )


def sst2_spec(data_file: Path) -> cx.DataSpec:
    return cx.DataSpec(path=str(data_file), text="sentence", label_names=["negative", "positive"])


@pytest.fixture(scope="module")
def run(tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recipe, cx.RunResult]:
    """baseline → dynamic_int8 on 48 SST-2 rows, with f1 as an extra metric (one run shared by the tests)."""
    from conftest import make_tiny_bert

    root = tmp_path_factory.mktemp("fields")
    handle = make_tiny_bert(tiny_tokenizer)
    handle.model.save_pretrained(root / "model")
    handle.tokenizer.save_pretrained(root / "model")
    lines = (REPO / "evals/data/sst2/dev.tsv").read_text().splitlines()[:49]
    (root / "dev.tsv").write_text("\n".join(lines) + "\n")
    recipe = make_recipe(
        root / "model",
        sst2_spec(root / "dev.tsv"),
        [cx.steps.DynamicInt8()],
        extra_metrics=["f1", "matthews_correlation"],
    )
    return root / "run", recipe, recipe.run(root / "run", progress=False)


def test_extra_metrics_are_table_columns(run) -> None:
    out, _, result = run
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Stage"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[4:7] == ["Primary metric (Δ vs ref)", "f1", "matthews_correlation"]
    for stage in result.stages:
        row = next(line for line in md.splitlines() if line.startswith(f"| {stage.name}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[5] == f"{stage.metrics['f1']:.4f}" and cells[6] == f"{stage.metrics['matthews_correlation']:.4f}"
    assert "<th>f1</th>" in html and "<th>matthews_correlation</th>" in html


def test_per_class_figures_and_confusion_matrices_come_from_each_stages_outputs(run) -> None:
    out, _, result = run
    report = json.loads((out / "report.json").read_text())
    classification = report["classification"]
    assert classification["label_names"] == ["negative", "positive"]
    assert [s["stage"] for s in classification["stages"]] == ["baseline", "dynamic_int8"]
    labels = np.array([int(line.rsplit("\t", 1)[1]) for line in (out.parent / "dev.tsv").read_text().splitlines()[1:]])
    for entry, stage in zip(classification["stages"], result.stages, strict=True):
        stage_dir = next((out / "stages").glob(f"0?-{stage.name}-*"))
        predicted = np.load(stage_dir / OUTPUTS_FILE).argmax(-1)
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predicted, labels=[0, 1], zero_division=0
        )
        assert [c["precision"] for c in entry["per_class"]] == pytest.approx(precision.tolist())
        assert [c["recall"] for c in entry["per_class"]] == pytest.approx(recall.tolist())
        assert [c["f1"] for c in entry["per_class"]] == pytest.approx(f1.tolist())
        assert [c["support"] for c in entry["per_class"]] == support.tolist()
        matrix = np.array(entry["confusion_matrix"])
        assert matrix.tolist() == confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
        # The same predictions as the metric: the diagonal's share is the stage's accuracy.
        assert np.trace(matrix) / matrix.sum() == pytest.approx(stage.metrics["accuracy"])
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, html):
        assert "Per-class figures" in text and "Confusion matrix: baseline" in text
        assert "Confusion matrix: dynamic_int8" in text and "baseline P / R / F1" in text
    baseline = classification["stages"][0]["per_class"][0]
    figures = f"{baseline['precision']:.3f} / {baseline['recall']:.3f} / {baseline['f1']:.3f}"
    assert f"| negative | {baseline['support']} | {figures} |" in md
    assert 'class="num diagonal"' in html


def test_dataset_summary_and_resolved_recipe(run) -> None:
    out, recipe, _ = run
    report = read_report(out)
    data = report.dataset
    assert data is not None
    assert data.path == str((out.parent / "dev.tsv").resolve())
    assert (data.text, data.text_pair, data.label) == ("sentence", None, "label")
    assert (data.eval_split, data.eval_rows, data.train_rows) == ("validation", 48, None)  # no stage trained
    md = (out / "report.md").read_text()
    assert "## Data" in md and "48 (split validation)" in md and "text: sentence, label: label" in md
    resolved = report.resolved_recipe
    assert resolved is not None and resolved["name"] == "fields"
    assert (
        resolved["evaluate"]["extra_metrics"] == ["f1", "matthews_correlation"] and resolved["evaluate"]["threads"] == 1
    )
    assert resolved["steps"] == [{"dynamic_int8": cx.steps.DynamicInt8().config.model_dump(mode="json")}]
    assert resolved["data"]["label_names"] == ["negative", "positive"]
    # The resolved recipe is a recipe: it reads back into the same settings.
    again = Recipe.from_dict(json.loads(json.dumps(resolved)))
    assert again.evaluate == recipe.evaluate and again.model == recipe.model
    assert [s.cache_key() for s in again.steps] == [s.cache_key() for s in recipe.steps]


def test_machine_load_is_recorded(run) -> None:
    out, _, result = run
    load = read_report(out).machine_load
    assert load is not None and load.cpu_count == os.cpu_count() and load.threads == 1
    assert load.load_1m_start is not None and load.load_1m_start >= 0 and load.load_1m_end is not None
    assert all(stage.measured_under_load is not None for stage in result.stages)
    assert "Machine load" in (out / "report.md").read_text()


def test_a_cached_rerun_keeps_the_compute_time_and_shows_its_wall_time_apart(run) -> None:
    out, recipe, first = run
    compute = sum(s.duration_s + s.eval_duration_s for s in first.stages)
    assert first.report.total_duration_s == pytest.approx(compute)
    again = recipe.run(out, progress=False)
    assert all(stage.cached for stage in again.stages)
    assert again.report.total_duration_s == pytest.approx(first.report.total_duration_s)
    assert again.report.wall_duration_s is not None and again.report.wall_duration_s > 0
    md = (out / "report.md").read_text()
    from compress.report.table import fmt_number

    assert f"**Compute time**: {fmt_number(compute)} s" in md
    assert f"**This run's wall time**: {fmt_number(again.report.wall_duration_s)} s, 2 of 2 stages cached" in md
    assert "Total time" not in md
    # The figures do not depend on re-running the stages: they are rebuilt from the saved outputs.
    assert again.report.classification == first.report.classification


def test_old_reports_without_wall_time_still_render(run, tmp_path: Path) -> None:
    out, _, _ = run
    data = json.loads((out / "report.json").read_text())
    for key in ("wall_duration_s", "resolved_recipe", "dataset", "classification", "machine_load"):
        del data[key]
    old = read_report_from(data, tmp_path)
    md = write_reports(old, tmp_path)["md"].read_text()
    assert "**Total time**" in md and "Per-class figures" not in md and "## Data" not in md


def read_report_from(data: dict, folder: Path):
    (folder / "report.json").write_text(json.dumps(data))
    return read_report(folder)


def test_contention_rule_by_load_average() -> None:
    # Where the OS does not tell others' CPU time. 4 CPUs, 1 evaluation thread: 3 cores free. At the start only
    # others' load counts; at the end ours too.
    assert not is_contended(4, 1, 2.9, 3.9)
    assert is_contended(4, 1, 3.2, 0.0)
    assert is_contended(4, 1, 0.0, 4.5)
    assert is_contended(2, 2, 0.5, None)  # every core used: any other work competes
    assert not is_contended(2, 2, None, None)


def test_cores_used_by_others_subtracts_our_own_cpu_time() -> None:
    before = CpuSample(wall_s=10.0, machine_busy_s=100.0, own_busy_s=5.0)
    # 2 s of wall time; the machine was busy 5 CPU-seconds, 3 of them ours: others kept one core busy
    assert cores_used_by_others(before, CpuSample(12.0, 105.0, 8.0)) == pytest.approx(1.0)
    assert cores_used_by_others(before, CpuSample(12.0, None, 8.0)) is None
    # 2 CPUs, both ours: half a core of housekeeping is tolerated, a competing thread is not
    assert not others_compete(0.4, cpu_count=2, threads=2)
    assert others_compete(1.0, cpu_count=2, threads=2)
    assert not others_compete(2.3, cpu_count=4, threads=2)  # two cores left free absorb it


def test_machine_busy_seconds_reads_this_machine() -> None:
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat on this OS: contention falls back to the load average")
    first = machine_busy_seconds()
    sum(i * i for i in range(2_000_000))  # some CPU work of our own
    assert first is not None and machine_busy_seconds() > first > 0


def test_latencies_measured_under_load_are_flagged(model_dir, data_file, tmp_path, monkeypatch) -> None:
    calls = itertools.count()
    # Others keep 50 cores busy for every second of ours: whatever the wall time, far past every core.
    monkeypatch.setattr(cpu_competition, "machine_busy_seconds", lambda: own_busy_seconds() + 1e4 * next(calls))
    result = make_recipe(model_dir, sst2_spec(data_file)).run(tmp_path / "busy", progress=False)
    assert result["baseline"].measured_under_load is True and result["baseline"].cpu_used_by_others > 2
    assert result.report.machine_load.contended
    md = (tmp_path / "busy" / "report.md").read_text()
    html = (tmp_path / "busy" / "report.html").read_text()
    assert "Measured under contention" in md and "latencies of baseline (others:" in md
    assert 'class="contention"' in html
    # The verdict is the stage's: a cached re-run on an idle machine still reports it.
    monkeypatch.setattr(cpu_competition, "machine_busy_seconds", own_busy_seconds)  # nobody else works
    again = make_recipe(model_dir, sst2_spec(data_file)).run(tmp_path / "busy", progress=False)
    assert again["baseline"].cached and not again.report.machine_load.contended
    assert "latencies of baseline (others:" in (tmp_path / "busy" / "report.md").read_text()
    # And an idle run says nothing, however high the load average left by earlier work.
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    quiet = make_recipe(model_dir, sst2_spec(data_file)).run(tmp_path / "idle", progress=False)
    assert quiet["baseline"].measured_under_load is False and quiet["baseline"].cpu_used_by_others == 0.0
    assert "contention" not in (tmp_path / "idle" / "report.md").read_text()


def test_without_proc_stat_the_load_average_decides(model_dir, data_file, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_competition, "machine_busy_seconds", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    result = make_recipe(model_dir, sst2_spec(data_file)).run(tmp_path / "run", progress=False)
    assert result["baseline"].measured_under_load is True and result["baseline"].cpu_used_by_others is None
    assert "latencies of baseline were measured" in (tmp_path / "run" / "report.md").read_text()


def test_a_pair_models_deploy_sample_tokenizes_pairs_and_runs(tiny_bert, model_dir, tmp_path) -> None:
    rows = [r.rsplit("\t", 1) for r in (REPO / "evals/data/sst2/dev.tsv").read_text().splitlines()[1:41]]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "first\tsecond\tlabel\n"
        + "".join(f"{a.strip()}\t{b.strip()}\t{label}\n" for (a, label), (b, _) in itertools.pairwise(rows))
    )
    spec = cx.DataSpec(path=str(pairs), text="first", text_pair="second", label_names=["0", "1"])
    result = make_recipe(model_dir, spec, exports=[OnnxExporter()]).run(tmp_path / "run", progress=False)
    export = result["export:onnx"]
    assert export.status == "ok" and export.max_abs_diff < 1e-4  # evaluated on the same pairs as PyTorch
    notes = (Path(export.artifact) / DEPLOY_FILE).read_text()
    code = notes.split("```python\n", 1)[1].split("```", 1)[0]
    assert f"text_pair={PAIR_SECOND!r}" in code and "sentence pairs" in notes
    code = code.replace("path/to/this/folder", export.artifact)
    code += 'print("token types", sorted(set(batch["token_type_ids"].ravel().tolist())))\n'
    code += 'print("logits", logits.tolist())\n'
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "token types [0, 1]" in ran.stdout  # the second texts really are the pair's second segment
    logits = json.loads(ran.stdout.split("logits ", 1)[1])
    encoded = tiny_bert.tokenizer(PAIR_FIRST, PAIR_SECOND, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = tiny_bert.model(**encoded).logits.numpy()
    assert np.allclose(logits, expected, atol=1e-4)


def test_single_text_models_keep_the_single_text_sample(model_dir, data_file, tmp_path) -> None:
    result = make_recipe(model_dir, sst2_spec(data_file), exports=[OnnxExporter()]).run(
        tmp_path / "run", progress=False
    )
    notes = (Path(result["export:onnx"].artifact) / DEPLOY_FILE).read_text()
    assert "text_pair" not in notes and "sentence pairs" not in notes


def test_a_run_rejected_before_any_stage_leaves_no_folder(model_dir, data_file, tmp_path) -> None:
    bad = cx.DataSpec(path=str(data_file), text="no_such_column")
    target = tmp_path / "new" / "nested" / "run"
    with pytest.raises(DataError, match="no_such_column"):
        make_recipe(model_dir, bad).run(target, progress=False)
    assert not (tmp_path / "new").exists()  # the parents this run created are gone too
    # A folder that existed before is left where it was, lock file aside.
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(DataError):
        make_recipe(model_dir, bad).run(existing, progress=False)
    assert existing.is_dir()


class FailsAfterBaseline(Step):
    """A step that rejects its settings at run time, after the baseline was evaluated and reported."""

    name = "fails_after_baseline"

    def apply(self, model, ctx: StageContext):
        raise CompressError("this step cannot run here", where="steps[0]")


def test_a_run_that_failed_after_a_stage_keeps_its_folder(model_dir, data_file, tmp_path) -> None:
    target = tmp_path / "run"
    with pytest.raises(CompressError, match="cannot run here"):
        make_recipe(model_dir, sst2_spec(data_file), [FailsAfterBaseline(StepConfig())]).run(target, progress=False)
    assert (target / "report.json").is_file() and (target / LOCK_FILE).is_file()
    assert read_report(target).stages[0].name == "baseline"


def test_machine_load_field_defaults() -> None:
    load = MachineLoad(cpu_count=2, threads=2)
    assert load.load_1m_start is None and not load.contended


def test_many_classes_keep_the_confusion_matrix_in_json_only(tmp_path: Path) -> None:
    from compress.report.build import classification_report
    from compress.report.sections import CONFUSION_LIMIT
    from compress.result import RunReport, StageResult

    rng = np.random.default_rng(0)
    classes = CONFUSION_LIMIT + 5
    labels = rng.integers(0, classes, size=400).tolist()
    logits = rng.normal(size=(400, classes)).astype(np.float32)
    names = [f"class-{i}" for i in range(classes - 2)]  # two ids without a name still get a row
    figures = classification_report({"baseline": logits}, labels, names)
    assert figures is not None and figures.label_names[-2:] == [str(classes - 2), str(classes - 1)]
    assert np.array(figures.stages[0].confusion_matrix).sum() == 400
    stage = StageResult(name="baseline", kind="baseline", metrics={"accuracy": 0.04}, primary_metric="accuracy")
    report = RunReport(
        recipe="many",
        created="2025-01-01T00:00:00+00:00",
        output_dir=str(tmp_path),
        environment={},
        stages=[stage],
        total_duration_s=1.0,
        classification=figures,
    )
    paths = write_reports(report, tmp_path)
    md = paths["md"].read_text()
    assert "Per-class precision / recall / F1" in md and "| class-0 |" in md
    assert "Confusion matrix:" not in md and f"{classes} classes: the confusion matrices are in report.json" in md
    assert read_report(paths["json"]).classification == figures
    # Outputs that are not logits for these rows (a causal LM's per-window losses) give no figures.
    assert classification_report({"baseline": np.zeros(7)}, labels, names) is None


def test_training_rows_are_recorded_and_kept_on_a_cached_rerun(model_dir, tmp_path: Path) -> None:
    lines = (REPO / "evals/data/sst2/dev.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:65]) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join([lines[0], *lines[65:97]]) + "\n")
    spec = cx.DataSpec(
        path={"train": str(tmp_path / "train.tsv"), "validation": str(tmp_path / "dev.tsv")},
        text="sentence",
        label_names=["0", "1"],
        train_limit=40,
    )
    steps = [cx.steps.Finetune(epochs=1, batch_size=16, max_length=32)]
    first = make_recipe(model_dir, spec, steps).run(tmp_path / "run", progress=False)
    assert first.report.dataset.train_rows == 40 and first.report.dataset.eval_rows == 32
    assert first.report.dataset.path == {
        "train": str((tmp_path / "train.tsv").resolve()),
        "validation": str((tmp_path / "dev.tsv").resolve()),
    }
    md = (tmp_path / "run" / "report.md").read_text()
    assert "**Training rows**: 40 (split train)" in md and "train: " in md and "validation: " in md
    # The cached re-run never reads the train split, yet its finetuned stage was trained on those 40 rows.
    again = make_recipe(model_dir, spec, steps).run(tmp_path / "run", progress=False)
    assert all(stage.cached for stage in again.stages)
    assert again.report.dataset.train_rows == 40
