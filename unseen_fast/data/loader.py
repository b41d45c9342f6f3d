"""make_loader: one entry point over the data backends, and the rule that
picks one."""
from __future__ import annotations

import functools
import logging
import os

import torch

from unseen_fast.constants import BACKENDS
from unseen_fast.data.cache import CacheLoader, DecodedCache, cache_bytes
from unseen_fast.data.dali_loader import DaliLoader, dali_available
from unseen_fast.data.errors import DataError
from unseen_fast.data.index import ImageIndex
from unseen_fast.data.nvjpeg_loader import NvjpegLoader, gpu_jpeg_decoding
from unseen_fast.data.order import as_id_array, resolve_rank, shard_order
from unseen_fast.data.resident import RESIDENT_MEMORY_SHARE, ResidentLoader, device_memory_bytes, resident_pixels
from unseen_fast.data.torchvision_loader import TorchvisionLoader
from unseen_fast.data.transforms import Augment

log = logging.getLogger("unseen_fast.data")

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def default_cache_budget() -> int:
    """A quarter of physical memory: the decoded cache should sit in the page cache."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def choose_backend(index: ImageIndex, image_size: int, *, device="cpu",
                   cache_budget_bytes: int | None = None) -> tuple[str, str]:
    """(backend, reason) for ``backend="auto"``: the dataset resident on the
    device when it fits a share of the device's memory and its augmentation
    is cheap where it runs (small images, or any size on a GPU); else the
    decoded cache when it fits the memory budget; else DALI; else, on a GPU,
    nvJPEG through torchvision; else torchvision's CPU workers."""
    cheap = Augment(image_size, train=False).small or torch.device(device).type == "cuda"
    if index.in_memory:
        return "resident", "the images are already in memory"
    need = cache_bytes(len(index), Augment(image_size, train=False).side)
    budget = default_cache_budget() if cache_budget_bytes is None else cache_budget_bytes
    resident_budget = min(budget, RESIDENT_MEMORY_SHARE * device_memory_bytes(device))
    if cheap and need <= resident_budget:
        return "resident", (f"the decoded dataset ({need / 1e9:.2f} GB) fits {RESIDENT_MEMORY_SHARE:.0%} of the "
                            f"{torch.device(device).type} memory")
    if cheap and need <= budget:
        return "cache", f"the decoded dataset ({need / 1e9:.2f} GB) fits the cache budget ({budget / 1e9:.2f} GB)"
    why = (f"the decoded dataset ({need / 1e9:.1f} GB) exceeds the cache budget ({budget / 1e9:.1f} GB)"
           if need > budget else f"random-resized crops of {image_size}px images from the cache are slow on the CPU")
    if not dali_available():
        why += "; DALI is not installed"
    elif (other := first_non_jpeg(index)) is None:
        return "dali", why
    else:
        why += f"; DALI decodes JPEG datasets only ({other} is not one)"
    if torch.device(device).type == "cuda" and gpu_jpeg_decoding(str(torch.device(device))):
        return "nvjpeg", why + ": JPEGs decoded on the GPU"
    return "torchvision", why


def make_loader(index: ImageIndex, ids, *, train: bool, batch_size: int, image_size: int,
                backend: str = "auto", device="cpu", seed: int = 0, epoch: int = 0,
                dtype: torch.dtype = torch.float32, rank: int | None = None, world_size: int | None = None,
                drop_last: bool = False, start_batch: int = 0, skip_bad: bool = False,
                cache_dir=None, cache_budget_bytes: int | None = None, workers: int | None = None,
                progress: bool = False):
    """Batches of (images, labels, sample_ids) for exactly the given sample ids.

    Parameters
    ----------
    index : ImageIndex
    ids : array-like of int
        (M,) distinct sample ids to visit.
    train : bool
        True: a permutation of ``ids`` fixed by (seed, epoch), training
        augmentation; ranks get equal shares (padded by repetition when
        world_size does not divide M). False: ``ids`` in the given order,
        evaluation transform, each id exactly once over all ranks.
    batch_size, image_size : int
        Output images are (B, 3, image_size, image_size).
    backend : {"auto", "resident", "cache", "dali", "nvjpeg", "torchvision"}
    device : torch.device or str
        Where batches land (and where DALI decodes / the cache augments).
    dtype : torch.dtype
        float32, bfloat16 or float16; images are normalized, channels_last.
    rank, world_size : int, optional
        This process's shard; default torch.distributed's, else (0, 1).
    drop_last : bool
        Drop a final partial batch (training only makes sense).
    start_batch : int
        Skip the first batches of this epoch (resuming mid-epoch).
    skip_bad : bool
        Leave unreadable images out (recorded in ``loader.skipped``) instead
        of raising BadImageError.
    cache_dir : path, optional
        Where the decoded cache lives (default $UNSEEN_FAST_CACHE or
        ~/.cache/unseen-fast).
    cache_budget_bytes : int, optional
        Memory budget for ``auto`` (default: a quarter of physical memory).
    workers : int, optional
        DataLoader workers (torchvision), DALI threads, file-reading threads
        (nvjpeg), or cache build threads.

    Returns
    -------
    An iterable with ``len()`` (batches), ``backend``, ``num_samples`` and
    ``skipped``; each item is images (B, 3, S, S), labels (B,) int64 and
    sample_ids (B,) int64, all on ``device``.
    """
    _check_loader_args(backend, image_size, dtype, batch_size, start_batch)
    rank, world_size = resolve_rank(rank, world_size)
    ids = as_id_array(ids, len(index))
    order = shard_order(ids, train=train, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    if backend == "auto":
        backend, reason = choose_backend(index, image_size, device=device, cache_budget_bytes=cache_budget_bytes)
        log.debug("data backend: %s (%s)", backend, reason)
    aug = Augment(image_size, train=train)
    common = dict(aug=aug, batch_size=batch_size, dtype=dtype, device=device, seed=seed, epoch=epoch,
                  rank=rank, drop_last=drop_last, start_batch=start_batch, skip_bad=skip_bad)
    return _open_backend(backend, index, order, common, cache_dir=cache_dir, workers=workers, progress=progress)


def check_backend(backend: str, index: ImageIndex) -> None:
    """Refuse a backend this machine cannot run, before a run writes anything;
    say (once, in the run's log) when a file decoder asked for will not be used."""
    if backend in ("dali", "nvjpeg") and index.in_memory:
        log.info("--backend %s decodes image files; %s is already in memory, so the decoded cache serves it",
                 backend, index.name)
    elif backend == "dali" and not dali_available():
        raise DataError("backend 'dali' needs nvidia-dali (pip install nvidia-dali-cuda120); "
                        "use --backend auto or torchvision")
    elif backend == "dali" and (other := first_non_jpeg(index)) is not None:
        raise DataError(f"backend 'dali' decodes JPEG datasets only, and {other} is not a JPEG: "
                        f"DALI's decoder kills the process on a damaged PNG, BMP or WebP file instead of raising; "
                        f"use --backend auto, nvjpeg or torchvision")


@functools.lru_cache(maxsize=4)  # per index object: make_loader asks every epoch, 0.2 s for ImageNet's names
def first_non_jpeg(index: ImageIndex) -> str | None:
    """The path of the first file whose name is not a JPEG's, or None. DALI 2.4's CPU
    decoder segfaults on damaged PNGs (all 6 folders of 300 PNGs with 5
    randomly damaged ones; a PNG cut short, 4 runs in 10), so DALI is kept to
    JPEG datasets: other formats go through the decoders that raise. By
    name: a damaged PNG named .JPEG (ImageNet has one PNG so named) still
    reaches DALI."""
    return next((index.file(i) for i, path in enumerate(index.paths) if not path.lower().endswith((".jpg", ".jpeg"))),
                None)


def _open_backend(backend: str, index: ImageIndex, order, common: dict, *, cache_dir, workers, progress):
    if backend == "nvjpeg" and not index.in_memory:
        return NvjpegLoader(index, order, num_threads=workers, **common)
    if backend in ("dali", "nvjpeg") and index.in_memory:  # decoders of files: images in memory need none
        log.debug("backend %s: %s is already in memory, the decoded cache serves it", backend, index.name)
        backend = "cache"
    if backend in ("cache", "resident"):
        cache = DecodedCache.open_or_build(index, common["aug"], cache_dir, workers=workers, progress=progress)
        if backend == "resident":
            return ResidentLoader(index, order, cache=cache, pixels=resident_pixels(index, cache, common["device"]),
                                  **common)
        return CacheLoader(index, order, cache=cache, **common)
    if backend == "dali":
        check_backend(backend, index)
        return DaliLoader(index, order, num_threads=workers, **common)
    return TorchvisionLoader(index, order, num_workers=2 if workers is None else workers, **common)


def _check_loader_args(backend: str, image_size: int, dtype, batch_size: int, start_batch: int) -> None:
    if backend not in BACKENDS:
        raise DataError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if image_size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    if dtype not in DTYPES:
        raise DataError(f"dtype must be one of {DTYPES}, got {dtype}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if start_batch < 0:
        raise DataError(f"start_batch must be >= 0, got {start_batch}")


def prepare_cache(index: ImageIndex, image_size: int, *, backend: str = "auto", device="cpu", cache_dir=None,
                  progress: bool = False) -> dict[int, str]:
    """Build the decoded cache now when ``backend`` (after ``auto``) will use
    it, so that worker processes started later do not each decode the data.
    Returns {sample id: reason} of the images that could not be decoded
    (empty when no cache is used: other backends meet them while loading)."""
    if backend == "auto":
        backend = choose_backend(index, image_size, device=device)[0]
    if backend in ("cache", "resident") and not index.in_memory:
        return DecodedCache.open_or_build(index, Augment(image_size, train=False), cache_dir, progress=progress).bad
    return {}
