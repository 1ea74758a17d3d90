"""TinyBERT-style data augmentation: copies of the training texts with words swapped for their neighbours.

A small student needs far more examples of the teacher's behaviour than the labelled set holds. Each copy
replaces some whole words by one of their nearest neighbours in the teacher's own input-embedding space (TinyBERT
uses GloVe and a masked LM; the teacher's embeddings need nothing extra). The teacher labels the copies itself, so a
swap that flips the sentiment ("good" → "bad") is still a correct example of what the student must imitate.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedTokenizerBase


def replaceable_words(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Whitespace-separated words of `texts` that are one whole-word, alphabetic token: word → token id."""
    words: dict[str, int] = {}
    for word in {w for text in texts for w in text.split()}:
        if not word.isalpha():
            continue
        pieces = tokenizer.tokenize(word)
        if len(pieces) == 1 and pieces[0] == word:
            words[word] = tokenizer.convert_tokens_to_ids(pieces[0])
    return words


def _candidate_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[int]]:
    """Vocabulary entries that can stand in for a word: alphabetic whole words, no specials, no suffix pieces."""
    special = set(tokenizer.all_special_tokens)
    tokens = [t for t in tokenizer.get_vocab() if t.isalpha() and len(t) > 1 and t not in special]
    tokens.sort()  # vocabulary dicts have no guaranteed order; neighbours must not depend on it
    return tokens, tokenizer.convert_tokens_to_ids(tokens)


@torch.no_grad()
def nearest_neighbours(
    words: dict[str, int],
    tokenizer: PreTrainedTokenizerBase,
    embeddings: torch.Tensor,
    k: int,
    chunk: int = 2048,
) -> dict[str, list[str]]:
    """For each word, the `k` candidate tokens whose input embeddings have the highest cosine similarity."""
    tokens, ids = _candidate_tokens(tokenizer)
    table = torch.nn.functional.normalize(embeddings.float()[torch.tensor(ids)], dim=-1)
    names = sorted(words)
    k = min(k, len(tokens) - 1)
    result: dict[str, list[str]] = {}
    for start in range(0, len(names), chunk):
        batch = names[start : start + chunk]
        query = torch.nn.functional.normalize(embeddings.float()[torch.tensor([words[w] for w in batch])], dim=-1)
        top = (query @ table.T).topk(k + 1, dim=-1).indices  # +1: the word is usually its own best match
        for word, row in zip(batch, top.tolist(), strict=True):
            result[word] = [tokens[i] for i in row if tokens[i] != word][:k]
    return result


def augment_texts(
    texts: list[str], neighbours: dict[str, list[str]], copies: int, replace_prob: float, seed: int
) -> list[str]:
    """`copies` variants of every text, each word replaced with probability `replace_prob` where it has
    neighbours. Variants identical to their text are dropped (they teach nothing new)."""
    rng = random.Random(seed)
    out: list[str] = []
    for text in texts:
        words = text.split()
        for _ in range(copies):
            variant = [
                rng.choice(neighbours[w]) if w in neighbours and rng.random() < replace_prob else w for w in words
            ]
            if variant != words:
                out.append(" ".join(variant))
    return out
