"""The DALI backend: files read by DALI's own reader (readers.file, C++
threads, no Python per file) in this loader's visiting order, decoded on the
GPU ("mixed", with decode and random crop fused) or, without one, on CPU
threads (device_id=None).

The reader gets the rank's files in visiting order with each file's sample id
as its label, and no shuffling of its own: every backend visits the same
order, and each batch carries the ids DALI actually read. The file list is
part of the pipeline, so a pipeline serves one epoch: building one takes
milliseconds and its first batch comes ~0.13 s later on ImageNet-size files
(the prefetch queue fills; docs/BENCHMARKS.md), nothing next to an epoch of
data large enough for DALI.
DALI errors never escape as pipeline tracebacks: a failed batch is
re-decoded file by file to name the bad file (and bisected with DALI when
only DALI's decoder refuses one).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from unseen_fast.data.batches import BatchLoader
from unseen_fast.data.decode import decode_file
from unseen_fast.data.errors import BadImageError, DataError
from unseen_fast.data.transforms import MEAN, RRC_AREA, RRC_RATIO, Augment

log = logging.getLogger("unseen_fast.data")

MAX_REFUSED = 4  # files of one batch only DALI refuses; more: DALI itself is failing


def dali_version() -> str | None:
    """nvidia-dali's version, or None when it is not installed or its native
    libraries fail to load on this machine."""
    try:
        import nvidia.dali as dali
    except Exception:
        return None
    return dali.__version__


def dali_available() -> bool:
    return dali_version() is not None


def _build_pipeline(files: list[str], ids: np.ndarray, aug: Augment, *, batch_size: int, num_threads: int,
                    device_id: int | None, seed: int):
    from nvidia.dali import fn, pipeline_def, types

    decode_device = "mixed" if device_id is not None else "cpu"
    size = aug.image_size

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=2)
    def pipeline():
        # our order, ids as labels; the last batch padded with its last file (trimmed in _run)
        encoded, sample_ids = fn.readers.file(files=files, labels=ids.tolist(), random_shuffle=False,
                                              pad_last_batch=True, name="reader")
        if aug.train and not aug.small:
            images = fn.decoders.image_random_crop(encoded, device=decode_device, output_type=types.RGB,
                                                   random_area=list(RRC_AREA),
                                                   random_aspect_ratio=list(RRC_RATIO), adjust_orientation=False)
            # As NVIDIA's DALI ResNet-50 training example: linear, no antialias
            # (antialiased CPU resize cost 3.7x the decode here: 720 vs 985 img/s).
            images = fn.resize(images, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=False)
        else:
            # EXIF orientation ignored, as by every other backend and torchvision's ImageFolder (DALI's
            # default turned such photos upright: other pixels than the ones a user's training reads)
            images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB, adjust_orientation=False)
            if aug.small:
                images = fn.resize(images, size=[aug.side, aug.side], antialias=True)
            else:
                images = fn.resize(images, resize_shorter=aug.resize_size, antialias=True)
        if aug.train and aug.small:
            shift = [float(v) for v in range(-aug.pad, aug.pad + 1)]
            anchor = fn.random.uniform(values=shift, shape=[2])
            images = fn.slice(images, anchor, [float(size), float(size)], normalized_anchor=False,
                              normalized_shape=False, axis_names="WH", out_of_bounds_policy="pad",
                              fill_values=0)
        mirror = fn.random.coin_flip() if aug.train else 0
        # uint8 out (mean 0, std 1): normalization happens in finish_batch,
        # identically for every backend.
        images = fn.crop_mirror_normalize(images, crop=[size, size], mirror=mirror, dtype=types.UINT8,
                                          mean=[0.0] * len(MEAN), std=[1.0] * len(MEAN), output_layout="HWC")
        return images, sample_ids

    pipe = pipeline()
    pipe.build()
    return pipe


class DaliLoader(BatchLoader):
    backend = "dali"

    def __init__(self, *args, num_threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_threads = num_threads or min(os.cpu_count() or 2, 8)
        self.device_id = (self.device.index or 0) if self.device.type == "cuda" else None

    def _uint8_batches(self):
        order = self.order
        start = 0
        while start < len(order):
            # A bad file (with skip_bad) resumes at the failed batch without it.
            restart = yield from self._run(order, start)
            if restart is None:
                return
            order, start = restart

    def _run(self, order: np.ndarray, start: int):
        """Yield the batches of order[start:]; after a bad file (skip_bad),
        return (order without it, where to restart) instead of finishing."""
        remaining = order[start:]
        batches = [remaining[s:s + self.batch_size] for s in range(0, len(remaining), self.batch_size)]
        try:
            pipe = _build_pipeline([self.index.file(i) for i in remaining.tolist()], remaining, self.aug,
                                   batch_size=self.batch_size, num_threads=self.num_threads,
                                   device_id=self.device_id, seed=self.seed_for(stream=start))
        except RuntimeError as err:
            raise DataError(f"DALI could not build its pipeline: {str(err).splitlines()[0]}") from None
        try:
            for number, batch in enumerate(batches):
                try:
                    images, read_ids = pipe.run()
                except RuntimeError as err:
                    failure = _dali_reason(err)
                    break
                read_ids = np.asarray(read_ids.as_tensor()).reshape(-1)[:len(batch)]
                if not np.array_equal(read_ids, batch):  # the reader must follow our order exactly
                    raise RuntimeError(f"DALI's reader returned samples {read_ids[:4]}... instead of {batch[:4]}...")
                yield _to_torch(images, self.device)[:len(batch)], torch.from_numpy(batch)
            else:
                return None
        finally:
            # Stop its decoding threads now, not when the pipeline is garbage
            # collected: a failed batch's traceback holds it, with its threads
            # still decoding the prefetched batches.
            pipe._shutdown()
            del pipe
        bad = self._find_bad(batch, failure)
        keep = ~np.isin(order, bad)
        first = start + number * self.batch_size
        return order[keep], int(keep[:first].sum())

    def _find_bad(self, batch: np.ndarray, failure: str) -> np.ndarray:
        """Name the files of a failed batch that do not decode; raise unless
        skipping them."""
        bad = []
        for sample_id in batch.tolist():
            try:
                decode_file(self.index.file(sample_id), sample_id)
            except BadImageError as bad_image:
                self._record_bad(bad_image)
                bad.append(sample_id)
        refused = [] if bad else self._refused_by_dali(batch)  # files libjpeg-turbo reads past, DALI does not
        if not bad and not 0 < len(refused) <= MAX_REFUSED:  # none, or DALI fails whatever it reads
            raise DataError(f"DALI failed on a batch of {len(batch)} files starting with "
                            f"{self.index.file(int(batch[0]))}: {failure}")
        for sample_id in refused:
            self._record_bad(BadImageError(self.index.file(sample_id), f"DALI cannot decode it ({failure}); "
                                           f"torchvision can: --backend nvjpeg or torchvision reads it", sample_id))
        return np.asarray(bad + refused, dtype=np.int64)

    def _refused_by_dali(self, batch: np.ndarray) -> list[int]:
        """The files of ``batch`` DALI fails on, by bisection: its errors do
        not name the file (one file of 256: about 16 small pipelines). More
        than MAX_REFUSED means DALI fails whatever it reads (a device error):
        the search stops and the caller raises."""
        refused, pending = [], [batch]
        while pending and len(refused) <= MAX_REFUSED:
            ids = pending.pop()
            if self._dali_decodes(ids):
                continue
            if len(ids) == 1:
                refused.append(int(ids[0]))
            else:
                pending += [ids[len(ids) // 2:], ids[:len(ids) // 2]]
        return sorted(refused)

    def _dali_decodes(self, ids: np.ndarray) -> bool:
        try:
            pipe = _build_pipeline([self.index.file(i) for i in ids.tolist()], ids, self.aug, batch_size=len(ids),
                                   num_threads=self.num_threads, device_id=self.device_id, seed=0)
        except RuntimeError as err:
            raise DataError(f"DALI could not build its pipeline: {str(err).splitlines()[0]}") from None
        try:
            pipe.run()
            return True
        except RuntimeError:
            return False
        finally:
            pipe._shutdown()


def _dali_reason(err: RuntimeError) -> str:
    """The informative line of a DALI pipeline error (e.g. "nvImageCodec
    failure: '#3'"): the first is always "Critical error in pipeline:"."""
    boilerplate = ("Critical error in pipeline", "Current pipeline object is no longer valid", "encountered:")
    lines = [line.strip() for line in str(err).splitlines()
             if line.strip() and not line.strip().startswith(boilerplate)]
    return lines[-1] if lines else "unknown error"


def _to_torch(images, device: torch.device) -> torch.Tensor:
    """DALI TensorList (B, S, S, 3) uint8 -> (B, 3, S, S) channels_last on ``device``."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        tensor = images.as_tensor()
        out = torch.empty(tensor.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
    else:
        out = torch.from_numpy(np.array(images.as_tensor()))
    return out.permute(0, 3, 1, 2)
