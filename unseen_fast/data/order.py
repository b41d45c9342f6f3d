"""Which sample ids a loader visits, in which order, on which rank.

Every backend takes its order from here, so exactly-once delivery,
reproducible permutations and sharding are defined (and tested) once.
"""
from __future__ import annotations

import numpy as np

from unseen_fast.data.errors import DataError


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): given values, else torch.distributed's when it is
    initialized, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = (rank or 0), (world_size or 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def as_id_array(ids, num_samples: int) -> np.ndarray:
    """Validate requested sample ids: 1-D, integer, in range, no repeats."""
    ids = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
    if ids.ndim != 1:
        raise DataError(f"sample ids must be 1-D, got shape {tuple(ids.shape)}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"sample ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size:
        bad = ids[(ids < 0) | (ids >= num_samples)]
        if bad.size:
            raise DataError(f"sample id {int(bad[0])} is out of range for a dataset of {num_samples} samples")
        if np.unique(ids).size != ids.size:
            values, counts = np.unique(ids, return_counts=True)
            raise DataError(f"sample id {int(values[counts > 1][0])} is requested more than once")
    return ids


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    return rng.permutation(n)


def shard_order(ids: np.ndarray, *, train: bool, seed: int, epoch: int, rank: int,
                world_size: int) -> np.ndarray:
    """The ids this rank visits, in visiting order.

    Evaluation (``train=False``): ``ids`` in the given order, split into
    contiguous nearly-equal blocks, one per rank: every id exactly once over
    all ranks, no padding. Training: the ids permuted by (seed, epoch), then
    dealt round-robin so every rank gets the same number of samples (the
    lockstep DDP needs); when world_size does not divide len(ids), the first
    ids of the permutation are repeated to pad, as DistributedSampler does.
    """
    n = len(ids)
    if not train:
        start, stop = rank * n // world_size, (rank + 1) * n // world_size
        return ids[start:stop]
    order = ids[epoch_permutation(n, seed, epoch)]
    per_rank = -(-n // world_size)
    if per_rank * world_size > n and n:
        order = np.concatenate([order, np.resize(order, per_rank * world_size - n)])
    return order[rank::world_size]


def batch_slices(num: int, batch_size: int, *, drop_last: bool = False) -> list[slice]:
    """Slices cutting ``num`` samples into batches of ``batch_size`` (the last
    one smaller unless ``drop_last``)."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    stop = (num // batch_size) * batch_size if drop_last else num
    return [slice(s, min(s + batch_size, num)) for s in range(0, stop, batch_size)]
