"""Splits: a stratified validation split and the pseudo-novel subclass holdout of seed 001."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..taxonomy import Taxonomy


def holdout_subclasses(taxonomy: Taxonomy, fraction: float, seed: int) -> list[int]:
    """Pick ``fraction`` of each superclass's subclasses (at least one, never all) as pseudo-novel.

    A superclass with a single subclass keeps it: holding it out would leave nothing to learn from.
    """
    if fraction <= 0:
        return []
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for k in range(taxonomy.n_super):
        subs = taxonomy.subs_of(k)
        if len(subs) < 2:
            continue
        n = min(len(subs) - 1, max(1, round(fraction * len(subs))))
        held += sorted(int(j) for j in rng.choice(subs, size=n, replace=False))
    return sorted(held)


def holdout_folds(taxonomy: Taxonomy, fraction: float, seed: int, folds: int) -> list[list[int]]:
    """``folds`` held-out sets of ``fraction`` of each superclass's subclasses, as disjoint as they can be.

    Fold 0 is :func:`holdout_subclasses` (so one fold is the single calibration model of before); the next
    folds walk on through a seeded order of each superclass's other subclasses, so with ``folds`` =
    1/``fraction`` every subclass is held out once (the last window wraps round to the first subclasses).
    The walk is periodic, so asking for more folds than there are distinct held-out sets (a superclass of two
    subclasses repeats after two) would train copies of earlier folds and count their holdouts twice in the
    mean: the list stops at the first repeat, and can be shorter than ``folds``.
    """
    first = holdout_subclasses(taxonomy, fraction, seed)
    if not first or folds <= 1:
        return [first] if first else []
    rng = np.random.default_rng([seed, 1])
    held: list[set[int]] = [set(first)] + [set() for _ in range(folds - 1)]
    chosen = set(first)
    for k in range(taxonomy.n_super):
        subs = [int(j) for j in taxonomy.subs_of(k)]
        window = [j for j in subs if j in chosen]
        if not window:
            continue  # a superclass with one subclass is never held out
        rest = [j for j in subs if j not in chosen]
        rng.shuffle(rest)
        order = window + rest
        for f in range(1, folds):
            held[f].update(order[(f * len(window) + i) % len(order)] for i in range(len(window)))
    distinct: list[list[int]] = []
    for h in held:
        if sorted(h) in distinct:
            break  # periodic from fold 0: every later fold repeats one before it
        distinct.append(sorted(h))
    return distinct


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val) with ``fraction`` of every label in val; a label with one item stays in train."""
    if fraction <= 0:
        return list(range(len(labels))), []
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_label[int(y)].append(i)
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_label):
        idx = np.array(by_label[y])
        rng.shuffle(idx)
        n_val = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        n_val = min(n_val, len(idx) - 1)
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)
