"""Stratified splits of sample ids (validation holdouts, K folds), fixed by a seed."""
from __future__ import annotations

import numpy as np


def stratified_holdout(ids, labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, holdout): ``fraction`` of each class's ids held out (rounded,
    at least one where a class has two or more), both sorted."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
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
