"""The device-resident backend: the decoded dataset uploaded once to the
device as one uint8 tensor (N, side, side, 3), shared by every loader of the
process on that device (the fold models on CUDA streams, the stage models,
the scorer). Per epoch: the visiting order goes to the device in one copy;
per batch: one gather, the augmentation (random numbers drawn on the device
from the batch's seed, as the cache backend draws them) and the
normalization, all on the device, no host sync (as in
KellerJordan/cifar10-airbench, which keeps CIFAR-10 on the GPU)."""
from __future__ import annotations

import logging
import threading
import warnings

import numpy as np
import torch

from unseen_fast.data.cache import CacheLoader, DecodedCache
from unseen_fast.data.index import ImageIndex
from unseen_fast.data.transforms import finish_batch, to_device

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
    augmentation (the cache's per-batch random numbers, so both backends
    give the same pixels bit for bit) and the same bad-image handling."""

    backend = "resident"

    def __init__(self, *args, pixels: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.pixels = pixels
        self._kept_order = self._kept_before = None

    def __iter__(self):
        labels = to_device(torch.from_numpy(self.index.labels), self.device)  # one copy per epoch, no wait
        for images, ids in self._uint8_batches():
            if len(ids) == 0:
                continue
            yield finish_batch(images, dtype=self.dtype, device=self.device), labels[ids], ids

    def _rows(self, window: slice) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kept_order is None:  # once per epoch: the order, bad images left out, in one copy
            keep = np.ones(len(self.order), bool) if self._keep is None else self._keep
            self._kept_order = to_device(torch.from_numpy(self.order[keep]), self.pixels.device)
            self._kept_before = np.concatenate([[0], np.cumsum(keep)])  # kept positions before each position
        stop = min(window.stop, len(self.order))
        ids = self._kept_order[self._kept_before[window.start]:self._kept_before[stop]]
        return self.pixels.index_select(0, ids), ids
