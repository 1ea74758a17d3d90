"""TSV and CSV cells read as the user meant them: CSV-quoted TSV (pandas, Python's csv) parsed, GLUE-style raw
TSV kept raw, `data.quoting` overriding the detection, and cells far above the csv module's field limit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from compress.config import DataSpec
from compress.data.delimited import csv_quoted
from compress.data.load import load_text_data

ROWS = [('he said "wow" twice', "1"), ("plain text", "0"), ('"quoted" at the start', "1"), ("tab-free", "0")]


def test_tsv_written_by_the_csv_module_is_unquoted(tmp_path: Path) -> None:
    path = tmp_path / "quoted.tsv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows(ROWS)
    assert '"he said ""wow"" twice"' in path.read_text(encoding="utf-8")  # what the file holds
    data = load_text_data(DataSpec(str(path), text="sentence"), "validation")
    assert data.texts == [text for text, _ in ROWS]
    raw = load_text_data(DataSpec(str(path), text="sentence", quoting="none"), "validation")
    assert raw.texts[0] == '"he said ""wow"" twice"'


def test_glue_style_raw_tsv_stays_raw(tmp_path: Path) -> None:
    path = tmp_path / "glue.tsv"
    path.write_text('sentence\tlabel\n" the film \'s tone is off\t0\na " great " ride\t1\nfine\t1\n', encoding="utf-8")
    data = load_text_data(DataSpec(str(path), text="sentence"), "validation")
    assert data.texts == ["\" the film 's tone is off", 'a " great " ride', "fine"]
    forced = load_text_data(DataSpec(str(tmp_path / "glue.tsv"), text="sentence", quoting="none"), "validation")
    assert forced.texts == data.texts


@pytest.mark.parametrize(
    ("cells", "quoted"),
    [
        (['"a ""b"" c"', "x"], True),
        (['"whole"', "y"], True),
        (['" starts only', "z"], False),
        (['"a "b" c"'], False),  # an inner quote not doubled: not CSV
        (["no quotes at all"], False),
    ],
)
def test_csv_quoting_detection(cells: list[str], quoted: bool) -> None:
    assert csv_quoted(cells) is quoted


def test_a_megabyte_cell_loads(tmp_path: Path) -> None:
    long = "word " * 250_000
    path = tmp_path / "long.tsv"
    path.write_text(f"sentence\tlabel\n{long}\t1\nshort\t0\n", encoding="utf-8")
    data = load_text_data(DataSpec(str(path), text="sentence"), "validation")
    assert len(data.texts[0]) == len(long) and data.texts[1] == "short"
