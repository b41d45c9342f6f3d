"""Stratified splits of sample ids (validation holdouts, K folds), fixed by a seed."""
from __future__ import annotations

import numpy as np

from unseen_fast.errors import UserError


def stratified_holdout(ids, labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout): ``fraction`` of each class's ids held out (rounded,
    at least one where a class has two or more), both sorted."""
    if not 0 <= fraction < 1:
        raise UserError(f"holdout fraction must be in [0, 1), got {fraction}")
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels)[ids]
    rng = np.random.Generator(np.random.PCG64(seed))
    held = []
    for cls in np.unique(labels):
        members = rng.permutation(ids[labels == cls])
        count = int(round(fraction * len(members)))
        if fraction > 0 and count == 0 and len(members) > 1:
            count = 1
        held.append(members[:count])
    holdout = np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)
    return np.setdiff1d(ids, holdout), holdout


def fold_assignment(labels: np.ndarray, folds: int, split: str, seed: int) -> np.ndarray:
    """(N,) fold of every sample: a random permutation dealt into K nearly
    equal folds, or the same within each class (stratified)."""
    n = len(labels)
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    fold = np.empty(n, dtype=np.int64)
    if split == "random":
        fold[rng.permutation(n)] = np.arange(n) % folds
        return fold
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        fold[members] = (np.arange(len(members)) + offset) % folds  # rotate so small classes spread
        offset += len(members)
    return fold
