"""`gates.min_speedup`: a compressed stage slower than its source (at the largest batch both measured, on its own
runtime) stops the recipe or, with `speed_gate: warn`, is kept with the shortfall in its message."""

from __future__ import annotations

from pathlib import Path

import compress as cx
from compress.gates import check_speed, speedup
from compress.result import LatencyStats, StageResult


def _stage(name: str, per_s: dict[int, float]) -> StageResult:
    latency = {
        str(b): LatencyStats(batch_size=b, p50_ms=1, p95_ms=1, p99_ms=1, mean_ms=1, batches=10, samples=10 * b,
                             throughput_per_s=v, tokenize_ms_per_batch=0, mean_tokens_per_sample=8)
        for b, v in per_s.items()
    }  # fmt: skip
    return StageResult(name=name, kind="export", latency=latency, runtime="openvino")


def test_speedup_is_read_at_the_largest_common_batch() -> None:
    source, slower = _stage("fp32", {1: 100, 32: 1000}), _stage("int8", {1: 150, 32: 800, 64: 2000})
    assert speedup(slower, source) == (0.8, 32)
    message = check_speed(slower, source, 1.0)
    assert "0.80x 'fp32' at batch 32" in message and "openvino" in message
    assert check_speed(slower, source, 0.75) is None and check_speed(slower, source, None) is None
    assert check_speed(slower, _stage("other", {}), 1.0) is None  # nothing to compare: no verdict


def _recipe(model_dir: Path, data_file: Path, gates: dict) -> cx.Recipe:
    return cx.Recipe(
        model=cx.ModelSpec(str(model_dir)),
        data=cx.DataSpec(path=str(data_file), text="sentence", label_names=["0", "1"]),
        steps=[cx.steps.Truncate(max_length=16)],
        evaluate=cx.EvalSpec(batch_sizes=[8], warmup_batches=1, threads=1),
        gates=cx.GateSpec(**gates),
    )


def test_an_unreachable_speedup_stops_the_recipe_and_warn_keeps_it(model_dir, data_file, tmp_path) -> None:
    failed = _recipe(model_dir, data_file, {"min_speedup": 1000}).run(tmp_path / "fail", progress=False)
    truncate = failed["truncate"]
    assert truncate.status == "gate_failed" and "gates.min_speedup 1000" in truncate.message
    warned = _recipe(model_dir, data_file, {"min_speedup": 1000, "speed_gate": "warn"}).run(
        tmp_path / "warn", progress=False
    )
    assert warned["truncate"].status == "ok" and "speed gate" in warned["truncate"].message
    passed = _recipe(model_dir, data_file, {"min_speedup": 0.01}).run(tmp_path / "pass", progress=False)
    assert passed["truncate"].status == "ok" and not passed["truncate"].message
