"""Recipes a hostile (or unlucky) user writes: every one is a ConfigError naming where and how to fix it —
never a raw traceback, never an echo of megabytes of input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from compress.errors import ConfigError
from compress.recipe import Recipe

GOOD = "name: t\nmodel: {source: some/model}\ndata: {path: dev.tsv, text: sentence}\nsteps: [dynamic_int8]\n"


def rejected(tmp_path: Path, text: str | bytes, overrides: dict | None = None) -> ConfigError:
    path = tmp_path / "recipe.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Recipe.from_yaml(path, overrides)
    return info.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"name: caf\xe9\n", "not UTF-8"),
        ("extra: " + "[" * 600 + "]" * 600 + "\n" + GOOD, "levels deep"),
        ("name: !!int 'abc'\n" + GOOD, "YAML tag"),
        (GOOD.replace("steps: [dynamic_int8]", "steps: [{5: {}}]"), "name as text"),
        (GOOD.replace("steps: [dynamic_int8]", "steps: [true]"), "name as text"),
        (GOOD.replace("steps: [dynamic_int8]", "steps: [null]"), "name as text"),
        (GOOD.replace("steps: [dynamic_int8]", "steps: [{2024-01-01: {}}]"), "name as text"),
        ("task: 5\n" + GOOD, "path of a task file"),
        ("task: " + "x" * 300 + "\n" + GOOD, "task"),
        ('task: "a\\0b"\n' + GOOD, "task"),
    ],
)
def test_malformed_recipes_are_config_errors(tmp_path: Path, text: str | bytes, expected: str) -> None:
    error = rejected(tmp_path, text)
    assert expected in str(error)


def test_a_task_that_is_a_directory_or_lists_data(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    assert "not found" in str(rejected(tmp_path, "task: tasks\n" + GOOD))
    (tmp_path / "task.yaml").write_text("data: [1, 2]\n")
    assert "must be a mapping" in str(rejected(tmp_path, "task: task.yaml\n" + GOOD))


def test_alias_bombs_and_huge_keys_are_refused_quickly(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, "
        bomb += f"*{previous}, *{previous}, *{previous}, *{previous}]\n"
    started = time.perf_counter()
    assert "YAML aliases" in str(rejected(tmp_path, bomb + GOOD))
    assert time.perf_counter() - started < 5
    huge = rejected(tmp_path, GOOD + "k" * 1_000_000 + ": 1\n")
    assert len(str(huge)) < 2_000


@pytest.mark.parametrize(
    "dotted", ["steps.x", "model.source.x", "steps.10.truncate", "steps.-9.truncate.max_length", "name.first"]
)
def test_set_overrides_that_lead_nowhere(tmp_path: Path, dotted: str) -> None:
    error = rejected(tmp_path, GOOD, {dotted: 1})
    assert error.where == f"--set {dotted}" and "YAML path" in error.fix


def test_the_cli_prints_no_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from compress.cli import app

    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert yaml.safe_load(GOOD)["steps"] == ["dynamic_int8"]  # the good recipe above is good


@pytest.mark.parametrize("value", ['"yes"', '"true"', "1", '"on"'])
def test_trust_remote_code_takes_only_a_real_boolean(tmp_path: Path, value: str) -> None:
    text = GOOD.replace("model: {source: some/model}", f"model: {{source: some/model, trust_remote_code: {value}}}")
    assert "model.trust_remote_code" in str(rejected(tmp_path, text))


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("seed: -1", "seed"),
        ("seed: 100000000000000000000000000000", "seed"),
        ("evaluate: {threads: 100000000000000000000000000000}", "evaluate.threads"),
        ("gates: {max_accuracy_drop: .nan}", "gates.max_accuracy_drop"),
    ],
)
def test_values_the_schema_took_but_no_run_could_use(tmp_path: Path, line: str, field: str) -> None:
    assert field in str(rejected(tmp_path, line + "\n" + GOOD))


def test_infinite_training_is_refused(tmp_path: Path) -> None:
    error = rejected(tmp_path, GOOD.replace("steps: [dynamic_int8]", "steps: [{finetune: {epochs: .inf}}]"))
    assert "steps[0].finetune.epochs" in str(error) and "finite" in str(error)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("~nosuchuser_compress/x.tsv", "home directory"), ("a" * 300 + ".tsv", "longer than 255 bytes")],
)
def test_paths_no_machine_can_open_name_the_field(path: str, expected: str, tmp_path: Path) -> None:
    from compress.io import user_path

    with pytest.raises(ConfigError, match=expected) as error:
        user_path(path, "data.path", tmp_path)
    assert error.value.where == "data.path" and len(str(error.value)) < 400


def test_a_pypi_source_without_a_package(tmp_path: Path) -> None:
    from compress.errors import ModelError
    from compress.models.source import resolve_source

    with pytest.raises(ModelError, match="names no package") as error:
        resolve_source("pypi:")
    assert error.value.where == "model.source"
