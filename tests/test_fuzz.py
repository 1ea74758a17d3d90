"""Fuzzing: thousands of generated recipes and dozens of mutated datasets. Every outcome is a valid recipe or a
`CompressError` whose message names where the problem is — never another exception — in bounded time.

`HYPOTHESIS_PROFILE=nightly pytest tests/test_fuzz.py` runs 20x more recipe cases.
"""

from __future__ import annotations

import copy
import datetime
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.config import DataSpec
from compress.data.load import load_text_data
from compress.errors import CompressError
from compress.recipe import Recipe

settings.register_profile(
    "default", max_examples=1_000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "nightly", max_examples=20_000, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

VALID: dict[str, Any] = {
    "name": "fuzz",
    "model": {"source": "some/model", "task": "text-classification"},
    "data": {"path": "dev.tsv", "text": "sentence", "limit": 10},
    "evaluate": {"batch_sizes": [1, 32], "threads": 2},
    "seed": 0,
    "steps": [
        {"finetune": {"label": "teacher", "epochs": 1, "learning_rate": 1e-4}},
        {"distill": {"student": {"num_layers": 2, "hidden_size": 64, "num_heads": 2}, "epochs": 1}},
        {"truncate": {"max_length": "auto"}},
        {"magnitude": {"source": "teacher", "pattern": "2:4"}},
        "dynamic_int8",
    ],
    "exports": [{"onnx": {"quantize": "dynamic"}}, "openvino"],
    "gates": {"max_accuracy_drop": 0.02},
}

# Values a hostile or careless user puts anywhere.
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "auto", "2:4", "../../etc/passwd", "pypi:", "\x00", "~nosuchuser/x.tsv", "a" * 300]),
    st.dates(min_value=datetime.date(2000, 1, 1), max_value=datetime.date(2030, 1, 1)),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into the recipe (dict keys and list indices), the root excluded."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*prefix, index))
            found += _paths(value, (*prefix, index))
    return found


PATHS = _paths(VALID)


def _mutate(raw: dict[str, Any], rng: random.Random, value: Any) -> None:
    path = rng.choice(PATHS)
    parent: Any = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    action = rng.choice(["replace", "delete", "rename", "insert", "wrap"])
    if isinstance(parent, dict):
        if action == "delete":
            del parent[last]
        elif action == "rename":
            parent[f"{last}x" if isinstance(last, str) else value if isinstance(value, str) else "k"] = parent.pop(last)
        elif action == "insert":
            parent[str(value)[:20] or "extra"] = value
        elif action == "wrap":
            parent[last] = [parent[last]]
        else:
            parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "insert":
        parent.insert(last, value)
    else:
        parent[last] = value


def _outcome(raw: Any) -> None:
    started = time.perf_counter()
    try:
        Recipe.from_dict(raw, base_dir=Path("/nonexistent-fuzz-dir"))
    except CompressError as error:
        text = str(error)
        assert error.where or ":" in text, text  # says where
        assert len(text) < 5_000, len(text)  # echoes are clipped
    assert time.perf_counter() - started < 5


@given(st.randoms(use_true_random=False), st.lists(ODD_VALUES, min_size=1, max_size=4))
def test_mutated_recipes_are_valid_or_config_errors(rng: random.Random, values: list[Any]) -> None:
    raw = copy.deepcopy(VALID)
    for value in values:
        try:
            _mutate(raw, rng, value)
        except (KeyError, IndexError, TypeError, AttributeError):
            break  # the path disappeared under an earlier mutation
    _outcome(raw)


@given(ODD_VALUES)
def test_any_value_as_a_whole_section(value: Any) -> None:
    for section in ("model", "data", "evaluate", "steps", "exports", "gates", "seed", "task"):
        _outcome({**copy.deepcopy(VALID), section: value})


# --- datasets ---------------------------------------------------------------------------------------------

GOOD_TSV = "sentence\tlabel\na gripping film\t1\ndull and long\t0\na joy\t1\nnot good\t0\n"


def _dataset_mutations() -> list[tuple[str, bytes]]:
    rng = random.Random(0)
    base = GOOD_TSV.encode()
    cases = [
        ("empty", b""),
        ("header only", b"sentence\tlabel\n"),
        ("binary", bytes(rng.randrange(256) for _ in range(300))),
        ("latin-1", "sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1")),
        ("utf-16", GOOD_TSV.encode("utf-16")),
        ("bom", b"\xef\xbb\xbf" + base),
        ("crlf", base.replace(b"\n", b"\r\n")),
        ("missing label", b"sentence\tlabel\na film\t\nanother\t1\n"),
        ("nan label", b"sentence\tlabel\na film\tNaN\nanother\t1\n"),
        ("float labels", b"sentence\tlabel\na film\t0.25\nanother\t0.75\n"),
        ("negative label", b"sentence\tlabel\na film\t-1\nanother\t1\n"),
        ("extra column", b"sentence\tlabel\na film\t1\textra\nanother\t0\n"),
        ("short row", b"sentence\tlabel\na film\nanother\t0\n"),
        ("wrong header", b"text\ttarget\na film\t1\n"),
        ("no header", b"a film\t1\nanother\t0\n"),
        ("null bytes", base.replace(b"film", b"fi\x00lm")),
        ("only newlines", b"\n\n\n"),
        ("tabs only", b"\t\t\n\t\t\n"),
        ("huge cell", b"sentence\tlabel\n" + b"w " * 400_000 + b"\t1\n"),
        ("quoted csv style", b'sentence\tlabel\n"he said ""hi"""\t1\n"plain"\t0\n'),
        ("unbalanced quote", b'sentence\tlabel\n"he said\t1\nok\t0\n'),
        ("string labels", b"sentence\tlabel\na film\tpos\nanother\tneg\n"),
        ("many classes", b"sentence\tlabel\n" + b"".join(f"t{i}\t{i}\n".encode() for i in range(50))),
    ]
    for index in range(12):  # random byte flips and truncations of the good file
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append((f"flipped bytes {index}", bytes(data[: rng.randint(1, len(data))])))
    return cases


@pytest.mark.parametrize(("name", "content"), _dataset_mutations(), ids=[n for n, _ in _dataset_mutations()])
def test_mutated_datasets_load_or_say_what_is_wrong(name: str, content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_bytes(content)
    started = time.perf_counter()
    try:
        data = load_text_data(DataSpec(str(path), text="sentence"), "validation")
    except CompressError as error:
        assert error.where and ("data" in error.where or str(path) in str(error)), str(error)
    else:
        assert len(data.texts) == len(data.labels) > 0
    assert time.perf_counter() - started < 30
