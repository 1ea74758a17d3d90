"""Pickle weights (pytorch_model.bin): benign ones load with a warning preferring safetensors; a malicious one is
refused by the weights-only loader without running, as a ModelError naming the folder and the fix."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

import compress as cx
from compress.config import ModelSpec
from compress.errors import ModelError
from compress.models.load import load_model

REPO = Path(__file__).resolve().parents[1]


class RunsAShellCommand:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def pickle_folder(tiny_bert, folder: Path) -> Path:
    """The tiny model as a pickle-only folder: config, tokenizer and pytorch_model.bin, no safetensors."""
    tiny_bert.model.config.save_pretrained(folder)
    tiny_bert.tokenizer.save_pretrained(folder)
    # transformers 5 writes safetensors even with `safe_serialization=False`; a .bin is what it wrote before:
    # the state dict through torch.save.
    torch.save(tiny_bert.model.state_dict(), folder / "pytorch_model.bin")
    assert not list(folder.glob("*.safetensors"))
    return folder


def test_pickle_weights_load_with_a_warning_preferring_safetensors(tiny_bert, tmp_path, caplog) -> None:
    folder = pickle_folder(tiny_bert, tmp_path / "bin-model")
    with caplog.at_level(logging.WARNING, logger="compress"):
        handle = load_model(ModelSpec(str(folder)), label_names=["0", "1"])
    for name, tensor in tiny_bert.model.state_dict().items():
        assert torch.equal(handle.model.state_dict()[name], tensor), name  # really these weights
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pytorch_model.bin" in w and "prefer safetensors" in w and str(folder) in w for w in warnings)


def test_safetensors_weights_load_without_the_warning(tiny_bert, tmp_path, caplog) -> None:
    tiny_bert.model.save_pretrained(tmp_path / "st")
    tiny_bert.tokenizer.save_pretrained(tmp_path / "st")
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_model(ModelSpec(str(tmp_path / "st")), label_names=["0", "1"])
    assert not [r for r in caplog.records if "pickle" in r.getMessage()]


@pytest.mark.parametrize("container", ["raw pickle", "torch zip"])
def test_a_malicious_pickle_is_refused_without_running(tiny_tokenizer, tmp_path, container: str) -> None:
    folder = tmp_path / "evil-model"
    BertConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
               intermediate_size=64, num_labels=2).save_pretrained(folder)  # fmt: skip
    tiny_tokenizer.save_pretrained(folder)
    marker = tmp_path / "code-ran"
    payload = {"bert.embeddings.word_embeddings.weight": RunsAShellCommand(marker)}
    if container == "raw pickle":  # the legacy (pre-zip) .bin layout is a bare pickle
        with (folder / "pytorch_model.bin").open("wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    else:
        torch.save(payload, folder / "pytorch_model.bin")
    assert not marker.exists()
    with pytest.raises(ModelError) as error:
        load_model(ModelSpec(str(folder)), label_names=["0", "1"])
    message = str(error.value)
    assert str(folder) in message and "pytorch_model.bin" in message and "posix.system" in message
    assert "safetensors" in error.value.fix and "untrusted" in error.value.fix
    assert "weights_only=False" not in message  # torch's advice to retry unsafely is not passed on
    assert not marker.exists()  # the payload never ran


def test_a_run_on_a_malicious_model_fails_cleanly_and_leaves_no_folder(tiny_tokenizer, tmp_path) -> None:
    folder = tmp_path / "evil-model"
    BertConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
               intermediate_size=64, num_labels=2).save_pretrained(folder)  # fmt: skip
    tiny_tokenizer.save_pretrained(folder)
    marker = tmp_path / "code-ran"
    torch.save({"x": RunsAShellCommand(marker)}, folder / "pytorch_model.bin")
    data = tmp_path / "dev.tsv"
    data.write_text("\n".join((REPO / "evals/data/sst2/dev.tsv").read_text().splitlines()[:17]) + "\n")
    recipe = cx.Recipe(
        model=cx.ModelSpec(str(folder)),
        data=cx.DataSpec(path=str(data), text="sentence", label_names=["0", "1"]),
        evaluate=cx.EvalSpec(batch_sizes=[4], warmup_batches=0, threads=1),
    )
    with pytest.raises(ModelError, match="weights-only loader refused"):
        recipe.run(tmp_path / "run", progress=False)
    assert not marker.exists() and not (tmp_path / "run").exists()
