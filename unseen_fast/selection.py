"""How many samples each stage adds, and which: the selection step of
Algorithm 1 over importance scores (higher = harder = kept first)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from unseen_fast import ops
from unseen_fast.baselines import ccs_select
from unseen_fast.constants import SELECTIONS
from unseen_fast.errors import UserError

log = logging.getLogger("unseen_fast.selection")


def stage_sizes(n: int, prune_rate: float, stages: int, stage_size: float) -> list[int]:
    """[M_1, ..., M_J] summing to M = floor(N (1 - p)): M_j = stage_size
    (fraction of N or count) for j >= 2 and M_1 the rest; when that leaves
    M_1 <= 0, M is split evenly over the stages (and the log says so)."""
    total = int(np.floor(n * (1 - prune_rate) + 1e-9))
    if total < 1:
        raise UserError(f"prune rate {prune_rate} keeps nothing of {n} samples")
    if stages == 1:
        return [total]
    later = int(np.floor(stage_size * n)) if stage_size < 1 else int(stage_size)
    if later < 1:
        raise UserError(f"stage size {stage_size} of {n} samples is less than one sample")
    first = total - (stages - 1) * later
    if first > 0:
        return [first] + [later] * (stages - 1)
    if total < stages:
        raise UserError(f"{stages} stages cannot split a coreset of {total} samples")
    log.warning("stage size %s leaves no room for stage 1 (M=%d, J=%d): splitting M evenly", stage_size, total, stages)
    base, extra = divmod(total, stages)
    return [base + (1 if j < extra else 0) for j in range(stages)]


def random_scores(seed: int, stage: int, count: int) -> np.ndarray:
    """The Random baseline: uniform scores fixed by (seed, stage)."""
    return np.random.Generator(np.random.PCG64([seed, 2, stage])).random(count).astype(np.float32)


def select(scores: np.ndarray, k: int, labels: np.ndarray, config, *, exclude: np.ndarray | None,
           stage: int) -> np.ndarray:
    """Sorted ids of the ``k`` samples stage ``stage`` adds, by
    ``config.selection`` (global top-k, per-class balanced top-k, or CCS
    strata), never one where ``exclude`` (bool, (N,)) is set.

    Ties between equal scores are broken by a permutation seeded by
    (seed, stage), not by sample id, which would favour the first classes of
    the listing (ties are common under forgetting, random and any saturated
    score).
    """
    n = len(scores)
    perm = np.random.Generator(np.random.PCG64([config.seed, 3, stage])).permutation(n)
    scores_t = torch.from_numpy(np.ascontiguousarray(scores[perm], dtype=np.float32))
    exclude_p = None if exclude is None else torch.from_numpy(np.asarray(exclude, dtype=bool)[perm])
    if config.selection == "ccs":
        rng = np.random.Generator(np.random.PCG64([config.seed, 4, stage]))
        candidates = np.arange(n) if exclude_p is None else np.flatnonzero(~exclude_p.numpy())
        picked = ccs_select(scores_t.numpy(), k, beta=config.baseline.ccs_beta, strata=config.baseline.ccs_strata,
                            rng=rng, candidates=candidates)
        return np.sort(perm[picked])
    if exclude_p is not None:
        scores_t = torch.where(exclude_p, torch.zeros((), dtype=scores_t.dtype), scores_t)
    if bool((scores_t >= 0).all()) and float(scores_t.double().sum()) > 0:  # s / sum(s): the paper's step, order kept
        scores_t = ops.normalize(scores_t)
    balanced = config.selection == "balanced"
    picked = ops.select_topk(scores_t, k, labels=torch.from_numpy(labels[perm]) if balanced else None,
                             balanced=balanced, exclude=exclude_p)
    return np.sort(perm[picked.numpy()])
