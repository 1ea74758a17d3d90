"""report.json / report.md / report.html from a realistic run: round trip, contents, escaping, bad files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compress.errors import CompressError
from compress.report import read_report, stage_table, write_reports
from compress.report.table import reference_stage, speedup
from compress.result import LatencyStats, RunReport, StageResult


def latency(batch_size: int, p50: float, spread: float = 1.3) -> LatencyStats:
    samples = 256
    return LatencyStats(
        batch_size=batch_size,
        p50_ms=p50,
        p95_ms=p50 * spread,
        p99_ms=p50 * spread * 1.2,
        mean_ms=p50 * 1.05,
        batches=samples // batch_size,
        samples=samples,
        throughput_per_s=batch_size * 1000 / (p50 * 1.05),
        tokenize_ms_per_batch=0.05 * batch_size,
        mean_tokens_per_sample=24.5,
    )


def stage(name: str, kind: str, accuracy: float | None, p50: tuple[float, float] | None, **fields) -> StageResult:
    common = {"runtime": "pytorch", "device": "cpu", "threads": 2, "eval_samples": 872}
    if accuracy is not None:
        common.update(metrics={"accuracy": accuracy, "f1": accuracy - 0.01}, primary_metric="accuracy")
    if p50 is not None:
        common["latency"] = {"1": latency(1, p50[0]), "32": latency(32, p50[1])}
    return StageResult(name=name, kind=kind, **{**common, **fields})


def realistic_report(odd_name: str = "<b>x</b>") -> RunReport:
    stages = [
        stage(
            "baseline",
            "baseline",
            0.9128,
            (7.9, 118.0),
            size_mb=86.7,
            num_parameters=22_713_216,
            peak_memory_mb=412.0,
            metric_delta=0.0,
        ),
        stage(
            "truncate",
            "step",
            0.9117,
            (6.1, 61.0),
            step="truncate",
            size_mb=86.7,
            peak_memory_mb=380.5,
            duration_s=42.3,
            metric_delta=-0.0011,
            source="baseline",
            prediction_agreement=0.991,
            config={"max_length": "auto"},
        ),
        stage(
            "dynamic_int8",
            "step",
            0.9071,
            (3.4, 30.2),
            step="dynamic_int8",
            size_mb=31.2,
            peak_memory_mb=301.0,
            duration_s=1.9,
            metric_delta=-0.0057,
            source="truncate",
            prediction_agreement=0.982,
            max_abs_diff=0.21,
            cached=True,
        ),
        stage(
            "onnx",
            "export",
            0.9071,
            (2.2, 21.5),
            step="onnx",
            runtime="onnxruntime",
            size_mb=31.0,
            peak_memory_mb=190.2,
            duration_s=6.4,
            metric_delta=-0.0057,
            source="dynamic_int8",
            prediction_agreement=1.0,
            max_abs_diff=3.1e-6,
        ),
        stage(
            "tensorrt",
            "export",
            None,
            None,
            step="tensorrt",
            status="failed",
            source="dynamic_int8",
            message="TensorRT needs a CUDA GPU; none on this machine",
            duration_s=0.2,
            runtime=None,
        ),
        stage(
            odd_name,
            "step",
            0.61,
            (1.1, 9.0),
            step="distill",
            status="gate_failed",
            size_mb=9.8,
            peak_memory_mb=150.0,
            duration_s=640.0,
            metric_delta=-0.3028,
            source="dynamic_int8",
            message="accuracy dropped 0.3028 > max_accuracy_drop 0.01 | stopping",
        ),
        stage(
            "coreml",
            "export",
            None,
            None,
            step="coreml",
            status="not_evaluated",
            source="dynamic_int8",
            message="Core ML runs only on macOS; the .mlpackage was written",
            duration_s=12.0,
        ),
    ]
    return RunReport(
        recipe="minilm-sst2-cpu",
        created="2025-01-01T12:00:00+00:00",
        output_dir="runs/minilm-sst2-cpu",
        environment={
            "python": "3.12.3",
            "torch": "2.13.0",
            "transformers": "5.23.0",
            "cpu": "x86_64 (2 cores)",
            "threads": 2,
        },
        stages=stages,
        stopped=f"stage '{odd_name}' failed its accuracy gate",
        total_duration_s=731.5,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunReport, dict[str, Path]]:
    report = realistic_report()
    return report, write_reports(report, tmp_path_factory.mktemp("run"))


def test_all_files_written_and_json_round_trips(written: tuple[RunReport, dict[str, Path]]) -> None:
    report, paths = written
    assert sorted(paths) == ["html", "json", "md"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert read_report(paths["json"]) == report
    assert read_report(paths["json"].parent) == report  # the run folder works too
    data = json.loads(paths["json"].read_text())
    onnx = data["stages"][3]
    assert onnx["latency"]["32"]["p99_ms"] == pytest.approx(21.5 * 1.3 * 1.2)
    assert {"p50_ms", "p95_ms", "p99_ms", "samples", "throughput_per_s"} <= set(onnx["latency"]["1"])
    assert not list(paths["json"].parent.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_markdown_lists_every_stage_and_figure(written: tuple[RunReport, dict[str, Path]]) -> None:
    report, paths = written
    md = paths["md"].read_text()
    assert "minilm-sst2-cpu" in md and "2025-01-01T12:00:00+00:00" in md and "transformers" in md
    assert "Stopped early" in md
    for s in report.stages[:-2]:
        assert s.name in md
    assert "\\<b>x\\</b>" in md  # user text cannot inject HTML into the rendered Markdown
    assert "accuracy 0.9117 (-0.0011)" in md
    assert "7.90 / 10.3 / 12.3" in md  # baseline bs1 P50 / P95 / P99
    assert "86.7" in md and "412" in md and "42.3" in md
    # messages of failed, gate-failed and not-evaluated stages are listed, pipes escaped
    assert "TensorRT needs a CUDA GPU" in md and "\\| stopping" in md and "Core ML runs only on macOS" in md
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(report.stages)
    columns = {line.count(" | ") for line in table_lines}
    assert len(columns) == 1  # the escaped `|` in messages never splits a row


def test_speedup_is_measured_against_the_reference(written: tuple[RunReport, dict[str, Path]]) -> None:
    report, paths = written
    baseline, _, int8, onnx = report.stages[:4]
    assert reference_stage(report.stages) is baseline
    expected = onnx.latency["32"].throughput_per_s / baseline.latency["32"].throughput_per_s
    assert speedup(onnx, baseline, 32) == pytest.approx(118.0 / 21.5)
    assert f"(×{expected:.2f})" in paths["md"].read_text()
    # After a finetune the finetuned model is the reference: its delta is the one that is 0.0.
    finetuned = stage("finetune", "step", 0.93, (7.9, 118.0), metric_delta=0.0)
    stages = [report.stages[0].model_copy(update={"metric_delta": -0.4}), finetuned, int8]
    assert reference_stage(stages) is finetuned
    assert "finetune (reference)" in stage_table(stages)


def test_html_is_self_contained_with_charts_and_escaped_text(
    written: tuple[RunReport, dict[str, Path]],
) -> None:
    report, paths = written
    html = paths["html"].read_text()
    assert html.count("<svg") == 3
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert not re.search(r"<script|https?://(?!www\.w3\.org)", html)  # no JS, nothing fetched
    for s in report.stages:
        assert html.count(f">{s.name.replace('<', '&lt;').replace('>', '&gt;')}") >= 1
    assert "TensorRT needs a CUDA GPU" in html and 'class="status-failed"' in html


def test_stage_table_handles_unevaluated_stages_only() -> None:
    table = stage_table([stage("coreml", "export", None, None, status="not_evaluated", message="off macOS")])
    assert "coreml" in table and "not evaluated" in table
    assert stage_table([stage("a", "baseline", 0.5, (1.0, 2.0))], batch_sizes=[1]).count("bs32") == 0


def test_html_without_any_timed_stage_has_no_charts(tmp_path: Path) -> None:
    report = realistic_report().model_copy(update={"stages": realistic_report().stages[4:5]})
    html = write_reports(report, tmp_path)["html"].read_text()
    assert "<svg" not in html and "tensorrt" in html


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "not found"), ("{not json", "not valid JSON"), ('{"recipe": "x"}', "not a compress report")],
)
def test_bad_report_json_names_the_file(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CompressError, match=expected) as info:
        read_report(path)
    assert str(path) in str(info.value)


def test_lower_is_better_metric_report(tmp_path: Path) -> None:
    def lm_stage(name: str, kind: str, perplexity: float, p50: float, **fields) -> StageResult:
        return StageResult(
            name=name,
            kind=kind,
            metrics={"perplexity": perplexity},
            primary_metric="perplexity",
            higher_is_better=False,
            latency={"1": latency(1, p50)},
            **fields,
        )

    stages = [
        lm_stage("baseline", "baseline", 24.31, 40.0, metric_delta=0.0),
        lm_stage("int8", "step", 25.02, 22.0, metric_delta=0.71, source="baseline"),
    ]
    report = realistic_report().model_copy(update={"stages": stages, "stopped": None})
    paths = write_reports(report, tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "perplexity 25.02 (+0.71)" in md and "Stopped early" not in md
    assert html.count("<svg") == 3 and "lower is better" in html
    assert read_report(paths["json"]).stages[1].higher_is_better is False


def test_step_peak_memory_column_appears_only_when_measured(tmp_path: Path) -> None:
    report = realistic_report()
    assert "Step peak mem" not in stage_table(report.stages)  # reports from before it was measured
    report.stages[1].step_peak_memory_mb = 1234.5
    report.stages[2].step_peak_memory_mb = 900.0
    report.stages[2].step_peak_cuda_memory_mb = 3100.0
    table = stage_table(report.stages)
    header, _, *rows = table.splitlines()

    def cells_of(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # escaped pipes stay

    columns = cells_of(header)
    at = columns.index("Step peak mem MB")
    assert columns[at - 1] == "Peak mem MB"
    cells = [cells_of(row) for row in rows]
    assert all(len(row) == len(columns) for row in cells)
    assert [row[at] for row in cells[:3]] == ["–", "1,234", "900 (GPU 3,100)"]
    paths = write_reports(report, tmp_path)
    html = paths["html"].read_text()
    assert "<th>Step peak mem MB</th>" in html and "900 (GPU 3,100)" in html
    assert "Step peak mem is the process RSS" in paths["md"].read_text()
