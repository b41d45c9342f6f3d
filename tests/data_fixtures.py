"""Real image folders for data tests, cut from the CIFAR-10 JPEGs in
../shared/datasets (extracted once into .cache/datasets, never committed)."""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "datasets" / "cifar10-train-jpg.tar.gz"
DATA_CACHE = Path(os.environ.get("UNSEEN_FAST_DATA", REPO / ".cache" / "datasets"))


def cifar10_root() -> Path:
    """The 50,000 CIFAR-10 training JPEGs in ImageFolder layout (extracted on first use)."""
    root = DATA_CACHE / "cifar10" / "train"
    done = DATA_CACHE / "cifar10" / ".extracted"
    if not done.exists():
        if not CIFAR_TAR.exists():
            import pytest

            pytest.skip(f"needs the CIFAR-10 JPEGs: {CIFAR_TAR} is absent (../shared/datasets beside the checkout)")
        DATA_CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(DATA_CACHE, filter="data")
        done.touch()
    return root


def copy_subset(dest: Path, per_class: int, classes: int = 10) -> Path:
    """An ImageFolder of the first ``per_class`` CIFAR images of ``classes`` classes."""
    src = cifar10_root()
    for name in sorted(os.listdir(src))[:classes]:
        (dest / name).mkdir(parents=True)
        for file in sorted(os.listdir(src / name))[:per_class]:
            shutil.copy(src / name / file, dest / name / file)
    return dest


def upscaled_folder(dest: Path, size: tuple[int, int], per_class: int, classes: int = 3,
                    quality: int = 90) -> Path:
    """CIFAR images upscaled to ``size`` = (width, height) and re-encoded as
    JPEG: ImageNet-size files from real pictures."""
    from PIL import Image

    src = cifar10_root()
    for name in sorted(os.listdir(src))[:classes]:
        (dest / name).mkdir(parents=True)
        for file in sorted(os.listdir(src / name))[:per_class]:
            with Image.open(src / name / file) as img:
                img.convert("RGB").resize(size, Image.BICUBIC).save(dest / name / file, quality=quality)
    return dest


def striped_folder(dest: Path, size: tuple[int, int] = (288, 96), per_class: int = 8) -> Path:
    """Wide JPEGs whose left, middle and right thirds are red, green and
    blue: a crop from the whole image shows red or blue, a crop from its
    center square only green."""
    import numpy as np
    from PIL import Image

    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for third in range(3):
        pixels[:, third * width // 3:(third + 1) * width // 3, third] = 255
    for name in ("a", "b"):
        (dest / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(pixels).save(dest / name / f"{k:04d}.jpg", quality=95)
    return dest


def dominant_colour_shares(images) -> list[float]:
    """Share of pixels whose largest (normalized) channel is red, green, blue."""
    winner = images.float().argmax(1)
    return [float((winner == c).float().mean()) for c in range(3)]


def collect(loader):
    """All (images, labels, ids) of one pass of a loader, concatenated on the CPU."""
    import torch

    parts = list(loader)
    assert len(parts) == len(loader)
    images, labels, ids = (torch.cat([p[i].cpu() for p in parts]) for i in range(3))
    return images, labels, ids


def loader(index, ids, backend, cache_dir, **kwargs):
    """make_loader with the tests' defaults: 32 px, batches of 16, torchvision in-process."""
    from unseen_fast.data import make_loader

    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("batch_size", 16)
    if backend == "torchvision":
        kwargs.setdefault("workers", 0)
    return make_loader(index, ids, backend=backend, cache_dir=cache_dir, **kwargs)


def write_png16(path, pixels) -> None:
    with open(path, "wb") as out:
        out.write(png16_bytes(pixels))


def png16_bytes(pixels) -> bytes:
    """A 16-bit PNG of (H, W) or (H, W, 3) uint16 ``pixels`` (Pillow writes
    16-bit grayscale only; RGB48 is written chunk by chunk here)."""
    import struct
    import zlib

    import numpy as np

    pixels = np.asarray(pixels, dtype=">u2")
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.tobytes() for row in pixels.reshape(height, -1))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))
