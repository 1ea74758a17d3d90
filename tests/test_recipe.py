"""Recipes from YAML and Python: bad input is rejected before any work starts, naming the field."""

from pathlib import Path

import pytest
import yaml

import compress as cx
from compress.errors import ConfigError
from compress.recipe import Recipe

GOOD = {
    "name": "t",
    "model": {"source": "some/model"},
    "data": {"path": "dev.tsv", "text": "sentence"},
    "steps": [{"truncate": {"max_length": 32}}, "dynamic_int8"],
}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_yaml_builds_steps_in_order(tmp_path):
    recipe = Recipe.from_yaml(write(tmp_path, GOOD))
    assert [s.name for s in recipe.steps] == ["truncate", "dynamic_int8"]
    assert recipe.steps[0].config.max_length == 32
    assert recipe.base_dir == tmp_path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"steps": ["truncat"]}, ["steps[0]", "unknown step 'truncat'", "did you mean 'truncate'"]),
        ({"steps": [{"truncate": {"max_length": "long"}}]}, ["steps[0].truncate.max_length"]),
        ({"evaluate": {"batch_sizes": [-1]}}, ["evaluate.batch_sizes[0]", "greater than 0"]),
        ({"model": {}}, ["model.source", "Field required"]),
        ({"model": {"source": "x", "task": "translation"}}, ["model.task", "text-classification"]),
        ({"data": {"path": "a.tsv", "txt": "sentence"}}, ["data.txt", "unknown field"]),
        ({"exports": ["onnnx"]}, ["exports[0]", "unknown exporter"]),
        ({"steps": [{"dynamic_int8": {"per_channel": "maybe"}}]}, ["steps[0].dynamic_int8.per_channel"]),
    ],
)
def test_bad_recipe_names_the_field(tmp_path, change, expected):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message
    assert "fix:" in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        Recipe.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Recipe.from_yaml(bad)


def test_overrides_apply_before_validation(tmp_path):
    recipe = Recipe.from_yaml(write(tmp_path, GOOD), {"data.limit": 5, "steps.0.truncate.max_length": 16})
    assert recipe.data.limit == 5
    assert recipe.steps[0].config.max_length == 16


def test_task_file_supplies_data_and_evaluate(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    raw = {"task": str(repo / "evals/tasks/sst2.yaml"), "model": {"source": "m"}, "data": {"limit": 10}}
    recipe = Recipe.from_yaml(write(tmp_path, raw))
    assert recipe.data.limit == 10 and recipe.data.text == "sentence"
    assert Path(recipe.data.path["validation"]).exists()
    assert recipe.evaluate.metric == "accuracy"


def test_python_api_matches_issue_example():
    recipe = cx.Recipe(
        model=cx.ModelSpec("path/or/hub-name", task="text-classification"),
        data=cx.DataSpec(path="my.tsv", text="sentence", label="label", split="validation"),
        steps=[cx.steps.Truncate(max_length="auto", max_accuracy_drop=0.005), cx.steps.DynamicInt8()],
        evaluate=cx.EvalSpec(metric="accuracy", batch_sizes=[1, 32]),
    )
    assert [s.name for s in recipe.steps] == ["truncate", "dynamic_int8"]
    with pytest.raises(ConfigError):
        cx.Recipe(model=cx.ModelSpec("m"), data=cx.DataSpec("d.tsv"), steps=["truncate"])


def test_bundled_recipes_parse():
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "recipes").glob("*.yaml")):
        recipe = Recipe.from_yaml(path)
        assert recipe.steps or recipe.exports, path


def test_stage_names_must_be_unique_and_sources_must_exist(tmp_path):
    twice = {**GOOD, "steps": [{"truncate": {"max_length": 32}}, {"truncate": {"max_length": 16}}]}
    with pytest.raises(ConfigError, match="two stages are named 'truncate'") as info:
        Recipe.from_yaml(write(tmp_path, twice))
    assert "label" in str(info.value)
    relabelled = {**GOOD, "steps": [{"truncate": {"max_length": 32}}, {"truncate": {"max_length": 16, "label": "t16"}}]}
    assert [s.label for s in Recipe.from_yaml(write(tmp_path, relabelled)).steps] == ["truncate", "t16"]
    with pytest.raises(ConfigError, match="export source 'finetune' is not a stage") as info:
        Recipe.from_yaml(write(tmp_path, {**GOOD, "exports": [{"onnx": {"source": "finetune"}}]}))
    assert "exports[0].onnx.source" in str(info.value)
