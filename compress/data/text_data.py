"""A split of the user's data in canonical form: texts, optional pair texts, integer labels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass
class TextData:
    texts: list[str]
    pairs: list[str] | None = None
    labels: list[int] | None = None
    label_names: list[str] | None = None
    source: str = ""
    split: str = ""
    note: str = ""  # how the rows were chosen from the source, for the log (e.g. a held-out part); not hashed

    def __post_init__(self) -> None:
        for name, column in (("pairs", self.pairs), ("labels", self.labels)):
            if column is not None and len(column) != len(self.texts):
                raise ValueError(f"{name} has {len(column)} rows, texts {len(self.texts)}")

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> TextData:
        if n is None or n >= len(self):
            return self
        return TextData(
            texts=self.texts[:n],
            pairs=self.pairs[:n] if self.pairs is not None else None,
            labels=self.labels[:n] if self.labels is not None else None,
            label_names=self.label_names,
            source=self.source,
            split=self.split,
            note=self.note,
        )

    def fingerprint(self) -> str:
        """Content hash: a stage cached on other data is never reused."""
        digest = hashlib.sha256()
        payload = {"pairs": self.pairs, "labels": self.labels, "label_names": self.label_names}
        digest.update(json.dumps(payload, sort_keys=True).encode())
        for text in self.texts:
            digest.update(text.encode())
            digest.update(b"\0")
        return digest.hexdigest()
