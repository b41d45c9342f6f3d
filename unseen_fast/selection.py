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


def stage_sizes(n: int, prune_rate: float, stages: int, stage_size: float, *, quiet: bool = False) -> list[int]:
    """[M_1, ..., M_J] summing to M = floor(N (1 - p)): M_j = stage_size
    (fraction of N or count) for j >= 2 and M_1 the rest; when that leaves
    M_1 <= 0, M is split evenly over the stages (and the log says so unless
    ``quiet``: a check of the arguments before the run)."""
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
    if not quiet:
        log.warning("stage size %s leaves no room for stage 1 (M=%d, J=%d): splitting M evenly", stage_size, total,
                    stages)
    base, extra = divmod(total, stages)
    return [base + (1 if j < extra else 0) for j in range(stages)]


def random_scores(seed: int, stage: int, count: int) -> np.ndarray:
    """The Random baseline: uniform scores fixed by (seed, stage)."""
    return np.random.Generator(np.random.PCG64([seed, 2, stage])).random(count).astype(np.float32)


def select(scores: np.ndarray, k: int, labels: np.ndarray, config, *, exclude: np.ndarray | None,
           stage: int) -> np.ndarray:
    """Sorted ids of the ``k`` samples stage ``stage`` adds, never one where
    ``exclude`` (bool, (N,)) is set, by ``config.selection``:

    - ``global``: the k hardest (the paper); ``balanced``: the hardest per
      class, quotas in proportion to class sizes;
    - ``easy``: the easiest per class (what small budgets favour, Sorscher
      et al. 2022);
    - ``ccs``: CCS strata after dropping the hardest ``ccs_beta`` (Zheng et
      al. 2023);
    - ``mix``: a share ``mix_alpha`` of k as the hardest per class, the rest
      by CCS strata over the samples left;
    - ``random``: uniform over the eligible samples, ``scores`` unused (what
      ``--selection auto`` falls back to when no strategy beats it).

    Ties between equal scores are broken by a permutation seeded by
    (seed, stage), not by sample id, which would favour the first classes of
    the listing (ties are common under forgetting, random and any saturated
    score).
    """
    n = len(scores)
    perm = np.random.Generator(np.random.PCG64([config.seed, 3, stage])).permutation(n)
    scores_p = np.ascontiguousarray(scores[perm], dtype=np.float32)
    labels_p = labels[perm]
    exclude_p = np.zeros(n, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool)[perm]
    rng = np.random.Generator(np.random.PCG64([config.seed, 4, stage]))
    params = config.baseline
    if config.selection == "auto":
        raise ValueError("selection 'auto' is resolved to a strategy before select() (auto_selection.py)")
    if config.selection == "random":  # drawn per sample id, as --score random draws them: the same coreset
        scores_p = random_scores(config.seed, stage, n)[perm]
    if config.selection == "ccs":
        picked = ccs_select(scores_p, k, beta=params.ccs_beta, strata=params.ccs_strata, rng=rng,
                            candidates=np.flatnonzero(~exclude_p))
    elif config.selection == "easy":
        picked = _top(scores_p.max(initial=0.0) - scores_p, k, labels_p, exclude_p, balanced=True)
    elif config.selection == "mix":
        hard = _top(scores_p, int(round(params.mix_alpha * k)), labels_p, exclude_p, balanced=True)
        taken = exclude_p.copy()
        taken[hard] = True
        rest = ccs_select(scores_p, k - len(hard), beta=0.0, strata=params.ccs_strata, rng=rng,
                          candidates=np.flatnonzero(~taken))
        picked = np.concatenate([hard, rest])
    else:
        picked = _top(scores_p, k, labels_p, exclude_p, balanced=config.selection == "balanced")
    return np.sort(perm[picked])


def _top(scores: np.ndarray, k: int, labels: np.ndarray, exclude: np.ndarray, *, balanced: bool) -> np.ndarray:
    """Ids of the k highest ``scores`` (per class in proportion when
    ``balanced``) outside ``exclude``, through the ops: normalize (the
    paper's s / sum s, order kept) and the radix top-k."""
    scores_t = torch.where(torch.from_numpy(exclude), torch.zeros(()), torch.from_numpy(scores))
    if bool((scores_t >= 0).all()) and float(scores_t.double().sum()) > 0:
        scores_t = ops.normalize(scores_t)
    picked = ops.select_topk(scores_t, k, labels=torch.from_numpy(labels) if balanced else None,
                             balanced=balanced, exclude=torch.from_numpy(exclude))
    return picked.numpy()
