"""Distillation data (augmented copies of the train texts, unlabeled text) and frozen student embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import make_context

from compress.data.text_data import TextData
from compress.errors import ConfigError
from compress.steps.distill.augment import augment_texts, nearest_neighbours, replaceable_words
from compress.steps.distill.step import Distill
from compress.train.batches import IGNORE_LABEL


def test_only_whole_word_alphabetic_tokens_are_replaceable(tiny_tokenizer) -> None:
    known = next(t for t in tiny_tokenizer.get_vocab() if t.isalpha() and len(t) > 3)
    words = replaceable_words([f"{known} , zzqqxxyy 's {known.upper()}"], tiny_tokenizer)
    # Punctuation, unknown words (split into pieces or [UNK]) and case-changed words stay as they are.
    assert words == {known: tiny_tokenizer.convert_tokens_to_ids(known)}


def test_neighbours_are_the_most_similar_embeddings_and_never_the_word_itself(tiny_tokenizer) -> None:
    vocab = tiny_tokenizer.get_vocab()
    a, b, c = sorted(t for t in vocab if t.isalpha() and len(t) > 2)[:3]
    embeddings = torch.randn(len(vocab), 8, generator=torch.Generator().manual_seed(0))
    embeddings[vocab[b]] = embeddings[vocab[a]] * 2 + 0.01  # same direction: cosine ~1
    embeddings[vocab[c]] = -embeddings[vocab[a]]  # opposite: the least similar token
    table = nearest_neighbours({a: vocab[a]}, tiny_tokenizer, embeddings, k=5)
    assert table[a][0] == b
    assert a not in table[a] and c not in table[a]
    assert len(table[a]) == 5


def test_augment_texts_swaps_words_for_neighbours_deterministically() -> None:
    neighbours = {"good": ["great", "bad"], "film": ["movie"]}
    texts = ["a good film", "nothing to swap here"]
    out = augment_texts(texts, neighbours, copies=3, replace_prob=1.0, seed=0)
    # Every replaceable word is swapped at probability 1; a text with none yields no (identical) copies.
    assert len(out) == 3
    assert all(t.split()[0] == "a" and t.split()[1] in ("great", "bad") and t.split()[2] == "movie" for t in out)
    assert augment_texts(texts, neighbours, 3, 0.5, seed=1) == augment_texts(texts, neighbours, 3, 0.5, seed=1)
    assert augment_texts(texts * 50, neighbours, 2, 0.5, seed=1) != augment_texts(texts * 50, neighbours, 2, 0.5, 2)


def test_distill_adds_augmented_and_unlabeled_texts_without_labels(
    tiny_bert, sst2_train, sst2_dev, tmp_path: Path
) -> None:
    (tmp_path / "extra.txt").write_text("an extra sentence\nanother one\n")
    step = Distill(augment={"copies": 2, "replace_prob": 0.5}, unlabeled="extra.txt")
    ctx = make_context(sst2_train, sst2_dev, tmp_path / "work")
    ctx.base_dir = tmp_path  # `unlabeled` is relative to the recipe's folder
    data = step._training_data(ctx, tiny_bert.model, tiny_bert.tokenizer, seed=0)

    n = len(sst2_train)
    assert data.texts[:n] == sst2_train.texts and data.labels[:n] == sst2_train.labels
    assert data.texts[n : n + 2] == ["an extra sentence", "another one"]
    augmented = data.texts[n + 2 :]
    assert n < len(augmented) <= 2 * n
    assert set(data.labels[n:]) == {IGNORE_LABEL}


def test_augmenting_a_sentence_pair_task_is_a_config_error(tiny_bert, sst2_dev, tmp_path: Path) -> None:
    pairs = TextData(["a good film"], pairs=["it was good"], labels=[1])
    step = Distill(augment={"copies": 1})
    with pytest.raises(ConfigError, match="sentence-pair") as info:
        step._training_data(make_context(pairs, sst2_dev, tmp_path), tiny_bert.model, tiny_bert.tokenizer, 0)
    assert info.value.where == "steps.distill.augment"


def test_frozen_embeddings_stay_as_built_while_the_layers_train(tiny_bert, sst2_train, sst2_dev, tmp_path) -> None:
    step = Distill(student={"layers": [1]}, freeze_embeddings=True, max_steps=3, learning_rate=1e-2, progress=False)
    student = step.apply(tiny_bert, make_context(sst2_train.head(96), sst2_dev, tmp_path)).model
    teacher = tiny_bert.model
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)
