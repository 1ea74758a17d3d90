"""`compress bench`: artifacts open by their recorded format, points are measured with honest sample counts,
the SLA search finds the boundary, served load batches and saturates as queueing says, runs merge across
machines, and what cannot run here is reported as such."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import make_context

from compress.artifacts import artifact_format, open_artifact, run_artifacts
from compress.bench.measure import P99_MIN_SAMPLES, REAL, Plan, Point, batches_for, measure_point
from compress.bench.merge import load_runs, markdown, read_runs, write_report, write_results
from compress.bench.run import BenchResults, BenchSpec, bench, expand
from compress.bench.served import serve
from compress.bench.sla import search_sla_batch
from compress.data.text_data import TextData
from compress.errors import ConfigError, ModelError
from compress.evaluate.batching import tokenize_batches
from compress.evaluate.latency import run_pass
from compress.export.onnx import OnnxExporter
from compress.export.tensorrt import TensorRTExporter
from compress.models.handle import ModelHandle
from compress.models.serialize import save_handle
from compress.runtime.onnxruntime import OnnxRuntime
from compress.runtime.torch import TorchRuntime

QUICK = Plan(passes=2, warmup=1, min_batches=3, min_seconds=0.0, max_seconds=5.0)


@pytest.fixture
def onnx_dir(tiny_bert: ModelHandle, sst2_dev: TextData, tmp_path: Path) -> Path:
    folder = tmp_path / "onnx"
    folder.mkdir()
    (tmp_path / "work").mkdir()
    OnnxExporter().export(tiny_bert, make_context(sst2_dev, sst2_dev, tmp_path / "work"), folder)
    return folder


def test_artifacts_open_by_their_recorded_format(tiny_bert: ModelHandle, onnx_dir: Path, tmp_path: Path) -> None:
    assert artifact_format(onnx_dir) == "onnx"
    assert isinstance(open_artifact(onnx_dir, device="cpu", threads=1), OnnxRuntime)
    save_handle(tiny_bert, tmp_path / "saved")
    saved = open_artifact(tmp_path / "saved", device="cpu")
    assert isinstance(saved, TorchRuntime) and artifact_format(tmp_path / "saved") == "pytorch"
    tiny_bert.model.save_pretrained(tmp_path / "plain")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "plain")
    plain = open_artifact(tmp_path / "plain", device="cpu")  # the task from the architecture
    assert plain.task == "text-classification"
    import compress as cx

    assert cx.open is open_artifact


def test_a_stage_folder_is_labelled_by_its_run_and_stage(onnx_dir: Path, tmp_path: Path) -> None:
    import shutil

    stage = tmp_path / "flagship" / "stages" / "04-export-onnx-0123456789" / "artifact"
    shutil.copytree(onnx_dir, stage)
    report = {"stages": [{"name": "export:onnx", "status": "ok", "artifact": str(stage)}]}
    (tmp_path / "flagship" / "report.json").write_text(json.dumps(report))
    assert expand([tmp_path / "flagship"]) == [("flagship/export:onnx", tmp_path / "flagship" / "stages" /
                                               "04-export-onnx-0123456789" / "artifact")]  # fmt: skip
    assert expand([stage]) == [("flagship/export:onnx", stage)]
    assert expand([onnx_dir]) == [(str(onnx_dir), onnx_dir)]


def test_what_is_not_an_artifact_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not an artifact"):
        open_artifact(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"stages": []}))
    with pytest.raises(ConfigError, match="run folder"):
        open_artifact(tmp_path)
    assert run_artifacts(tmp_path) == {}
    with pytest.raises(ConfigError, match="not a folder"):
        open_artifact(tmp_path / "missing")


def test_points_count_their_samples(onnx_dir: Path, sst2_dev: TextData) -> None:
    runtime = open_artifact(onnx_dir, device="cpu", threads=1)
    real = measure_point(runtime, sst2_dev, 8, REAL, QUICK, artifact="onnx", threads=1)
    fixed = measure_point(runtime, sst2_dev, 8, "48", QUICK, artifact="onnx", threads=1)
    assert real.batches >= QUICK.passes * QUICK.min_batches and len(real.pass_throughputs) == QUICK.passes
    assert real.p50_ms <= real.p95_ms <= real.p99_ms and real.throughput_per_s > 0
    assert real.p99_from_few_samples == (real.batches < P99_MIN_SAMPLES)
    assert fixed.mean_tokens_per_sample == 48 and real.mean_tokens_per_sample < 48  # dynamic padding
    assert real.threads == 1 and real.peak_memory_mb and real.memory_source == "process_rss"


def _synthetic(batch: int) -> Point:
    """A latency model (P99 = 2 ms + 0.5 ms per row): the search's arithmetic checked without timing noise."""
    p99 = 2 + 0.5 * batch
    return Point(artifact="a", runtime="r", device="cpu", batch_size=batch, length=REAL, batches=1000, p50_ms=p99,
                 p95_ms=p99, p99_ms=p99, mean_ms=p99, throughput_per_s=batch / p99 * 1000, pass_throughputs=[1.0],
                 throughput_spread=0.0, tokenize_ms_per_batch=0.0, mean_tokens_per_sample=1.0,
                 p99_from_few_samples=False)  # fmt: skip


def test_sla_search_grows_then_bisects() -> None:
    found = search_sla_batch(_synthetic, 20.0, max_batch=1024)
    assert found.best is not None and found.best.batch_size == 36  # 2 + 0.5 * 36 = 20
    assert [p.batch_size for p in found.probes][:7] == [1, 2, 4, 8, 16, 32, 64]
    assert len(found.probes) <= 14 and not found.limited_by_max_batch
    assert search_sla_batch(_synthetic, 1.0).best is None
    capped = search_sla_batch(_synthetic, 1000.0, max_batch=100)
    assert capped.best.batch_size == 100 and capped.limited_by_max_batch


def test_sla_search_grows_past_one_noisy_miss() -> None:
    def spiky(batch: int) -> Point:  # batch 2's P99 caught one stray slow batch; the curve itself holds to 36
        point = _synthetic(batch)
        return point.model_copy(update={"p99_ms": 50.0}) if batch == 2 else point

    found = search_sla_batch(spiky, 20.0, max_batch=1024)
    assert found.best is not None and found.best.batch_size == 36
    assert [p.batch_size for p in found.probes][:3] == [1, 2, 4]
    hopeless = search_sla_batch(lambda b: _synthetic(b).model_copy(update={"p99_ms": 99.0}), 20.0)
    assert hopeless.best is None and len(hopeless.probes) == 2  # batches 1 and 2 missed: no further growth


def test_served_load_batches_more_as_the_rate_rises_and_saturates(onnx_dir: Path, sst2_dev: TextData) -> None:
    runtime = open_artifact(onnx_dir, device="cpu", threads=1)
    light = serve(runtime, sst2_dev, rate_per_s=5, window_ms=5, max_batch=16, requests=60)
    heavy = serve(runtime, sst2_dev, rate_per_s=1e6, window_ms=5, max_batch=16, requests=400)
    assert light.mean_batch < 1.5 and not light.saturated and light.p50_ms < 200
    assert heavy.mean_batch == pytest.approx(16, abs=0.1) and heavy.saturated
    assert heavy.achieved_per_s < 1e6 and heavy.p99_ms > light.p99_ms


def test_a_queue_that_falls_behind_slowly_is_saturated(onnx_dir: Path, sst2_dev: TextData) -> None:
    """One request at a time: offered 3x what the worker serves, the backlog grows; offered 0.2x, it drains (wide
    margins: the machine's speed may change between the probe and the runs)."""
    runtime = open_artifact(onnx_dir, device="cpu", threads=1)
    probe = serve(runtime, sst2_dev, rate_per_s=1e6, window_ms=0, max_batch=1, requests=100)
    capacity = probe.achieved_per_s
    behind = serve(runtime, sst2_dev, rate_per_s=3 * capacity, window_ms=0, max_batch=1, requests=300)
    keeping_up = serve(runtime, sst2_dev, rate_per_s=0.2 * capacity, window_ms=0, max_batch=1, requests=300)
    assert behind.saturated and not keeping_up.saturated
    assert behind.p99_ms > 3 * keeping_up.p99_ms


def test_a_run_folder_is_benched_stage_by_stage_and_unrunnable_artifacts_are_rows(
    tiny_bert: ModelHandle, onnx_dir: Path, sst2_dev: TextData, tmp_path: Path
) -> None:
    trt = tmp_path / "trt"
    trt.mkdir()
    (tmp_path / "w").mkdir()
    TensorRTExporter().export(tiny_bert, make_context(sst2_dev, sst2_dev, tmp_path / "w"), trt)  # no engine here
    spec = BenchSpec(batch_sizes=[1, 4], plan=QUICK, sla_p99_ms=1e4, max_batch=8, served_rates=[20.0],
                     served_requests=40, device="cpu", threads=1)  # fmt: skip
    results = bench([onnx_dir, trt], sst2_dev.head(16), spec, command="test", machine_name="box-a", log=lambda _: None)
    assert [(p.artifact, p.batch_size) for p in results.points] == [(str(onnx_dir), 1), (str(onnx_dir), 4)]
    (sla,) = results.sla
    assert [p.batch_size for p in sla.probes] == [1, 2, 4, 8] and sla.limited_by_max_batch
    assert sla.best.throughput_per_s == max(p.throughput_per_s for p in sla.probes)  # every probe met the SLA
    assert results.served[0].max_batch == sla.best.batch_size  # served load batches up to the SLA batch
    (unavailable,) = results.unavailable
    assert unavailable.format == "tensorrt" and "not built" in unavailable.reason


def test_results_are_written_after_each_artifact(onnx_dir: Path, sst2_dev: TextData, tmp_path: Path) -> None:
    """A bench stopped midway (a machine's time ran out) keeps what it measured and names what it did not reach."""

    second = tmp_path / "copy"
    shutil.copytree(onnx_dir, second)
    out = tmp_path / "out"
    written: list[tuple[int, list[str]]] = []

    def measured(so_far: BenchResults) -> None:
        write_results(so_far, out)
        (on_disk,) = load_runs([out / "bench.json"])
        written.append((len(on_disk.points), on_disk.not_measured))
        assert ("not measured" in markdown([on_disk])) == bool(on_disk.not_measured)  # merged reports say so

    spec = BenchSpec(batch_sizes=[1], plan=QUICK, device="cpu", threads=1)
    bench([onnx_dir, second], sst2_dev.head(4), spec, command="test", log=lambda _: None, measured=measured)
    assert written == [(1, [str(second)]), (2, [])]


def test_merge_combines_machines_and_refuses_foreign_files(onnx_dir: Path, sst2_dev: TextData, tmp_path: Path) -> None:
    spec = BenchSpec(batch_sizes=[2], plan=QUICK, device="cpu", threads=1)
    for name in ("cpu-box", "mac-mini"):
        run = bench([onnx_dir], sst2_dev.head(8), spec, command="test", machine_name=name, log=lambda _: None)
        write_report([run], tmp_path / name)
    merged = load_runs([tmp_path / "cpu-box" / "bench.json", tmp_path / "mac-mini" / "bench.json"])
    assert [r.machine_name for r in merged] == ["cpu-box", "mac-mini"]
    paths = write_report(merged, tmp_path / "merged")
    html = (tmp_path / "merged" / "bench.html").read_text()
    assert "<svg" in html and "cpu-box" in html and "mac-mini" in html
    assert "| mac-mini |" in (tmp_path / "merged" / "bench.md").read_text()
    assert len(read_runs(paths[0])) == 2  # a merged file merges again
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": [{"schema_version": 99}]}))
    with pytest.raises(ConfigError, match="schema version 99"):
        read_runs(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not a readable JSON"):
        read_runs(bad)


def test_results_schema_round_trips(onnx_dir: Path, sst2_dev: TextData) -> None:
    spec = BenchSpec(batch_sizes=[1], plan=QUICK, device="cpu", threads=1)
    run = bench([onnx_dir], sst2_dev.head(4), spec, command="test", log=lambda _: None)
    again = BenchResults.model_validate_json(run.model_dump_json())
    assert again == run and again.machine["cpu_count"] >= 1 and torch.__version__ == again.machine["torch"]


def test_core_ml_packages_run_once_per_compute_unit(tiny_bert: ModelHandle, sst2_dev: TextData, tmp_path: Path) -> None:
    """On macOS every requested compute unit is measured; elsewhere each is an `unavailable` row saying why."""
    import sys

    pytest.importorskip("coremltools")
    from compress.export.coreml import CoreMLExporter

    package = tmp_path / "cm"
    package.mkdir()
    (tmp_path / "w").mkdir()
    CoreMLExporter().export(tiny_bert, make_context(sst2_dev, sst2_dev, tmp_path / "w"), package)
    spec = BenchSpec(batch_sizes=[1], plan=QUICK, coreml_compute_units=["cpu_only", "cpu_and_ne"])
    results = bench([package], sst2_dev.head(4), spec, command="test", log=lambda _: None)
    labels = [f"{package} (cpu_only)", f"{package} (cpu_and_ne)"]
    if sys.platform == "darwin":
        assert [p.artifact for p in results.points] == labels
        assert [p.device for p in results.points] == ["cpu_only", "cpu_and_ne"]
    else:
        assert [u.artifact for u in results.unavailable] == labels
        assert all("needs macOS" in u.reason and u.format == "coreml" for u in results.unavailable)


class _CompilesPerShape(TorchRuntime):
    """The PyTorch runtime, recording at which call it first saw each input shape (where a compiler compiles)."""

    compiles_per_shape = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = 0
        self.first_seen: dict[tuple[int, ...], int] = {}

    def predict(self, batch):  # type: ignore[no-untyped-def]
        self.first_seen.setdefault(tuple(batch["input_ids"].shape), self.calls)
        self.calls += 1
        return super().predict(batch)


@pytest.mark.parametrize("compiles", [True, False])
def test_runtimes_that_compile_per_shape_are_timed_after_every_shape(
    tiny_bert: ModelHandle, sst2_dev: TextData, compiles: bool
) -> None:
    """A compile never lands in a timed batch (what made torch.compile rows look slow at batch 32 on the H200):
    every shape is first seen during the warm-up, which then covers every batch."""
    runtime = _CompilesPerShape(tiny_bert, "cpu")
    runtime.compiles_per_shape = compiles
    distinct = len(batches_for(runtime, sst2_dev, 8, REAL))
    measure_point(runtime, sst2_dev, 8, REAL, QUICK, artifact="compiled")
    warmed = distinct if compiles else QUICK.warmup
    assert (max(runtime.first_seen.values()) < warmed) == compiles

    runtime.calls, runtime.first_seen = 0, {}
    run_pass(runtime, lambda: tokenize_batches(runtime.tokenizer, sst2_dev, 8, 128), batch_size=8,
             total_batches=6, timed_batches=6, warmup=1, progress=False)  # fmt: skip
    assert (max(runtime.first_seen.values()) < (6 if compiles else 1)) == compiles


def test_a_damaged_artifact_is_an_error_naming_it(onnx_dir: Path) -> None:
    """A copy that lost its model file, or whose metadata is not JSON: the folder and the fix, no traceback."""
    (onnx_dir / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"recorded format \(onnx\).*NO_SUCHFILE") as missing:
        open_artifact(onnx_dir, device="cpu")
    assert "export it again" in (missing.value.fix or "")
    (onnx_dir / "compress-export.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        open_artifact(onnx_dir, device="cpu")
    (onnx_dir / "compress-export.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds no settings object"):
        artifact_format(onnx_dir)
