"""Decoding one image file to RGB pixels, shared by the torchvision loader,
the cache builder and check-data so all three agree on pixels and errors."""
from __future__ import annotations

import os
import re

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from unseen_fast.data.errors import BadImageError


def decode_file(path: str, sample_id: int | None = None) -> torch.Tensor:
    """(3, H, W) uint8 RGB pixels of an image file.

    torchvision's decoders (libjpeg-turbo, libpng, libwebp) first; Pillow for
    what they do not read (BMP). Anything unreadable raises BadImageError
    naming the file.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, "empty file", sample_id)
        data = read_file(path)
    except (OSError, RuntimeError) as err:
        raise BadImageError(path, _first_line(err), sample_id) from None
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        first_error = _first_line(err)
    try:
        return _decode_with_pillow(path)
    except Exception:  # Pillow's errors vary by format; the first one is the useful one
        raise BadImageError(path, first_error, sample_id) from None


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as img:
        return img.height, img.width


def _decode_with_pillow(path: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    # torchvision prefixes "decode_jpeg, /build/path/decode_jpeg.cpp:171, "
    return re.sub(r"^\w+, \S+:\d+, ", "", text.splitlines()[0])


class _DecodeChunks(torch.utils.data.Dataset):
    """Chunk number -> (first id, [convert(pixels) or None], [(id, reason)])."""

    def __init__(self, index, convert, chunk):
        self.index, self.convert, self.chunk = index, convert, chunk

    def __len__(self):
        return -(-len(self.index) // self.chunk)

    def __getitem__(self, number):
        first = number * self.chunk
        results, failed = [], []
        for sample_id in range(first, min(first + self.chunk, len(self.index))):
            try:
                results.append(self.convert(decode_file(self.index.file(sample_id), sample_id)))
            except BadImageError as err:
                results.append(None)
                failed.append((sample_id, err.reason))
        return first, results, failed


def _clean_context():
    """A forkserver that has torch and this package imported already, so each
    worker forks from it in milliseconds."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "unseen_fast.data.decode"])
    return context


def _as_is(item):
    return item


def decode_every_image(index, convert, *, workers: int | None = None, progress: bool = False,
                       desc: str = "decoding", chunk: int = 256):
    """Decode every file of ``index`` in DataLoader worker processes (threads
    would contend for the GIL) and yield, in id order, chunks of
    (first sample id, [convert(pixels) or None per sample], [(id, reason)]).
    ``convert`` runs in the workers on (3, H, W) uint8 and must be picklable."""
    from tqdm import tqdm

    workers = (os.cpu_count() or 2) if workers is None else workers
    # collate_fn=_as_is: the default would turn numpy results into tensors,
    # which cross the worker queue one shared-memory file each (10x slower).
    # forkserver: workers start from a clean process, not a fork of this one,
    # whose thread pools (OpenMP, after training) made forked decoders segfault
    # now and then in the full test suite.
    loader = torch.utils.data.DataLoader(_DecodeChunks(index, convert, chunk), batch_size=None,
                                         collate_fn=_as_is, num_workers=workers,
                                         prefetch_factor=4 if workers else None,
                                         multiprocessing_context=_clean_context() if workers else None)
    with tqdm(total=len(index), desc=desc, unit="img", disable=not progress, mininterval=1.0) as bar:
        for first, results, failed in loader:
            yield first, results, failed
            bar.update(len(results))
