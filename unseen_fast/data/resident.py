"""The device-resident backend: the decoded dataset uploaded once to the
device as one uint8 tensor (N, side, side, 3), shared by every loader of the
process on that device (the fold models on CUDA streams, the stage models,
the scorer). Per epoch: the visiting order and all augmentation random
numbers go to the device in one copy each; per batch: one gather, the
augmentation and the normalization, all on the device, no host sync (as in
KellerJordan/cifar10-airbench, which keeps CIFAR-10 on the GPU)."""
from __future__ import annotations

import logging
import threading
import warnings

import numpy as np
import torch

from unseen_fast.data.cache import CacheLoader, DecodedCache
from unseen_fast.data.index import ImageIndex
from unseen_fast.data.transforms import apply_augment, augment_params, finish_batch

log = logging.getLogger("unseen_fast.data")

# Default share of the device's memory the resident dataset may take (auto).
RESIDENT_MEMORY_SHARE = 0.25

_lock = threading.Lock()
_uploaded: dict[str, tuple[tuple, torch.Tensor]] = {}  # device -> (dataset key, pixels): one dataset per device


def resident_pixels(index: ImageIndex, cache: DecodedCache, device) -> torch.Tensor:
    """(N, side, side, 3) uint8 pixels of ``cache`` on ``device``, uploaded on
    the first call for this dataset and device and shared afterwards. One
    dataset per device is kept: asking for another replaces it."""
    device = torch.device(device)
    # the cache file's name holds the contents' fingerprint: replaced images mean another upload
    key = (index.fingerprint, str(cache.path), tuple(cache.pixels.shape))
    with _lock:
        held = _uploaded.get(str(device))
        if held is not None and held[0] == key:
            return held[1]
        _uploaded.pop(str(device), None)  # free the previous dataset before uploading the next
        with warnings.catch_warnings():  # a read-only memmap: never written through this tensor
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(np.ascontiguousarray(cache.pixels))
        pixels = host.to(device)  # on the CPU a view of the page-cached file, no copy
        _uploaded[str(device)] = (key, pixels)
        log.info("resident dataset on %s: %d images, %.1f MB", device, len(pixels), pixels.numel() / 1e6)
        return pixels


def release_resident(device=None) -> None:
    """Free the resident dataset of ``device`` (default: of every device)."""
    with _lock:
        if device is None:
            _uploaded.clear()
        else:
            _uploaded.pop(str(torch.device(device)), None)


def device_memory_bytes(device) -> int:
    """Memory of ``device``: a GPU's total memory, or physical RAM for the CPU."""
    import os

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory if torch.cuda.is_available() else 0
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ResidentLoader(CacheLoader):
    """Batches gathered from the resident tensor; same orders, same
    augmentation definitions and the same bad-image handling as ``cache``.
    The random numbers of an epoch are drawn at once from a generator seeded
    by (seed, epoch, rank), so resuming mid-epoch gives the same pixels."""

    backend = "resident"

    def __init__(self, *args, pixels: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.pixels = pixels

    def __iter__(self):
        labels = torch.from_numpy(self.index.labels).to(self.device)  # one copy per epoch
        for images, ids in self._uint8_batches():
            if len(ids) == 0:
                continue
            yield finish_batch(images, dtype=self.dtype, device=self.device), labels[ids], ids

    def _uint8_batches(self):
        device = self.pixels.device
        skipped = self.start_batch * self.batch_size  # positions of this epoch already seen
        generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
        generator.manual_seed(self.seed_for(0))
        params = augment_params(self.aug, skipped + len(self.order), generator, device)
        params = {name: values[skipped:] for name, values in params.items()}
        order = torch.from_numpy(self.order).to(device)
        keep = None if self._keep is None else torch.from_numpy(self._keep).to(device)
        for start in range(0, len(self.order), self.batch_size):
            window = slice(start, start + self.batch_size)
            ids, batch_params = order[window], {name: values[window] for name, values in params.items()}
            if keep is not None:  # only with unreadable images: a boolean mask
                ids = ids[keep[window]]
                batch_params = {name: values[keep[window]] for name, values in batch_params.items()}
            rows = self.pixels.index_select(0, ids).permute(0, 3, 1, 2)  # NCHW view of NHWC rows
            yield apply_augment(rows, self.aug, batch_params), ids
