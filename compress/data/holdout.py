"""Split one file into training and evaluation rows (`data.split_ratio`): seeded, deterministic, stratified.

Which rows are held out depends only on the labels, the ratio and `data.seed`, so every split a run reads
(evaluation, train, calibration) computes the same partition on its own. Stratified by label: each class gives
about `ratio` of its rows, allotted by largest remainder so the total is `round(ratio * rows)`, and every class keeps
at least one training row, so the evaluation part never holds a class that training lacks. Without labels (causal
LM) the rows are shuffled and cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeldOut:
    """0-based row positions of each part, in file order."""

    train: list[int]
    eval: list[int]


def hold_out(keys: Sequence[str | None] | None, total: int, ratio: float, seed: int) -> HeldOut:
    """`keys`: each row's class (None: missing label), or None to split without stratifying."""
    groups: dict[str | None, list[int]] = {}
    for row in range(total):
        groups.setdefault(keys[row] if keys is not None else "", []).append(row)
    order = sorted(groups, key=lambda key: (key is None, key or ""))  # independent of which class comes first
    target = min(max(round(ratio * total), 1), total - 1)
    # A class keeps at least one training row; unstratified, the one group may give all but one.
    room = {key: len(groups[key]) - 1 for key in order}
    quota = {key: ratio * len(groups[key]) for key in order}
    take = {key: min(math.floor(quota[key]), room[key]) for key in order}
    # Largest remainder first; sorted() is stable, so ties keep the key order.
    by_remainder = sorted(order, key=lambda key: quota[key] - math.floor(quota[key]), reverse=True)
    missing = target - sum(take.values())
    while missing > 0 and any(take[key] < room[key] for key in order):
        for key in by_remainder:
            if missing > 0 and take[key] < room[key]:
                take[key] += 1
                missing -= 1
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for key in order:
        rows = groups[key]
        held.update(rows[i] for i in rng.permutation(len(rows))[: take[key]])
    return HeldOut(train=[row for row in range(total) if row not in held], eval=sorted(held))
