"""GPU decoding without DALI: nvJPEG through torchvision, a batch at a time.

For data too large for the decoded cache on a GPU machine without DALI
(DALI's wheel is large and not everywhere): each batch's files are read on
threads (the next batch's while this one decodes), its JPEGs decoded in one
batched ``torchvision.io.decode_jpeg(..., device=...)`` call on the loader's
device (nvJPEG on a GPU, libjpeg-turbo on the CPU); other formats are
decoded on the reading threads (CPU), and when one file fails the batched
call its batch is decoded file by file (the device first, then the CPU
decoders, which name a file nobody can read). Training batches of large
images take their random-resized crops from each whole decoded image on the
device (``augment_whole_images``, as DALI and torchvision do). Otherwise
(small images, evaluation) each image is brought to the decoded cache's
square (``cache_pixels``: resize, center crop) on the device and the batch
augmented exactly as the cache backend's batches are (``cache_augment``,
seeded per batch): on the CPU those batches equal the cache backend's bit
for bit (tested); on a GPU nvJPEG's IDCT may differ from libjpeg-turbo by a
few uint8 levels.
"""
from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from unseen_fast.data.batches import BatchLoader
from unseen_fast.data.decode import decode_bytes, first_line, read_bytes
from unseen_fast.data.errors import BadImageError
from unseen_fast.data.transforms import augment_whole_images, cache_augment, cache_pixels

log = logging.getLogger("unseen_fast.data")
JPEG_MAGIC = (0xFF, 0xD8)


@functools.lru_cache(maxsize=None)
def gpu_jpeg_decoding(device: str) -> bool:
    """Whether this torchvision decodes JPEGs on ``device`` (an 8x8 probe)."""
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
        self._warned = False

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
                if not images:  # every file of the batch bad (and skipped)
                    continue
                generator.manual_seed(self.seed_for(number))  # per batch, as the cache: exact on resume
                if self.aug.train and not self.aug.small:  # crops of the whole image, not of a center square
                    yield augment_whole_images(images, self.aug, generator), torch.from_numpy(kept)
                    continue
                rows = torch.stack([cache_pixels(image, self.aug) for image in images])  # (B, side, side, 3)
                yield cache_augment(rows, self.aug, generator), torch.from_numpy(kept)

    def _read(self, pool, start: int) -> list:
        ids = self.order[start:start + self.batch_size].tolist()
        return [pool.submit(_read_or_decode, self.index.file(i), i) for i in ids]

    def _decode(self, ids: np.ndarray, data: list) -> tuple[list[torch.Tensor], np.ndarray]:
        """([(3, H, W) uint8 on the device] of the decodable samples, their
        ids). ``data``: per sample the JPEG's bytes (1-D), pixels already
        decoded on a reading thread (3-D), or a BadImageError."""
        images = [d.to(self.device) if isinstance(d, torch.Tensor) and d.dim() == 3 else None for d in data]
        jpegs = [k for k, d in enumerate(data) if isinstance(d, torch.Tensor) and d.dim() == 1]
        if jpegs:
            self._settle()
            try:
                decoded = self._decode_jpegs([data[k] for k in jpegs])
            except RuntimeError as err:  # one file fails the whole call: file by file, naming the culprit
                decoded = [self._decode_one(data[k], int(ids[k]), err) for k in jpegs]
            for k, image in zip(jpegs, decoded):
                images[k] = image if isinstance(image, torch.Tensor) else None
                if isinstance(image, BadImageError):
                    data[k] = image
        for item in data:
            if isinstance(item, BadImageError):
                self._record_bad(item)  # raises unless skip_bad
        good = [k for k in range(len(ids)) if images[k] is not None]
        return [images[k] for k in good], ids[good]

    def _decode_jpegs(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor]:
        """On a GPU one batched call; on the CPU (tests) file by file, as
        torchvision does inside a list call (0.19's CPU decoder takes no list)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.type == "cuda":
            return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)
        return [decode_jpeg(jpeg, mode=ImageReadMode.RGB) for jpeg in jpegs]

    def _settle(self) -> None:
        """Wait for the work queued on this thread's stream before a GPU
        decode: torchvision decodes on a stream of its own that does not wait
        for ours, into memory our stream may have freed while kernels still
        read it (torchvision PR #9606). The decode waits for the host anyway."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _decode_one(self, data: torch.Tensor, sample_id: int, batch_error: Exception):
        """One JPEG of a batch the batched call rejected: on the device, else
        with the CPU decoders (Pillow too), else the BadImageError."""
        if not self._warned:
            log.warning("nvjpeg: a batch failed to decode at once (%s); decoding its files one by one",
                        first_line(batch_error))
            self._warned = True
        try:
            return self._decode_jpegs([data])[0]
        except RuntimeError:
            try:
                return decode_bytes(data, self.index.file(sample_id), sample_id).to(self.device)
            except BadImageError as err:
                return err


def _read_or_decode(path: str, sample_id: int):
    """On a reading thread: a JPEG's bytes (decoded later, a batch at once),
    any other format's pixels (decoded here on the CPU), or the BadImageError."""
    try:
        data = read_bytes(path, sample_id)
        if len(data) > 2 and tuple(data[:2].tolist()) == JPEG_MAGIC:
            return data
        return decode_bytes(data, path, sample_id)
    except BadImageError as err:
        return err
    except Exception as err:  # whatever a worker thread meets must come back to be reported in order
        return BadImageError(path, first_line(err), sample_id)
