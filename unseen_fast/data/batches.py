"""What every loader backend shares: the visiting order of one rank, batch
cutting, sample id -> label mapping and the record of skipped bad files."""
from __future__ import annotations

import logging

import numpy as np
import torch

from unseen_fast.data.errors import BadImageError
from unseen_fast.data.index import ImageIndex
from unseen_fast.data.order import batch_slices
from unseen_fast.data.transforms import Augment, finish_batch, to_device

log = logging.getLogger("unseen_fast.data")


class BatchLoader:
    """Iterates (images, labels, sample_ids) for one rank.

    images: (B, 3, S, S) ``dtype`` on ``device``, normalized, channels_last;
    labels, sample_ids: (B,) int64 on ``device``. Subclasses implement
    :meth:`_uint8_batches`, yielding (uint8 (B, 3, S, S), int64 ids).
    """

    backend = "?"

    def __init__(self, index: ImageIndex, order: np.ndarray, *, aug: Augment, batch_size: int,
                 dtype: torch.dtype, device, seed: int, epoch: int, rank: int,
                 drop_last: bool, start_batch: int, skip_bad: bool):
        self.index, self.aug = index, aug
        self.batch_size, self.dtype, self.device = batch_size, dtype, torch.device(device)
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.skip_bad = skip_bad
        self.skipped: list[BadImageError] = []  # bad files left out (skip_bad=True)
        slices = batch_slices(len(order), batch_size, drop_last=drop_last)
        self.num_batches = len(slices)
        # Resuming mid-epoch: the first start_batch batches were already seen.
        first = slices[start_batch].start if start_batch < len(slices) else len(order)
        last = slices[-1].stop if slices else 0
        self.order = order[first:last]
        self.start_batch = min(start_batch, len(slices))
        self._labels = torch.from_numpy(index.labels)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    @property
    def num_samples(self) -> int:
        """Samples this loader delivers (before any bad files are skipped)."""
        return len(self.order)

    def __iter__(self):
        for images, ids in self._uint8_batches():
            if len(ids) == 0:
                continue
            images = finish_batch(images, dtype=self.dtype, device=self.device)
            yield images, to_device(self._labels[ids], self.device), to_device(ids, self.device)

    def _uint8_batches(self):
        raise NotImplementedError

    def _record_bad(self, err: BadImageError) -> None:
        if not self.skip_bad:
            raise err
        log.warning("skipping %s", err)
        self.skipped.append(err)

    def seed_for(self, stream: int = 0) -> int:
        """A 32-bit seed from (seed, epoch, rank, stream): augmentation noise
        is reproducible and differs between epochs and ranks."""
        return int(np.random.SeedSequence([self.seed, self.epoch, self.rank, stream]).generate_state(1)[0])

