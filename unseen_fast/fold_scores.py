"""Stage-1 scores of several models made comparable, and the per-fold report.

Under UNSEEN a sample of fold k is scored by every fold model except model
k. If the raw scores are averaged, one model that is more (or less)
confident than the others shifts a whole fold up or down, and selection
follows fold membership instead of difficulty. So each model's scores are
first mapped to a common scale over the samples that model scored:

- ``rank``: the score's mid-rank among them divided by their count, in (0, 1);
- ``zscore``: (score - their mean) / their std; the mean over models is then
  passed through the normal CDF so importances stay positive (order kept);
- ``none``: the paper's plain mean of raw scores.

With one model (fitting, dynamics and feature scores) nothing changes.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata

from unseen_fast.constants import SCORE_NORMS
from unseen_fast.errors import UserError



def combine_scores(per_model: np.ndarray, use: np.ndarray, norm: str) -> np.ndarray:
    """(N,) float32 importance: the mean over the models that scored each sample.

    Parameters
    ----------
    per_model : (M, N) float array, model m's score of sample i (read only where ``use``)
    use : (M, N) bool, which model scored which sample
    norm : one of SCORE_NORMS (see the module docstring); higher stays harder
    """
    if norm not in SCORE_NORMS:
        raise UserError(f"unknown score normalization {norm!r}; choose one of {', '.join(SCORE_NORMS)}")
    if per_model.shape != use.shape:
        raise UserError(f"per-model scores {per_model.shape} and their mask {use.shape} differ in shape")
    values = np.array(per_model, dtype=np.float64)
    comparable = norm != "none" and len(values) > 1
    if comparable:
        for row, mask in zip(values, use):
            scored = row[mask]
            if norm == "rank":
                row[mask] = (rankdata(scored, nan_policy="omit") - 0.5) / max(len(scored), 1)
            else:
                std = float(np.nanstd(scored))
                row[mask] = (scored - np.nanmean(scored)) / (std if std > 0 else 1.0)
    counts = use.sum(0)
    mean = np.where(use, values, 0.0).sum(0) / np.maximum(counts, 1)
    if comparable and norm == "zscore":
        mean = ndtr(mean)
    return mean.astype(np.float32)


def model_report(name: str, trained_on: int, correct: np.ndarray, scored_samples: str) -> dict:
    """One model's accuracy on the samples it scored (``correct``: 1/0 per
    scored sample, NaN where it did not score)."""
    scored = correct[np.isfinite(correct)]
    return dict(model=name, trained_on=int(trained_on), scored=int(len(scored)), scored_samples=scored_samples,
                accuracy=float(scored.astype(np.float64).mean()) if len(scored) else float("nan"))


def kept_share_per_fold(fold: np.ndarray, kept: np.ndarray, folds: int) -> list[float]:
    """Share of each fold's samples in ``kept`` (a boolean mask over samples)."""
    return [float(kept[fold == k].mean()) if (fold == k).any() else float("nan") for k in range(folds)]
