"""Labels read as the user meant them: classes come from the train split (or `data.label_names`, or the model's own
head), labels that cannot be classes are refused, a single file is split before anything trains on it, and the
messages' fixes are true for `compress run` and `compress eval` alike."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from compress.config import DataSpec, EvalSpec, ModelSpec
from compress.data.holdout import hold_out
from compress.data.load import load_text_data
from compress.data.provider import DataProvider
from compress.errors import CompressError, ConfigError, DataError, ModelError
from compress.models.handle import ModelHandle
from compress.models.load import load_model
from compress.recipe import Recipe
from compress.steps.base import StageContext
from compress.steps.finetune import Finetune
from compress.tasks.text_classification import TextClassification

TASK = "text-classification"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def csv_rows(rows: list[tuple[str, object]]) -> str:
    return "text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)


def provider(spec: DataSpec, base_dir: Path) -> DataProvider:
    return DataProvider(spec, TASK, base_dir, seed=0)


def data_error(load) -> DataError:
    with pytest.raises(DataError) as info:
        load()
    assert info.value.fix, "every data error says how to fix it"
    return info.value


def save_classifier(handle: ModelHandle, folder: Path, id2label: dict[int, str] | None = None) -> Path:
    if id2label is not None:
        handle.model.config.id2label = id2label
        handle.model.config.label2id = {name: i for i, name in id2label.items()}
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return folder


# ---- 1. classes come from the train split ---------------------------------------------------------------


def test_an_evaluation_label_the_train_split_lacks_names_label_file_and_row(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", csv_rows([("a", "pos"), ("b", "neg"), ("c", "pos")]))
    dev = write(tmp_path / "dev.csv", csv_rows([("d", "neg"), ("e", "pos"), ("f", "neutral"), ("g", "neutral")]))
    spec = DataSpec({"train": "train.csv", "validation": "dev.csv"})
    error = data_error(lambda: provider(spec, tmp_path).eval)
    assert error.where == "data.path.validation"
    assert "'neutral' in rows 3, 4" in error.message and str(dev) in error.message
    assert str(tmp_path / "train.csv") in error.message and "['neg', 'pos']" in error.message
    assert "data.label_names" in error.fix and "train split" in error.fix

    # Listing the classes is the way to evaluate on a class the train split lacks: the model gets 3 outputs.
    named = provider(spec.model_copy(update={"label_names": ["neg", "neutral", "pos"]}), tmp_path)
    assert named.eval.labels == [0, 2, 1, 1] and named.train.labels == [2, 0, 2]


def test_an_evaluation_split_with_fewer_classes_keeps_the_train_ids(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", csv_rows([("a", "pos"), ("b", "neg"), ("c", "neutral")]))
    write(tmp_path / "dev.csv", csv_rows([("d", "pos"), ("e", "pos")]))
    data = provider(DataSpec({"train": "train.csv", "validation": "dev.csv"}), tmp_path)
    assert data.eval.label_names == ["neg", "neutral", "pos"]  # not ["pos"]: a 1-output model, every id 0
    assert data.eval.labels == [2, 2]
    assert data.train.label_names == data.eval.label_names and data.train.labels == [2, 0, 1]


def test_integer_labels_outside_the_train_split_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", csv_rows([("a", 0), ("b", 1), ("c", 1)]))
    write(tmp_path / "dev.csv", csv_rows([("d", 1), ("e", 2)]))
    error = data_error(lambda: provider(DataSpec({"train": "train.csv", "validation": "dev.csv"}), tmp_path).eval)
    assert "'2' in row 2" in error.message and error.where == "data.path.validation"

    write(tmp_path / "dev.csv", csv_rows([("d", 1), ("e", 1)]))
    data = provider(DataSpec({"train": "train.csv", "validation": "dev.csv"}), tmp_path).eval
    assert data.label_names == ["0", "1"] and data.labels == [1, 1]


def test_without_a_train_split_the_evaluated_file_names_its_classes(tmp_path: Path) -> None:
    write(tmp_path / "dev.csv", csv_rows([("d", "pos"), ("e", "neg")]))
    data = provider(DataSpec({"validation": "dev.csv"}), tmp_path).eval
    assert data.label_names == ["neg", "pos"] and data.labels == [1, 0]


def test_saved_dataset_dict_splits_keep_to_the_train_split(tmp_path: Path) -> None:
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["neg", "pos"]}),
            "validation": datasets.Dataset.from_dict({"text": ["c"], "label": ["pos"]}),
            "test": datasets.Dataset.from_dict({"text": ["d"], "label": ["mixed"]}),
        }
    )
    splits.save_to_disk(tmp_path / "saved")
    assert provider(DataSpec("saved"), tmp_path).eval.labels == [1]
    error = data_error(lambda: provider(DataSpec("saved", split="test"), tmp_path).eval)
    assert "'mixed' in row 1" in error.message and "train split" in error.message


# ---- 2. labels that cannot be classes -------------------------------------------------------------------


def test_fractional_numbers_are_a_continuous_target(tmp_path: Path) -> None:
    path = write(
        tmp_path / "scores.csv", csv_rows([(f"t{i}", f"{v:.2f}") for i, v in enumerate(np.linspace(0.1, 1, 10))])
    )
    error = data_error(lambda: load_text_data(DataSpec(str(path)), "validation"))
    assert error.where == "data.label" and str(path) in error.message
    assert "not whole" in error.message and "row 1: '0.10'" in error.message
    assert "regression" in error.fix and "data.label_names" in error.fix

    floats = tmp_path / "floats.jsonl"
    floats.write_text("".join(json.dumps({"text": f"t{i}", "label": i / 4}) + "\n" for i in range(4)))
    assert "not whole" in data_error(lambda: load_text_data(DataSpec(str(floats)), "validation")).message

    # Whole numbers written as floats are class ids; listing the values as names makes them classes.
    whole = write(tmp_path / "whole.csv", csv_rows([("a", "1.00"), ("b", "0.0")]))
    assert load_text_data(DataSpec(str(whole)), "validation").labels == [1, 0]
    named = load_text_data(DataSpec(str(path), label_names=[f"{v:.2f}" for v in np.linspace(0.1, 1, 10)]), "v")
    assert named.labels == list(range(10))


def test_nan_and_missing_labels_are_not_classes(tmp_path: Path) -> None:
    for cell in ("NaN", "nan", ""):
        path = write(tmp_path / "nan.csv", csv_rows([("a", 1), ("b", cell), ("c", 0)]))
        error = data_error(lambda path=path: load_text_data(DataSpec(str(path)), "validation"))
        assert "no label in 1 row(s): row 2" in error.message and error.where == "data.label"
    jsonl = tmp_path / "nan.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n')
    assert "row 2" in data_error(lambda: load_text_data(DataSpec(str(jsonl)), "validation")).message


def test_words_among_class_ids_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.csv", csv_rows([("a", 1), ("b", 0), ("c", "NA"), ("d", 1)]))
    error = data_error(lambda: load_text_data(DataSpec(str(path)), "validation"))
    assert "mixes class ids and words" in error.message and "row 3: 'NA'" in error.message
    assert error.where == "data.label"


def test_more_classes_than_the_rows_support_are_refused(tmp_path: Path) -> None:
    free_text = write(tmp_path / "free.csv", csv_rows([(f"t{i}", f"word{i % 40}") for i in range(60)]))
    error = data_error(lambda: load_text_data(DataSpec(str(free_text)), "validation"))
    assert "40 classes for 60 labelled rows" in error.message and error.where == "data.label"
    assert "data.label_names" in error.fix and "regression" in error.fix

    # 25 classes of 4 rows each are real classes.
    many = write(tmp_path / "many.csv", csv_rows([(f"t{i}", f"c{i % 25:02d}") for i in range(100)]))
    assert len(load_text_data(DataSpec(str(many)), "validation").label_names) == 25

    # A quarter of 24 classes seen once: refused, although 2 rows per class exist on average.
    thin = [(f"t{i}", f"c{i % 17:02d}") for i in range(68)] + [(f"s{i}", f"rare{i}") for i in range(7)]
    thin_path = write(tmp_path / "thin.csv", csv_rows(thin))
    assert "7 of them" in data_error(lambda: load_text_data(DataSpec(str(thin_path)), "validation")).message

    # An id far above the rows (a user id in the label column) is refused without making a billion names.
    ids = write(tmp_path / "ids.csv", csv_rows([("a", 0), ("b", 1), ("c", 10**9)]))
    assert "1000000001 classes" in data_error(lambda: load_text_data(DataSpec(str(ids)), "validation")).message

    names = [f"word{i}" for i in range(40)]
    assert len(load_text_data(DataSpec(str(free_text), label_names=names), "validation")) == 60


# ---- 3. one file, split before anything trains on it ----------------------------------------------------


def balanced_file(tmp_path: Path, rows: int = 50) -> Path:
    return write(tmp_path / "all.csv", csv_rows([(f"row{i}", ["neg", "pos"][i % 5 == 0]) for i in range(rows)]))


def test_training_on_a_single_file_without_split_ratio_is_refused(tmp_path: Path, tiny_bert: ModelHandle) -> None:
    balanced_file(tmp_path)
    data = provider(DataSpec("all.csv"), tmp_path)
    assert len(data.eval) == 50  # evaluating alone is fine
    assert len(data.calibration(10)) == 10
    ctx = StageContext(
        train_data=lambda: data.train,  # what the runner gives training steps
        eval_data=lambda: data.eval,
        calibration_data=data.calibration,
        score=lambda _handle: {},
        eval_spec=EvalSpec(),
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
    )
    with pytest.raises(DataError) as info:
        Finetune(epochs=1, progress=False).apply(tiny_bert, ctx)
    error = info.value
    assert error.where == "data.path" and str(tmp_path / "all.csv") in error.message
    assert "data.split_ratio: 0.2" in error.fix and "train:" in error.fix and "validation:" in error.fix


def test_split_ratio_holds_out_a_stratified_seeded_part(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    balanced_file(tmp_path)
    spec = DataSpec("all.csv", split_ratio=0.2)
    data = provider(spec, tmp_path)
    train, evaluation = data.train, data.eval
    assert (len(train), len(evaluation)) == (40, 10)
    assert not set(train.texts) & set(evaluation.texts) and len(set(train.texts) | set(evaluation.texts)) == 50
    assert Counter(evaluation.labels) == {0: 8, 1: 2} and Counter(train.labels) == {0: 32, 1: 8}  # 4:1 both
    assert train.label_names == evaluation.label_names == ["neg", "pos"]
    assert "holds out 10 of 50 rows to evaluate and leaves 40 to train on" in capsys.readouterr().err
    assert data.calibration(100).texts == train.texts  # calibration reads the training part too

    again = provider(spec, tmp_path)
    assert again.eval.texts == evaluation.texts  # deterministic
    other = provider(spec.model_copy(update={"seed": 1}), tmp_path)
    assert other.eval.texts != evaluation.texts and len(other.eval) == 10

    limited = provider(spec.model_copy(update={"train_limit": 5, "limit": 3}), tmp_path)
    assert set(limited.train.texts) <= set(train.texts) and len(limited.train) == 5
    assert limited.eval.texts == evaluation.texts[:3]


def test_split_ratio_keeps_every_class_in_training(tmp_path: Path) -> None:
    rows = [(f"r{i}", "common") for i in range(8)] + [("lonely", "rare"), ("pair1", "two"), ("pair2", "two")]
    write(tmp_path / "all.csv", csv_rows(rows))
    data = provider(DataSpec("all.csv", split_ratio=0.5), tmp_path)
    assert "lonely" in data.train.texts and "lonely" not in data.eval.texts
    assert set(data.eval.labels) <= set(data.train.labels)
    held = hold_out(["a"] * 3 + ["b"] * 7, 10, 0.3, seed=0)
    assert len(held.eval) == 3 and sorted(held.train + held.eval) == list(range(10))


def test_split_ratio_too_small_a_file_and_misuse(tmp_path: Path) -> None:
    write(tmp_path / "one.csv", csv_rows([("a", "pos"), ("b", "neg")]))
    error = data_error(lambda: provider(DataSpec("one.csv", split_ratio=0.5), tmp_path).eval)
    assert error.where == "data.split_ratio" and "0 to evaluate" in error.message

    base = {"model": {"source": "m"}, "steps": ["dynamic_int8"]}
    mapping = {"path": {"train": "t.csv", "validation": "v.csv"}, "split_ratio": 0.2}
    with pytest.raises(ConfigError, match="split_ratio splits a single file"):
        Recipe.from_dict({**base, "data": mapping})
    with pytest.raises(ConfigError, match="must differ"):
        Recipe.from_dict({**base, "data": {"path": "a.csv", "split_ratio": 0.2, "train_split": "validation"}})
    with pytest.raises(ConfigError, match="split_ratio"):
        Recipe.from_dict({**base, "data": {"path": "a.csv", "split_ratio": 1.0}})

    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}) for split in ("train", "validation")}
    ).save_to_disk(tmp_path / "saved")
    error = data_error(lambda: provider(DataSpec("saved", split_ratio=0.5), tmp_path).eval)
    assert error.where == "data.split_ratio" and "already has separate splits" in error.message


def test_the_same_rows_under_two_names_are_refused_for_training(tmp_path: Path) -> None:
    write(tmp_path / "all.csv", csv_rows([("a", "pos"), ("b", "neg")]))
    same = provider(DataSpec({"train": "all.csv", "validation": "./all.csv"}), tmp_path)
    error = data_error(lambda: same.train)
    assert error.where == "data.path.train" and "same file" in error.message
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(tmp_path / "one")
    assert "serves every split" in data_error(lambda: provider(DataSpec("one"), tmp_path).train).message
    named_twice = provider(DataSpec({"validation": "all.csv"}, train_split="validation"), tmp_path)
    assert data_error(lambda: named_twice.train).where == "data.train_split"


# ---- 4. a model that already has a classification head --------------------------------------------------


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, [*args, "--quiet", "--batch-size", "2"], catch_exceptions=True)


def test_eval_on_some_of_a_fine_tuned_models_labels(tmp_path: Path, tiny_bert: ModelHandle) -> None:
    model = save_classifier(tiny_bert, tmp_path / "m", {0: "negative", 1: "positive"})
    texts = ["a gripping film", "a joy", "moving and funny", "not bad at all"]
    write(tmp_path / "pos.csv", csv_rows([(text, "positive") for text in texts]))
    result = invoke("eval", str(model), "--data", str(tmp_path / "pos.csv"), "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.exception
    (stage,) = json.loads((tmp_path / "out" / "report.json").read_text())["stages"]
    with torch.no_grad():
        logits = tiny_bert.model.eval()(**tiny_bert.tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = float((logits.argmax(-1) == 1).float().mean())  # every row is the model's id 1, "positive"
    assert math.isclose(stage["metrics"]["accuracy"], expected)

    # Labels the head does not have: refused, naming the flag that fixes it.
    write(tmp_path / "short.csv", csv_rows([(text, "pos") for text in texts]))
    result = invoke("eval", str(model), "--data", str(tmp_path / "short.csv"), "--output", str(tmp_path / "o2"))
    assert isinstance(result.exception, DataError) and "--label-names" in result.exception.fix
    assert "'pos'" in result.exception.message and "positive" in result.exception.message
    result = invoke(
        "eval", str(model), "--data", str(tmp_path / "short.csv"), "--label-names", "neg,pos",
        "--output", str(tmp_path / "o3"),
    )  # fmt: skip
    assert result.exit_code == 0, result.exception


def test_eval_with_integer_labels_on_an_unnamed_head(tmp_path: Path, tiny_bert: ModelHandle) -> None:
    model = save_classifier(tiny_bert, tmp_path / "m")  # LABEL_0, LABEL_1: the head names nothing
    write(tmp_path / "zeros.csv", csv_rows([("a joy", 0), ("dull", 0)]))
    result = invoke("eval", str(model), "--data", str(tmp_path / "zeros.csv"), "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.exception  # one class in the file, two outputs in the head

    write(tmp_path / "three.csv", csv_rows([("a joy", 0), ("dull", 2), ("fine", 1)]))
    result = invoke("eval", str(model), "--data", str(tmp_path / "three.csv"), "--output", str(tmp_path / "o2"))
    assert isinstance(result.exception, DataError) and "2 labels" in result.exception.message


def test_a_head_refuses_data_it_does_not_fit(tmp_path: Path, tiny_bert: ModelHandle) -> None:
    model = str(save_classifier(tiny_bert, tmp_path / "m", {0: "negative", 1: "positive"}))
    task = TextClassification()
    assert task.head_label_names(ModelSpec(model)) == ["negative", "positive"]
    assert task.model_kwargs(ModelSpec(model), ["negative", "positive"]) == {}
    assert task.model_kwargs(ModelSpec(model), ["0"]) == {}  # integer ids within the head
    assert load_model(ModelSpec(model), ["0"]).model.config.num_labels == 2
    with pytest.raises(DataError, match="another order") as info:
        task.model_kwargs(ModelSpec(model), ["positive", "negative"])
    assert info.value.where == "data.label_names" and "[negative, positive]" in info.value.fix
    with pytest.raises(DataError, match="has 3"):
        task.model_kwargs(ModelSpec(model), ["a", "b", "c"])
    with pytest.raises(ModelError, match=r"model\.num_labels is 3"):
        task.model_kwargs(ModelSpec(model, num_labels=3), None)
    # A base checkpoint has no head: it is sized from the data.
    tiny_bert.model.bert.save_pretrained(tmp_path / "base")
    assert task.model_kwargs(ModelSpec(str(tmp_path / "base")), ["a", "b", "c"])["num_labels"] == 3


# ---- 5. headerless files: messages true, fixes for run and eval -----------------------------------------


def test_headerless_file_messages_and_eval_flags(tmp_path: Path, tiny_bert: ModelHandle) -> None:
    path = write(tmp_path / "plain.tsv", "great film\t1\nawful\t0\n")
    error = data_error(lambda: load_text_data(DataSpec(str(path)), "validation"))
    assert "no header row was detected" in error.message and "header detected" not in error.message
    assert "data.header: true (compress eval: --header)" in error.message
    assert "data.columns (compress eval: --columns)" in error.fix and "data.text (compress eval: --text)" in error.fix

    headed = write(tmp_path / "headed.tsv", "review\tscore\ngreat film\tgood\nawful\tbad\n")
    error = data_error(lambda: load_text_data(DataSpec(str(headed)), "validation"))
    assert "detected as a header" in error.message and "data.header: false (compress eval: --no-header)" in (
        error.message
    )

    model = save_classifier(tiny_bert, tmp_path / "m")
    result = invoke("eval", str(model), "--data", str(path), "--output", str(tmp_path / "o1"))
    assert isinstance(result.exception, CompressError) and "--columns" in result.exception.fix
    result = invoke(
        "eval", str(model), "--data", str(path), "--no-header", "--columns", "text,label",
        "--output", str(tmp_path / "o2"),
    )  # fmt: skip
    assert result.exit_code == 0, result.exception
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["stages"][0]["eval_samples"] == 2


def test_a_recipe_that_trains_on_one_file_needs_split_ratio(tmp_path: Path, tiny_bert: ModelHandle) -> None:
    model = save_classifier(tiny_bert, tmp_path / "m")
    balanced_file(tmp_path, rows=20)
    steps = [Finetune(epochs=1, batch_size=8, progress=False)]
    evaluate = EvalSpec(batch_sizes=[4], warmup_batches=0)
    recipe = Recipe(ModelSpec(str(model)), DataSpec("all.csv"), steps, evaluate=evaluate, base_dir=tmp_path)
    with pytest.raises(DataError, match="serves every split") as info:
        recipe.run(tmp_path / "run", progress=False)
    assert "data.split_ratio: 0.2" in info.value.fix

    split = DataSpec("all.csv", split_ratio=0.25)
    result = Recipe(ModelSpec(str(model)), split, steps, evaluate=evaluate, base_dir=tmp_path).run(
        tmp_path / "run2", progress=False
    )
    assert [stage.eval_samples for stage in result.report.stages] == [5, 5]  # the held-out quarter, every stage
