"""The flagship's seed loop (`benchmarks/bench_distill.py --seeds`): in one run folder a second distill seed reuses
the teacher stage and trains a different student; the figures over seeds are judged by their minimum."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import compress as cx
from compress.runner import RunResult

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_distill import DISTILL_SEED, across_seeds  # noqa: E402

from compress.recipe import Recipe  # noqa: E402


def teacher_then_student(model_dir: Path, data_file: Path, seed: int) -> Recipe:
    return cx.Recipe(
        model=cx.ModelSpec(str(model_dir)),
        data=cx.DataSpec(path=str(data_file), text="sentence", label_names=["0", "1"], split_ratio=0.25),
        steps=[
            cx.steps.Finetune(label="teacher", epochs=1, batch_size=8, progress=False),
            cx.steps.Distill(label="student", student={"layers": [1]}, epochs=1, batch_size=8, seed=seed),
        ],
        evaluate=cx.EvalSpec(batch_sizes=[8], warmup_batches=0, threads=1),
    )


def student_weights(result: RunResult) -> dict[str, torch.Tensor]:
    artifact = result["student"].artifact
    assert artifact is not None
    (weights,) = Path(artifact).rglob("*.safetensors")
    return load_file(weights)


def test_a_second_seed_reuses_the_teacher_and_trains_another_student(
    model_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = teacher_then_student(model_dir, data_file, 0).run(run, progress=False)
    second = teacher_then_student(model_dir, data_file, 1).run(run, progress=False)
    again = teacher_then_student(model_dir, data_file, 0).run(run, progress=False)

    assert [s.cached for s in second.stages] == [True, True, False]
    assert [s.cached for s in again.stages] == [True, True, True]
    assert first["teacher"].artifact == second["teacher"].artifact
    assert first["student"].artifact != second["student"].artifact
    a, b = student_weights(first), student_weights(second)
    assert any(not torch.equal(a[name], b[name]) for name in a)


def test_the_override_path_names_the_flagship_distill_seed() -> None:
    recipe = Recipe.from_yaml(REPO / "recipes" / "distill-bert-then-int8.yaml", {DISTILL_SEED: 7})
    (distill,) = [s for s in recipe.steps if s.name == "distill"]
    assert distill.config.seed == 7


def test_figures_over_seeds_are_judged_by_their_minimum() -> None:
    figures = across_seeds({
        0: {"accuracy_ratio": 0.995, "speedup_batch32": 12.0},
        1: {"accuracy_ratio": 0.985, "speedup_batch32": 11.0},
        2: {"final": "did not run"},
    })  # fmt: skip
    assert figures["accuracy_ratio_min"] == 0.985 and figures["accuracy_ratio_mean"] == 0.99
    assert figures["speedup_batch32_min"] == 11.0 and figures["seeds_finished"] == [0, 1]
    assert figures["target_every_seed_ge_0.99"] is False  # one seed short, one missing
    assert figures["target_every_seed_ge_10x_batch32"] is True
