"""Shared fixtures: tiny random models with a real WordPiece tokenizer, and small slices of the bundled data."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)

from compress.data.text_data import TextData
from compress.models.handle import ModelHandle

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = REPO / "evals" / "data" / "sst2"
WIKITEXT = REPO / "evals" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def _read_sst2(name: str, n: int) -> TextData:
    rows = (SST2_DIR / name).read_text(encoding="utf-8").splitlines()[1 : n + 1]
    texts, labels = zip(*(r.rsplit("\t", 1) for r in rows), strict=True)
    return TextData(list(texts), labels=[int(x) for x in labels], label_names=["0", "1"], source=name)


@pytest.fixture(scope="session")
def sst2_dev() -> TextData:
    """First 64 rows of SST-2 dev."""
    return _read_sst2("dev.tsv", 64)


@pytest.fixture(scope="session")
def sst2_train() -> TextData:
    """First 256 rows of SST-2 train."""
    return _read_sst2("train.tsv", 256)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    """A real WordPiece tokenizer over the 2,000 most frequent SST-2 train words."""
    counts: collections.Counter[str] = collections.Counter()
    for line in (SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()[1:20001]:
        counts.update(line.rsplit("\t", 1)[0].split())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [w for w, _ in counts.most_common(2000) if w not in specials]
    vocab_file = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores `vocab_file=` here (every word became [UNK]); `vocab=` loads the file.
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    assert tokenizer.vocab_size == len(vocab)
    return tokenizer


def make_tiny_bert(tokenizer: BertTokenizerFast, layers: int = 2, hidden: int = 32, seed: int = 0) -> ModelHandle:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        num_labels=2,
    )
    model = BertForSequenceClassification(config).eval()
    return ModelHandle(model=model, tokenizer=tokenizer, task="text-classification", label_names=["0", "1"])


@pytest.fixture
def tiny_bert(tiny_tokenizer: BertTokenizerFast) -> ModelHandle:
    """A random 2-layer, 32-wide BERT classifier (2 labels)."""
    return make_tiny_bert(tiny_tokenizer)


def make_tiny_llama(tokenizer: BertTokenizerFast, hidden: int = 32) -> ModelHandle:
    """A random 2-layer Llama causal LM (MLP 2x wide, 4 heads over 2 KV heads) on the tiny tokenizer's vocabulary."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    return ModelHandle(model=LlamaForCausalLM(config).eval(), tokenizer=tokenizer, task="causal-lm")


@pytest.fixture
def tiny_llama(tiny_tokenizer: BertTokenizerFast) -> ModelHandle:
    """A random 2-layer, 32-wide Llama causal LM sharing the tiny tokenizer's vocabulary."""
    return make_tiny_llama(tiny_tokenizer)


@pytest.fixture
def model_dir(tiny_bert: ModelHandle, tmp_path: Path) -> Path:
    """tiny_bert saved as a transformers folder (a recipe's `model.source`)."""
    path = tmp_path / "tiny-model"
    tiny_bert.model.save_pretrained(path)
    tiny_bert.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """The first 48 rows of SST-2 dev, with its header, as one TSV file."""
    lines = (SST2_DIR / "dev.tsv").read_text().splitlines()[:49]
    path = tmp_path / "dev.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def wiki() -> TextData:
    """The first 300 non-blank lines of WikiText-2 test: calibration text for the quantization tests."""
    rows = [line for line in WIKITEXT.read_text(encoding="utf-8").splitlines() if line.strip()][:300]
    return TextData(rows, source="wiki.test.raw")
