"""The decoded cache: decode every image once into one uint8 array on disk,
memory-map it, and augment whole batches as tensors on the target device
(the airbench / FFCV approach; right for CIFAR-size images, where decoding
costs far more than the augmentation)."""
from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from unseen_fast.data.batches import BatchLoader
from unseen_fast.data.decode import decode_every_image
from unseen_fast.data.errors import BadImageError
from unseen_fast.data.index import ImageIndex
from unseen_fast.data.transforms import Augment, cache_augment, cache_pixels, to_device
from unseen_fast.rundir import allocate, atomic_path, write_json

log = logging.getLogger("unseen_fast.data")


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNSEEN_FAST_CACHE", Path.home() / ".cache" / "unseen-fast"))


def cache_bytes(num_samples: int, side: int) -> int:
    return num_samples * side * side * 3


class DecodedCache:
    """(N, side, side, 3) uint8 pixels of every sample, plus the ids that
    could not be decoded (``bad``: sample id -> reason)."""

    def __init__(self, pixels: np.ndarray, bad: dict[int, str], path: Path | None):
        self.pixels, self.bad, self.path = pixels, bad, path

    @classmethod
    def open_or_build(cls, index: ImageIndex, aug: Augment, cache_dir=None, *,
                      workers: int | None = None, progress: bool = False) -> "DecodedCache":
        """Open the cache for (index, side) under ``cache_dir``, building it
        first if missing. Files are keyed by the index's content fingerprint
        (listing, sizes, modification times), written
        under a temporary name and renamed when complete, so an interrupted
        build never leaves a half-filled cache that looks finished."""
        if index.in_memory:
            return cls(_in_memory_pixels(index, aug), {}, None)
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = index.content_fingerprint
        stem = f"decoded-{key[:16]}-{'small' if aug.small else 'large'}{aug.side}"
        data_path, meta_path = cache_dir / f"{stem}.u8", cache_dir / f"{stem}.json"
        shape = (len(index), aug.side, aug.side, 3)
        if meta_path.exists() and data_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") == key and tuple(meta.get("shape", ())) == shape:
                pixels = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)
                return cls(pixels, {int(k): v for k, v in meta["bad"].items()}, data_path)
        cache_dir.mkdir(parents=True, exist_ok=True)
        size = int(np.prod(shape))
        with atomic_path(data_path, size=size) as partial:  # an interrupted build leaves no file that looks finished
            allocate(partial, size)  # a full disk: one line now, not a SIGBUS while decoding
            pixels = np.memmap(partial, dtype=np.uint8, mode="r+", shape=shape)
            bad = _decode_all(index, aug, pixels, workers=workers, progress=progress)
            pixels.flush()
            del pixels
        write_json(meta_path, dict(fingerprint=key, shape=shape, root=index.root,
                                   bad={str(k): v for k, v in bad.items()}))
        log.info("decoded cache %s: %d images, %.1f MB, %d unreadable",
                 data_path, len(index), data_path.stat().st_size / 1e6, len(bad))
        return cls(np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape), bad, data_path)


def _in_memory_pixels(index: ImageIndex, aug: Augment) -> np.ndarray:
    images = index.images
    if images.shape[1:3] == (aug.side, aug.side):
        return images
    return np.stack([cache_pixels(torch.from_numpy(im).permute(2, 0, 1), aug).numpy() for im in images])


def _cache_row(image: torch.Tensor, aug: Augment) -> np.ndarray:
    return cache_pixels(image, aug).numpy()


def _decode_all(index, aug, pixels, *, workers, progress) -> dict[int, str]:
    """Decode every sample into ``pixels``. Returns {sample id: reason} of failures."""
    bad = {}
    chunks = decode_every_image(index, functools.partial(_cache_row, aug=aug), workers=workers,
                                progress=progress, desc="decoding into cache")
    for first, results, failed in chunks:
        for row, image in enumerate(results, first):
            if image is not None:
                pixels[row] = image
        bad.update(failed)
    return bad


class CacheLoader(BatchLoader):
    backend = "cache"

    def __init__(self, *args, cache: DecodedCache, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = cache
        if cache.bad:
            bad_here = np.isin(self.order, np.fromiter(cache.bad, dtype=np.int64))
            for sample_id in self.order[bad_here].tolist():
                self._record_bad(BadImageError(self.index.file(sample_id), cache.bad[sample_id], sample_id))
            self._keep = ~bad_here
        else:
            self._keep = None

    def _uint8_batches(self):
        generator_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        generator = torch.Generator(device=generator_device)
        for number, start in enumerate(range(0, len(self.order), self.batch_size), self.start_batch):
            window = slice(start, start + self.batch_size)
            rows, ids = self._rows(window)
            # Per batch: exact on resume, and every backend that augments
            # these uint8 rows (cache, resident, nvjpeg) gives the same pixels.
            generator.manual_seed(self.seed_for(number))
            yield cache_augment(rows, self.aug, generator), ids

    def _rows(self, window: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, side, side, 3) uint8 rows of the batch at ``window`` of the
        order (bad images left out) on the target device, and their ids."""
        ids = self.order[window]
        if self._keep is not None:
            ids = ids[self._keep[window]]
        # Sorted reads are kinder to the page cache; the batch keeps its order.
        rows = torch.from_numpy(_gather(self.cache.pixels, ids))
        return to_device(rows, self.device), torch.from_numpy(ids)


def _gather(pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    out = np.empty((len(ids),) + pixels.shape[1:], dtype=np.uint8)
    out[order] = pixels[ids[order]]
    return out
