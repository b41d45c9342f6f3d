"""Decoding one image file to RGB pixels, shared by the torchvision loader,
the cache builder and check-data so all three agree on pixels and errors."""
from __future__ import annotations

import collections
import io
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from unseen_fast.constants import can_draw_bars
from unseen_fast.data.errors import BadImageError


def decode_file(path: str, sample_id: int | None = None) -> torch.Tensor:
    """(3, H, W) uint8 RGB pixels of an image file.

    torchvision's decoders (libjpeg-turbo, libwebp) first; Pillow for PNGs
    (_decode_png says why) and what torchvision does not read (BMP).
    Anything unreadable raises BadImageError naming the file.
    """
    return decode_bytes(read_bytes(path, sample_id), path, sample_id)


def read_bytes(path: str, sample_id: int | None = None) -> torch.Tensor:
    """The file's bytes as a uint8 tensor; BadImageError when empty or unreadable."""
    try:
        data = read_file(path)  # 1.6x the files/s of np.fromfile on one thread here
    except RuntimeError:  # its message names its C++ sources, not why: Python's read says why
        try:
            data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        except OSError as err:  # permission, a folder, a vanished file (the path is named anyway)
            raise BadImageError(path, err.strerror or first_line(err), sample_id) from None
    if data.numel() == 0:
        raise BadImageError(path, "empty file", sample_id)
    return data


def decode_bytes(data: torch.Tensor, path: str, sample_id: int | None = None) -> torch.Tensor:
    """decode_file's decoding step, on the CPU, for bytes already read."""
    raw = data.numpy()
    if raw[:8].tobytes() == PNG_SIGNATURE:
        try:
            return _decode_png(raw)
        except Exception as err:  # Pillow's errors vary by damage
            raise BadImageError(path, first_line(err), sample_id) from None
    try:
        return _eight_bit(decode_image(data, mode=ImageReadMode.RGB))
    except (RuntimeError, ValueError) as err:
        first_error = first_line(err)
    try:
        with _open_image(raw) as img:
            return _pillow_rgb(img)
    except Exception:  # Pillow's errors vary by format; the first one is the useful one
        raise BadImageError(path, first_error, sample_id) from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with
CUT_PNG = "cut short: the PNG does not end with its IEND chunk"


def _decode_png(raw: np.ndarray) -> torch.Tensor:
    """PNGs are decoded by Pillow, not torchvision: torchvision 0.29's
    decode_png kills the process (SIGSEGV) on every libpng error (a CRC or
    zlib error, a bad filter byte: 15 of 25 randomly damaged files here),
    where Pillow raises. Pillow keeps only the high byte of 16-bit colour
    PNGs, so those are decoded by torchvision once Pillow has read the whole
    file and checked every chunk's CRC (the errors libpng stops on)."""
    with _open_image(raw) as img:
        img.load()
        if raw[24] != 16:  # the IHDR bit depth (Pillow has read the IHDR: it is there)
            return _pillow_rgb(img)
    with _open_image(raw) as img:
        img.verify()
    return _eight_bit(decode_image(torch.from_numpy(raw), mode=ImageReadMode.RGB))


def _eight_bit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels. torchvision decodes 16-bit PNGs to uint16; they are
    scaled to round(v / 257), the nearest 8-bit level, as DALI reads them
    (torchvision's own scaling keeps the high byte, one level off for about
    half the values), instead of being clipped or wrapped later."""
    if pixels.dtype == torch.uint8:
        return pixels
    wide = pixels.to(torch.int32)  # 65535 * 255 fits; no ties, since 257 is odd
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)


def _open_image(raw: np.ndarray):
    from PIL import Image

    return Image.open(io.BytesIO(raw.data))


def _pillow_rgb(img) -> torch.Tensor:
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    # numpy's transposing copy: torch's permute(2, 0, 1).contiguous() of uint8 took 8 ms for 500x375 here, 0.24
    return torch.from_numpy(np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1)))


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels; a
    PNG must also end with its IEND chunk, so that one cut short is found
    before any training (one read of its last bytes)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.format == "PNG" and not png_is_complete(path):
            raise ValueError(CUT_PNG)
        return img.height, img.width


def png_is_complete(path: str) -> bool:
    """Whether a PNG file's chunks run to an IEND chunk: its last 12 bytes,
    or (data appended after it) a walk over the chunk headers."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - len(PNG_END)))
        if file.read() == PNG_END:
            return True
        position = len(PNG_SIGNATURE)
        while position + 8 <= size:
            file.seek(position)
            header = file.read(8)
            if header[4:] == b"IEND":
                return True
            position += 12 + int.from_bytes(header[:4], "big")  # length, type, data, CRC
        return False


def unreadable_headers(index, *, workers: int | None = None, chunk: int = 1024) -> dict[int, str]:
    """{sample id: reason} of every file whose header does not open as an
    image (empty, not an image, unknown format, unreadable): a cheap pass
    (no pixels decoded, threads) run before any training. PNGs cut short are
    found here too (their end is read); other damage after a valid header
    is found later, when the file is decoded."""
    if index.in_memory:
        return {}

    def check(first: int) -> list[tuple[int, str]]:
        failed = []
        for sample_id in range(first, min(first + chunk, len(index))):
            try:
                image_size(index.file(sample_id))
            except Exception as err:  # Pillow raises several types for unreadable headers
                failed.append((sample_id, first_line(err)))
        return failed

    workers = max(1, min(32, 4 * (os.cpu_count() or 2)) if workers is None else workers)  # I/O bound
    with ThreadPoolExecutor(workers, thread_name_prefix="unseen-fast-headers") as pool:
        return dict(item for failed in pool.map(check, range(0, len(index), chunk)) for item in failed)


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    # torchvision prefixes "decode_jpeg, /build/path/decode_jpeg.cpp:171, "
    return re.sub(r"^[\w()]+, \S+:\d+, ", "", text.splitlines()[0])


def _decode_chunk(index, convert, first: int, count: int):
    """(first id, [convert(pixels) or None], [(id, reason)]) of ``count`` samples from ``first``."""
    results, failed = [], []
    for sample_id in range(first, min(first + count, len(index))):
        try:
            results.append(convert(decode_file(index.file(sample_id), sample_id)))
        except BadImageError as err:
            results.append(None)
            failed.append((sample_id, err.reason))
    return first, results, failed


def decode_every_image(index, convert, *, workers: int | None = None, progress: bool = False,
                       desc: str = "decoding", chunk: int = 256):
    """Decode every file of ``index`` on ``workers`` threads (default: one per
    core) and yield, in id order, chunks of (first sample id, [convert(pixels)
    or None per sample], [(id, reason)]).

    Threads, not processes: torchvision's decoders and the tensor ops in
    ``convert`` release the GIL, so threads decode as fast as worker
    processes (faster: 17,900 vs 14,100 CIFAR-10 images/s on 2 cores, 2,370
    vs 350 ImageNet-size images/s for 1,024 files, where starting processes
    dominates), and they work from a plain script, ``python -c``, a notebook
    or a user's own DataLoader worker, with any ``convert`` (no pickling, no
    re-import of ``__main__``). At most 4 chunks per thread are in flight.
    """
    from tqdm.auto import tqdm  # a notebook widget in Jupyter, a text bar on a terminal

    workers = max(1, (os.cpu_count() or 2) if workers is None else workers)
    starts = iter(range(0, len(index), chunk))
    with ThreadPoolExecutor(workers, thread_name_prefix="unseen-fast-decode") as pool, \
            tqdm(total=len(index), desc=desc, unit="img", disable=not (progress and can_draw_bars()),
                 mininterval=1.0) as bar:
        pending = collections.deque(pool.submit(_decode_chunk, index, convert, first, chunk)
                                    for first in itertools.islice(starts, 4 * workers))
        while pending:
            first, results, failed = pending.popleft().result()
            for following in itertools.islice(starts, 1):  # keep the window full
                pending.append(pool.submit(_decode_chunk, index, convert, following, chunk))
            yield first, results, failed
            bar.update(len(results))
