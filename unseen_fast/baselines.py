"""The paper's baselines as importance scores and one selection rule.

Every score here is an importance like the score op's (higher = harder =
kept first), so it goes through the same normalization and top-k selection:

- training-dynamics scores of one model trained on all of D (arrays of
  shape (epochs, N) recorded by the trainer, NaN where a sample was not
  seen in an epoch): forgetting, aum, el2n_early, dynunc, tdds;
- moderate: from the penultimate features of that model;
- ccs: a selection strategy over any score (coverage-centric).

Formulas, directions and sources are in docs/BASELINES.md. A sample with no
recorded value at all gets the largest importance (we know nothing about
it, so it is kept rather than silently dropped); importances are shifted
to a minimum of 0 (same order, safe to normalize by the sum).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unseen_fast.constants import DYNAMICS_SCORES, FEATURE_SCORES
from unseen_fast.errors import UserError


@dataclass
class BaselineParams:
    early_epochs: int | None = None  # el2n_early: epochs averaged (default: the first quarter, at least 1)
    window: int | None = None        # dynunc, tdds: sliding window in epochs (default: min(10, max(2, E // 2)))
    tdds_decay: float = 0.9          # tdds: weight decay * (1 - decay)^(age of the window)
    ccs_beta: float = 0.0            # ccs: fraction of the candidates removed as hardest first
    ccs_strata: int = 50             # ccs, mix: equal-width strata of the score range
    mix_alpha: float = 0.5           # mix: share of the budget taken as the hardest, the rest by strata

    def validate(self, recorded_epochs: int | None = None) -> None:
        """``recorded_epochs``: what the dynamics score will read (the
        fitting model's epochs), so a window past them fails before it trains."""
        for name, value in (("early_epochs", self.early_epochs), ("window", self.window)):
            if recorded_epochs is not None and value is not None and value > recorded_epochs:
                raise UserError(f"{name} {value} > the {recorded_epochs} epochs the model trains and records; "
                                f"lower it or raise --epochs")
        if self.early_epochs is not None and self.early_epochs < 1:
            raise UserError(f"early_epochs must be >= 1, got {self.early_epochs}")
        if self.window is not None and self.window < 2:
            raise UserError(f"window must be >= 2 epochs, got {self.window}")
        if not 0 < self.tdds_decay < 1:
            raise UserError(f"tdds_decay must be in (0, 1), got {self.tdds_decay}")
        if not 0 <= self.ccs_beta < 1:
            raise UserError(f"ccs_beta must be in [0, 1), got {self.ccs_beta}")
        if self.ccs_strata < 1:
            raise UserError(f"ccs_strata must be >= 1, got {self.ccs_strata}")
        if not 0 <= self.mix_alpha <= 1:
            raise UserError(f"mix_alpha must be in [0, 1], got {self.mix_alpha}")


def dynamics_importance(name: str, dynamics: dict, params: BaselineParams) -> np.ndarray:
    """(N,) float32 importance of a dynamics score from ``load_dynamics`` arrays."""
    if name == "forgetting":
        value = forgetting(dynamics["correct"])
    elif name == "aum":
        value = -_nanmean(dynamics["logit_margin"])  # low margin = hard
    elif name == "el2n_early":
        epochs = dynamics["el2n"].shape[0]
        early = params.early_epochs or max(1, -(-epochs // 4))
        if early > epochs:
            raise UserError(f"early_epochs {early} > the {epochs} recorded epochs")
        value = _nanmean(dynamics["el2n"][:early])
    elif name == "dynunc":
        value = dynamic_uncertainty(dynamics["p_true"], _window(params, dynamics["p_true"].shape[0]))
    elif name == "tdds":
        if "probs" not in dynamics:
            raise UserError("tdds needs the per-epoch probabilities (TrainConfig.record_probabilities)")
        value = tdds(dynamics["probs"], _window(params, dynamics["probs"].shape[0]), params.tdds_decay)
    else:
        raise UserError(f"unknown dynamics score {name!r}; choose one of {', '.join(DYNAMICS_SCORES)}")
    return _fill_unknown(value)


def forgetting(correct: np.ndarray) -> np.ndarray:
    """Toneva et al.: forgetting events (correct at one presentation, wrong at
    the next) per sample; a sample never classified correctly ranks above
    every count (it is given ``epochs``, more than the at most epochs // 2
    possible events)."""
    epochs, n = correct.shape
    previous = np.full(n, np.nan)
    events = np.zeros(n)
    learned = np.zeros(n, dtype=bool)
    seen = np.zeros(n, dtype=bool)
    for now in np.asarray(correct, dtype=np.float64):
        present = ~np.isnan(now)
        events += (previous == 1) & (now == 0)
        learned |= now == 1
        seen |= present
        previous = np.where(present, now, previous)
    events[~learned] = epochs
    events[~seen] = np.nan
    return events


def dynamic_uncertainty(p_true: np.ndarray, window: int) -> np.ndarray:
    """He et al. (DynUnc): the standard deviation of p_y over each window of
    ``window`` consecutive epochs, averaged over all E - window + 1 windows."""
    p = np.asarray(p_true, dtype=np.float64)
    epochs = p.shape[0]
    if window > epochs:
        raise UserError(f"window {window} > the {epochs} recorded epochs")
    stds = [_nanstd(p[start:start + window]) for start in range(epochs - window + 1)]
    return _nanmean(np.stack(stds))


def tdds(probs: np.ndarray, window: int, decay: float, *, chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Zhang et al. (TDDS), as in its reference code (importance_evaluation.py):
    per epoch t, d_t = sum_c |p_{t+1,c} (log(p_{t+1,c} + 1e-8) - log(p_{t,c} + 1e-8))|;
    per window of ``window`` epochs (window - 1 changes), the L2 norm of
    d - mean(d); the windows k = 0 .. T - window are summed with weight
    decay * (1 - decay)^(T - window - k), so the latest window weighs most.
    ``probs`` (E, N, C) may be a memmap larger than memory: samples are taken
    in chunks of about ``chunk_bytes`` of float64."""
    epochs, n, classes = probs.shape
    if window > epochs:
        raise UserError(f"window {window} > the {epochs} recorded epochs")
    step = max(1, chunk_bytes // (8 * epochs * classes))
    total = np.zeros(n)
    for first in range(0, n, step):
        p = np.asarray(probs[:, first:first + step], dtype=np.float64)
        log_p = np.log(p + 1e-8)
        change = np.abs(p[1:] * (log_p[1:] - log_p[:-1])).sum(2)  # (E - 1, chunk)
        for start in range(epochs - window + 1):
            part = change[start:start + window - 1]
            spread = np.sqrt(((part - part.mean(0)) ** 2).sum(0))
            total[first:first + step] += spread * decay * (1 - decay) ** (epochs - window - start)
    return total


def moderate_importance(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Xia et al. (Moderate-DS): d = ||f - median of its class's features||;
    the importance is highest at the median distance and falls with the rank
    distance from it, so a top-M selection keeps the M samples around the
    median distance (the reference keeps sorted positions
    [(N - M) / 2, (N + M) / 2)). Returns (importance, distance)."""
    features = np.asarray(features, dtype=np.float64)
    distance = np.empty(len(labels))
    for cls in np.unique(labels):
        members = labels == cls
        distance[members] = np.linalg.norm(features[members] - np.median(features[members], axis=0), axis=1)
    rank = np.empty(len(distance))
    rank[np.argsort(distance, kind="stable")] = np.arange(len(distance))
    half = (len(distance) - 1) / 2
    return (half - np.abs(rank - half)).astype(np.float32), distance.astype(np.float32)


def ccs_select(importance: np.ndarray, budget: int, *, beta: float, strata: int, rng: np.random.Generator,
               candidates: np.ndarray | None = None) -> np.ndarray:
    """Zheng et al. (CCS), Algorithm 1: drop the floor(beta * n) hardest
    candidates, split the remaining score range into ``strata`` equal-width
    strata, then visit the strata from the smallest up, taking
    min(|stratum|, budget left // strata left) at random from each.
    Returns the sorted ids of ``budget`` samples."""
    ids = np.arange(len(importance)) if candidates is None else np.asarray(candidates)
    values = np.asarray(importance, dtype=np.float64)[ids]
    hard = int(np.floor(beta * len(ids)))
    if budget > len(ids) - hard:
        raise UserError(f"ccs: budget {budget} exceeds the {len(ids) - hard} candidates left after removing "
                         f"the {hard} hardest (beta {beta})")
    order = np.argsort(-values, kind="stable")
    keep = np.sort(order[hard:])
    ids, values = ids[keep], values[keep]
    low, high = values.min(initial=0.0), values.max(initial=0.0)
    width = (high - low) / strata
    stratum = np.minimum(((values - low) / width).astype(np.int64), strata - 1) if width > 0 else \
        np.zeros(len(values), dtype=np.int64)
    groups = [ids[stratum == s] for s in range(strata) if (stratum == s).any()]
    groups.sort(key=len)
    picked, left = [], budget
    for position, group in enumerate(groups):
        take = min(len(group), left // (len(groups) - position))
        picked.append(rng.choice(group, size=take, replace=False))
        left -= take
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def _window(params: BaselineParams, epochs: int) -> int:
    return params.window or min(10, max(2, epochs // 2))


def _nanmean(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    count = (~np.isnan(values)).sum(0)
    total = np.nansum(values, 0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nanstd(values: np.ndarray) -> np.ndarray:
    mean = _nanmean(values)
    return np.sqrt(_nanmean((values - mean) ** 2))


def _fill_unknown(value: np.ndarray) -> np.ndarray:
    """Missing values -> the largest known one; shifted to a minimum of 0, so
    normalization by the sum keeps the order (a negative sum would flip it)."""
    value = np.asarray(value, dtype=np.float64)
    missing = ~np.isfinite(value)
    if missing.all():
        return np.zeros(len(value), dtype=np.float32)
    if missing.any():
        value = np.where(missing, value[~missing].max(), value)
    return (value - value.min()).astype(np.float32)
