"""Loading user datasets: every source, column mapping, label encoding, sampling and error message."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from compress.config import DataSpec
from compress.data.load import load_text_data
from compress.data.text_data import TextData
from compress.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SST2_DEV = REPO / "evals" / "data" / "sst2" / "dev.tsv"
WIKITEXT = REPO / "evals" / "data" / "wikitext-2-raw" / "wiki.test.raw"

REVIEWS = [("a gripping , moving film", "pos"), ("dull and far too long", "neg"), ("a joy", "pos")]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def data_error(load: Callable[[], TextData]) -> DataError:
    with pytest.raises(DataError) as info:
        load()
    assert info.value.fix, "every data error says how to fix it"
    return info.value


# ---- sources ---------------------------------------------------------------------------------------------


def test_bundled_sst2_dev_loads_completely(sst2_dev: TextData) -> None:
    data = load_text_data(DataSpec(str(SST2_DEV), text="sentence"), "validation")
    assert len(data) == 872
    assert sum(data.labels) == 444
    assert data.label_names == ["0", "1"]
    assert data.pairs is None
    assert data.texts[:64] == sst2_dev.texts  # same parse as the test fixture (GLUE tsv, no quoting)
    assert data.labels[:64] == sst2_dev.labels
    assert data.source == str(SST2_DEV) and data.split == "validation"


def test_tsv_with_header_and_custom_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.tsv", 'review\tscore\n"quoted" start\t1\nplain\t0\n007\t1\n')
    data = load_text_data(DataSpec(str(path), text="review", label="score"), "validation")
    assert data.texts == ['"quoted" start', "plain", "007"]  # no quote handling, numbers stay text
    assert data.labels == [1, 0, 1]
    assert data.label_names == ["0", "1"]


def test_headerless_tsv_with_string_labels_and_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.tsv", "".join(f"{text}\t{label}\n" for text, label in REVIEWS))
    data = load_text_data(DataSpec(str(path), columns=["text", "label"]), "validation")
    assert data.texts == [text for text, _ in REVIEWS]  # first row detected as data, not a header
    assert data.label_names == ["neg", "pos"]  # sorted distinct values
    assert data.labels == [1, 0, 1]

    named = load_text_data(DataSpec(str(path), columns=["text", "label"], label_names=["pos", "neg"]), "x")
    assert named.label_names == ["pos", "neg"]
    assert named.labels == [0, 1, 0]
    assert len(named) == 3


def test_header_detection_with_label_names_and_explicit_header(tmp_path: Path) -> None:
    rows = "".join(f"{text}\t{label}\n" for text, label in REVIEWS)
    headerless = write(tmp_path / "headerless.tsv", rows)
    data = load_text_data(DataSpec(str(headerless), text="column1", label="column2", label_names=["neg", "pos"]), "x")
    assert len(data) == 3 and data.labels == [1, 0, 1]

    renamed = write(tmp_path / "renamed.tsv", "sentence\tsentiment\n" + rows)
    data = load_text_data(DataSpec(str(renamed), header=True, columns=["text", "label"]), "x")
    assert len(data) == 3 and data.label_names == ["neg", "pos"]

    forced = load_text_data(DataSpec(str(headerless), header=False, columns=["text", "label"]), "x")
    assert forced.texts == data.texts


def test_string_labels_get_the_same_ids_in_every_split(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\nc,neutral\n")
    dev = write(tmp_path / "dev.csv", "text,label\nd,neutral\ne,pos\nf,neg\n")
    spec = DataSpec({"train": str(train), "validation": str(dev)})
    train_data = load_text_data(spec, "train")
    dev_data = load_text_data(spec, "validation")
    assert train_data.label_names == dev_data.label_names == ["neg", "neutral", "pos"]
    assert train_data.labels == [2, 0, 1] and dev_data.labels == [1, 2, 0]


def test_csv_saved_by_excel_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\r\ngood,1\r\nbad,0\r\n".encode("utf-8-sig"))
    data = load_text_data(DataSpec(str(path)), "validation")
    assert data.texts == ["good", "bad"] and data.labels == [1, 0]


def test_csv_with_quoted_commas(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", 'text,label\n"slow, but worth it",1\nNA,0\n"null",0\n')
    data = load_text_data(DataSpec(str(path)), "validation")
    assert data.texts == ["slow, but worth it", "NA", "null"]  # NA-like words are text, not missing
    assert data.labels == [1, 0, 0]


def test_jsonl_with_bool_and_float_labels(tmp_path: Path) -> None:
    bools = write_jsonl(tmp_path / "bools.jsonl", [{"text": "yes", "label": True}, {"text": "no", "label": False}])
    data = load_text_data(DataSpec(str(bools)), "validation")
    assert data.labels == [1, 0] and data.label_names == ["0", "1"]

    floats = write_jsonl(tmp_path / "floats.jsonl", [{"text": "a", "label": 2.0}, {"text": "b", "label": 0.0}])
    data = load_text_data(DataSpec(str(floats)), "validation")
    assert data.labels == [2, 0] and data.label_names == ["0", "1", "2"]

    named = load_text_data(DataSpec(str(floats), label_names=["neg", "neutral", "pos"]), "validation")
    assert named.labels == [2, 0] and named.label_names == ["neg", "neutral", "pos"]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict({"sentence": ["good", "bad"], "gold": ["positive", "negative"]}).to_parquet(path)
    data = load_text_data(DataSpec(str(path), text="sentence", label="gold"), "test")
    assert data.texts == ["good", "bad"]
    assert data.label_names == ["negative", "positive"] and data.labels == [1, 0]


def test_saved_dataset_dict_with_class_labels(tmp_path: Path) -> None:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=features),
            "validation": datasets.Dataset.from_dict({"text": ["d"], "label": [0]}, features=features),
        }
    )
    splits.save_to_disk(tmp_path / "saved")
    spec = DataSpec("saved")
    data = load_text_data(spec, "train", base_dir=tmp_path)
    assert data.texts == ["a", "b", "c"] and data.labels == [0, 1, 1]
    assert data.label_names == ["negative", "positive"]
    dev = load_text_data(spec, "validation", base_dir=tmp_path)
    assert dev.label_names == ["negative", "positive"]  # names come from the feature, not the rows

    error = data_error(lambda: load_text_data(spec, "test", base_dir=tmp_path))
    assert "'test'" in error.message and "['train', 'validation']" in error.message
    assert str(tmp_path / "saved") in error.message and error.where == "data.path"


def test_saved_single_dataset_serves_every_split(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}).save_to_disk(tmp_path / "one")
    for split in ("train", "validation"):
        data = load_text_data(DataSpec(str(tmp_path / "one")), split)
        assert data.labels == [1, 0] and data.split == split


def test_single_file_serves_every_split_and_relative_paths_use_base_dir(tmp_path: Path) -> None:
    write(tmp_path / "all.csv", "text,label\na,0\nb,1\n")
    for split in ("train", "validation"):
        assert load_text_data(DataSpec("all.csv"), split, base_dir=tmp_path).texts == ["a", "b"]


def test_dict_path_picks_the_split_file(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "text,label\nt1,0\nt2,1\n")
    write(tmp_path / "dev.csv", "text,label\nd1,1\n")
    spec = DataSpec({"train": "train.csv", "validation": "dev.csv"})
    assert load_text_data(spec, "train", base_dir=tmp_path).texts == ["t1", "t2"]
    assert load_text_data(spec, "validation", base_dir=tmp_path).texts == ["d1"]

    error = data_error(lambda: load_text_data(spec, "test", base_dir=tmp_path))
    assert "'test'" in error.message and "['train', 'validation']" in error.message
    assert error.where == "data.path"


def test_sentence_pair_columns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"premise": "a man sleeps", "hypothesis": "a person rests", "label": "entailment"},
            {"premise": "a dog runs", "hypothesis": "a cat sits", "label": "contradiction"},
        ],
    )
    spec = DataSpec(str(path), text="premise", text_pair="hypothesis", label_names=["entailment", "contradiction"])
    data = load_text_data(spec, "validation")
    assert data.texts == ["a man sleeps", "a dog runs"]
    assert data.pairs == ["a person rests", "a cat sits"]
    assert data.labels == [0, 1]


def test_limit_takes_first_rows_and_seeded_sample_is_reproducible(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(50)))
    spec = DataSpec(str(path))
    first = load_text_data(spec, "train", limit=5)
    assert first.texts == [f"row {i}" for i in range(5)] and first.labels == [0, 1, 2, 0, 1]

    sample = load_text_data(spec, "train", limit=10, sample_seed=7)
    assert sample.texts == load_text_data(spec, "train", limit=10, sample_seed=7).texts
    assert sample.texts != load_text_data(spec, "train", limit=10, sample_seed=8).texts
    assert len(set(sample.texts)) == 10 and sample.texts != first.head(10).texts
    assert all(label == int(text.split()[1]) % 3 for text, label in zip(sample.texts, sample.labels, strict=True))
    assert sample.label_names == ["0", "1", "2"]
    assert len(load_text_data(spec, "train", limit=500, sample_seed=1)) == 50


def test_txt_lines_keep_blank_lines_for_causal_lm(tmp_path: Path) -> None:
    path = write(tmp_path / "corpus.txt", " \n = Title = \n \nFirst line .\n\nlast")
    data = load_text_data(DataSpec(str(path)), "test", task="causal-lm")
    assert data.texts == ["", " = Title = \n", "", "First line .\n", "", "last"]
    assert data.labels is None and data.label_names is None


def test_wikitext_raw_matches_the_hub_layout() -> None:
    data = load_text_data(DataSpec(str(WIKITEXT)), "test", task="causal-lm")
    assert len(data) == 4358  # rows of wikitext-2-raw-v1 test on the hub
    assert data.texts[:2] == ["", " = Robert Boulter = \n"]


def test_causal_lm_reads_only_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", [{"content": "one"}, {"content": "two"}])
    data = load_text_data(DataSpec(str(path), text="content"), "train", task="causal-lm")
    assert data.texts == ["one", "two"] and data.labels is None


# ---- errors ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = data_error(lambda: load_text_data(DataSpec("nope/dev.tsv"), "validation", base_dir=tmp_path))
    assert str(tmp_path / "nope" / "dev.tsv") in error.message and error.where == "data.path"

    write(tmp_path / "train.csv", "text,label\na,1\n")
    spec = DataSpec({"train": "train.csv", "validation": "missing.csv"})
    error = data_error(lambda: load_text_data(spec, "validation", base_dir=tmp_path, where="teacher_data"))
    assert "missing.csv" in error.message and error.where == "teacher_data.path.validation"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xlsx", "not really excel")
    error = data_error(lambda: load_text_data(DataSpec(str(path)), "validation"))
    assert str(path) in error.message and ".xlsx" in error.message and ".csv" in error.fix


def test_missing_column_lists_existing_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "sentence,label\na,1\n")
    error = data_error(lambda: load_text_data(DataSpec(str(path)), "validation"))
    assert error.where == "data.text"
    assert str(path) in error.message and "'text'" in error.message and "['sentence', 'label']" in error.message

    pairs = DataSpec(str(path), text="sentence", text_pair="hypothesis")
    assert data_error(lambda: load_text_data(pairs, "validation")).where == "data.text_pair"
    assert data_error(lambda: load_text_data(DataSpec(str(path), text="sentence", label="y"), "v")).where == (
        "data.label"
    )


def test_headerless_file_without_names_lists_positional_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "data.tsv", "great film\t1\nawful\t0\n")
    error = data_error(lambda: load_text_data(DataSpec(str(path)), "validation"))
    assert "['column1', 'column2']" in error.message and "no header row" in error.message
    assert "data.columns" in error.fix


def test_wrong_number_of_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "data.tsv", "great film\t1\n")
    error = data_error(lambda: load_text_data(DataSpec(str(path), columns=["text", "label", "id"]), "v"))
    assert str(path) in error.message and error.where == "data.columns"


def test_empty_files(tmp_path: Path) -> None:
    for name in ("empty.csv", "empty.jsonl", "empty.txt"):
        path = write(tmp_path / name, "")
        error = data_error(lambda path=path: load_text_data(DataSpec(str(path)), "validation"))
        assert str(path) in error.message and "empty" in error.message and error.where == "data.path"
    header_only = write(tmp_path / "header.csv", "text,label\n")
    error = data_error(lambda: load_text_data(DataSpec(str(header_only)), "validation"))
    assert str(header_only) in error.message and "no data rows" in error.message
    empty_list = write(tmp_path / "empty.json", "[]")
    error = data_error(lambda: load_text_data(DataSpec(str(empty_list)), "validation"))
    assert str(empty_list) in error.message and "no rows" in error.message


def test_unreadable_files(tmp_path: Path) -> None:
    bad_bytes = tmp_path / "latin1.csv"
    bad_bytes.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    bad_parquet = write(tmp_path / "broken.parquet", "this is not parquet")
    bad_json = write(tmp_path / "broken.jsonl", '{"text": "a", "label": 1}\n{"text": \n')
    ragged = write(tmp_path / "ragged.csv", "text,label\na,1\nb,1,extra,cells\n")
    for path in (bad_bytes, bad_parquet, bad_json, ragged):
        error = data_error(lambda path=path: load_text_data(DataSpec(str(path)), "validation"))
        assert str(path) in error.message and "cannot read" in error.message and error.where == "data.path"


def test_directory_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    error = data_error(lambda: load_text_data(DataSpec(str(tmp_path / "folder")), "validation"))
    assert "save_to_disk" in error.message and str(tmp_path / "folder") in error.message


def test_label_not_in_label_names(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,label\na,pos\nb,neutral\nc,neg\nd,mixed\n")
    spec = DataSpec(str(path), label_names=["neg", "pos"])
    error = data_error(lambda: load_text_data(spec, "validation"))
    assert error.where == "data.label"
    assert str(path) in error.message and "column 'label'" in error.message
    assert "'mixed', 'neutral'" in error.message and "['neg', 'pos']" in error.message
    assert "data.label_names" in error.fix


def test_integer_label_outside_label_names(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,label\na,0\nb,3\n")
    error = data_error(lambda: load_text_data(DataSpec(str(path), label_names=["neg", "pos"]), "validation"))
    assert "row 2: 3" in error.message and str(path) in error.message


def test_unlabelled_rows_name_the_row(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "data.csv", "text,label\na,1\nb,\nc,0\n")
    error = data_error(lambda: load_text_data(DataSpec(str(csv_path)), "validation"))
    assert "row 2" in error.message and str(csv_path) in error.message and error.where == "data.label"

    json_path = write_jsonl(tmp_path / "data.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": None}])
    assert "row 2" in data_error(lambda: load_text_data(DataSpec(str(json_path)), "validation")).message
    assert load_text_data(DataSpec(str(json_path)), "validation", limit=1).labels == [0]  # only used rows count

    glue_test = write(tmp_path / "test.tsv", "sentence\tlabel\na\t-1\n")
    error = data_error(lambda: load_text_data(DataSpec(str(glue_test), text="sentence"), "test"))
    assert "unlabelled" in error.message and "row 1: -1" in error.message

    no_text = write_jsonl(tmp_path / "no_text.jsonl", [{"text": None, "label": 0}])
    error = data_error(lambda: load_text_data(DataSpec(str(no_text)), "validation"))
    assert "row 1" in error.message and error.where == "data.text"


def test_classification_needs_a_label_column() -> None:
    error = data_error(lambda: load_text_data(DataSpec(str(SST2_DEV), text="sentence", label=None), "validation"))
    assert error.where == "data.label"


def test_hub_name_offline_says_not_found_locally_and_hub_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # offline mode makes the hub fail at once instead of after retries; the code path is the real one
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    error = data_error(lambda: load_text_data(DataSpec("glue", name="sst2"), "validation", base_dir=tmp_path))
    assert "'glue'" in error.message and "not a local file" in error.message and "unreachable" in error.message
    assert str(tmp_path / "glue") in error.message and error.where == "data.path"
