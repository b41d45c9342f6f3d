"""GPU decoding without DALI: nvJPEG through torchvision, a batch at a time.

For data too large for the decoded cache on a GPU machine without DALI
(DALI's wheel is large and not everywhere): each batch's files are read on
threads (the next batch's while this one decodes), its JPEGs decoded in one
batched ``torchvision.io.decode_jpeg(..., device=...)`` call on the loader's
device (nvJPEG on a GPU, libjpeg-turbo on the CPU), other formats and JPEGs
the batched call rejects on the CPU. Each image is then brought to the
decoded cache's square (``cache_pixels``: resize, center crop) on the device
and the batch augmented exactly as the cache backend's batches are
(``cache_augment``, seeded per batch). On the CPU its batches therefore equal
the cache backend's bit for bit (tested); on a GPU nvJPEG's IDCT may differ
from libjpeg-turbo by a few uint8 levels.
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from unseen_fast.data.batches import BatchLoader
from unseen_fast.data.decode import decode_bytes, first_line, read_bytes
from unseen_fast.data.errors import BadImageError
from unseen_fast.data.transforms import cache_augment, cache_pixels

JPEG_MAGIC = (0xFF, 0xD8)


@functools.lru_cache(maxsize=None)
def gpu_jpeg_decoding(device: str) -> bool:
    """Whether this torchvision decodes JPEGs on ``device`` (a 1-pixel probe)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    try:
        probe = encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))
        return decode_jpeg([probe], device=device)[0].shape == (3, 8, 8)
    except (RuntimeError, ValueError, TypeError):
        return False


class NvjpegLoader(BatchLoader):
    backend = "nvjpeg"

    def __init__(self, *args, num_threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_threads = max(1, num_threads or min(16, os.cpu_count() or 2))  # file reads: I/O bound

    def _uint8_batches(self):
        generator = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        starts = list(range(0, len(self.order), self.batch_size))
        with ThreadPoolExecutor(self.num_threads, thread_name_prefix="unseen-fast-read") as pool:
            reads = self._read(pool, starts[0]) if starts else []
            for number, start in enumerate(starts, self.start_batch):
                ids = self.order[start:start + self.batch_size]
                data = [future.result() for future in reads]
                if start + self.batch_size < len(self.order):  # the next batch's reads overlap this decode
                    reads = self._read(pool, start + self.batch_size)
                images, kept = self._decode(ids, data)
                if not images:
                    yield torch.empty((0, 3, self.aug.image_size, self.aug.image_size), dtype=torch.uint8), \
                        torch.from_numpy(kept)
                    continue
                rows = torch.stack([cache_pixels(image, self.aug) for image in images])  # (B, side, side, 3)
                generator.manual_seed(self.seed_for(number))  # per batch, as the cache: exact on resume
                yield cache_augment(rows, self.aug, generator), torch.from_numpy(kept)

    def _read(self, pool, start: int) -> list:
        ids = self.order[start:start + self.batch_size].tolist()
        return [pool.submit(_read_or_error, self.index.file(i), i) for i in ids]

    def _decode(self, ids: np.ndarray, data: list) -> tuple[list[torch.Tensor], np.ndarray]:
        """([(3, H, W) uint8 on the device] of the decodable samples, their ids)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        images: list = [None] * len(ids)
        jpegs = [k for k, d in enumerate(data) if not isinstance(d, BadImageError) and len(d) > 2
                 and tuple(d[:2].tolist()) == JPEG_MAGIC]
        if jpegs:
            try:
                for k, image in zip(jpegs, decode_jpeg([data[k] for k in jpegs], mode=ImageReadMode.RGB,
                                                       device=self.device)):
                    images[k] = image
            except RuntimeError:  # one bad file fails the whole call: the CPU path below names it
                pass
        for k, sample_id in enumerate(ids.tolist()):
            if images[k] is None and not isinstance(data[k], BadImageError):
                try:
                    images[k] = decode_bytes(data[k], self.index.file(sample_id), sample_id).to(self.device)
                except BadImageError as err:
                    data[k] = err
            if isinstance(data[k], BadImageError):
                self._record_bad(data[k])  # raises unless skip_bad
        good = [k for k in range(len(ids)) if images[k] is not None]
        return [images[k] for k in good], ids[good]


def _read_or_error(path: str, sample_id: int):
    try:
        return read_bytes(path, sample_id)
    except BadImageError as err:
        return err
    except Exception as err:  # a read on a worker thread must come back to be reported in order
        return BadImageError(path, first_line(err), sample_id)
