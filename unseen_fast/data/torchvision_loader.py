"""The fallback backend: torchvision decoding and transforms.v2 in
DataLoader worker processes (what a user would write without DALI)."""
from __future__ import annotations

import torch

from unseen_fast.data.batches import BatchLoader
from unseen_fast.data.decode import decode_file
from unseen_fast.data.errors import BadImageError
from unseen_fast.data.transforms import torchvision_transform


class _Samples(torch.utils.data.Dataset):
    """Sample id -> (uint8 (3, S, S) or the BadImageError, id). Each sample's
    augmentation is seeded from (loader seed, sample id), so pixels do not
    depend on the number of workers or on resuming mid-epoch."""

    def __init__(self, index, aug, seed):
        self.index, self.seed = index, seed
        self.transform = torchvision_transform(aug)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, sample_id):
        # The CPU generator only: torch.manual_seed also seeds CUDA (10x slower).
        torch.default_generator.manual_seed(self.seed ^ (int(sample_id) * 0x9E3779B1 % (1 << 31)))
        if self.index.in_memory:
            image = torch.from_numpy(self.index.images[sample_id]).permute(2, 0, 1)
        else:
            try:
                image = decode_file(self.index.file(sample_id), sample_id)
            except BadImageError as err:
                return err, sample_id
        return self.transform(image), sample_id


def _collate(items):
    bad = [image for image, _ in items if isinstance(image, BadImageError)]
    good = [(image, sid) for image, sid in items if not isinstance(image, BadImageError)]
    images = torch.stack([image for image, _ in good]) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    ids = torch.tensor([sid for _, sid in good], dtype=torch.int64)
    return images, ids, bad


class TorchvisionLoader(BatchLoader):
    backend = "torchvision"

    def __init__(self, *args, num_workers: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_workers = num_workers

    def _uint8_batches(self):
        batches = [self.order[s:s + self.batch_size].tolist()
                   for s in range(0, len(self.order), self.batch_size)]
        loader = torch.utils.data.DataLoader(
            _Samples(self.index, self.aug, self.seed_for()), batch_sampler=batches,
            num_workers=self.num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.num_workers else None)
        for images, ids, bad in loader:
            for err in bad:
                self._record_bad(err)
            yield images, ids
