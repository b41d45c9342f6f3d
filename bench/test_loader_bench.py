"""Images per second, decode + augmentation to a ready training batch
(normalized bfloat16, channels_last, on the CPU), one full pass each:

    python -m pytest bench/test_loader_bench.py --benchmark-only --benchmark-columns=median,iqr,rounds

Datasets: CIFAR-10 JPEGs (32x32) and ImageNet-size JPEGs made here by
upscaling CIFAR images to 500x375 and encoding at quality 90. Alternatives:
the DALI CPU pipeline, the resident dataset, the decoded cache and our torchvision fallback backend
(ours) against what a user writes without this package: torchvision's
ImageFolder (PIL decoding) + transforms.v2 in a DataLoader with 2 workers.
The cache's one-time build is timed separately.

UNSEEN_FAST_BENCH_DEVICE=cuda delivers the batches to the GPU instead (what
the nvjpeg backend is for: there it decodes with nvJPEG); workers = cores.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from data_fixtures import copy_subset, upscaled_folder  # noqa: E402

from unseen_fast.data import ImageIndex, make_loader  # noqa: E402
from unseen_fast.data.cache import DecodedCache  # noqa: E402
from unseen_fast.data.dali_loader import dali_available  # noqa: E402
from unseen_fast.data.transforms import Augment  # noqa: E402

DATASETS = {  # name: (builder, images, image_size)
    "CIFAR-10 JPEG 32x32": (lambda d: copy_subset(d, per_class=1000), 10_000, 32),
    "ImageNet-size JPEG 500x375": (lambda d: upscaled_folder(d, (500, 375), per_class=128, classes=8), 1024, 224),
}
BACKENDS = ["dali", "resident", "cache", "nvjpeg", "torchvision", "user ImageFolder DataLoader"]
DEVICE = os.environ.get("UNSEEN_FAST_BENCH_DEVICE", "cpu")
WORKERS = os.cpu_count() or 2


@pytest.fixture(scope="module", params=list(DATASETS))
def dataset(request, tmp_path_factory):
    build, count, image_size = DATASETS[request.param]
    root = build(tmp_path_factory.mktemp("bench") / "train")
    index = ImageIndex.from_folder(root)
    assert len(index) == count
    cache_dir = tmp_path_factory.mktemp("cache")
    DecodedCache.open_or_build(index, Augment(image_size, train=True), cache_dir)  # one-time build
    return request.param, index, image_size, cache_dir


def user_imagefolder_pass(index, image_size, epoch):
    """The usual training loader: ImageFolder + v2 transforms, 2 workers."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    if image_size <= 64:
        augment = [v2.RandomCrop(image_size, padding=image_size // 8), v2.RandomHorizontalFlip()]
    else:
        augment = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    transform = v2.Compose([v2.PILToTensor(), *augment, v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = ImageFolder(index.root, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True, num_workers=WORKERS,
                                         generator=torch.Generator().manual_seed(epoch),
                                         pin_memory=DEVICE == "cuda")
    count = 0
    for images, labels in loader:
        images = images.to(DEVICE, non_blocking=True).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        count += len(labels)
    assert count == len(index)


def one_pass(index, image_size, backend, cache_dir, epoch):
    if backend == "user ImageFolder DataLoader":
        return user_imagefolder_pass(index, image_size, epoch)
    count = 0
    for images, labels, ids in make_loader(index, np.arange(len(index)), train=True, batch_size=256,
                                           image_size=image_size, backend=backend, dtype=torch.bfloat16,
                                           seed=0, epoch=epoch, cache_dir=cache_dir, workers=WORKERS,
                                           device=DEVICE):
        count += len(ids)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    assert count == len(index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_throughput(benchmark, dataset, backend):
    name, index, image_size, cache_dir = dataset
    if backend == "dali" and not dali_available():
        pytest.skip("nvidia-dali is not installed")
    benchmark.group = f"loader {name} -> {image_size}px train batch"
    benchmark.extra_info.update(items=len(index), unit="img")
    if not backend.startswith("user"):
        benchmark.extra_info["role"] = "ours"
    one_pass(index, image_size, backend, cache_dir, epoch=0)  # warm-up: page cache, DALI libs, workers
    epochs = iter(range(1, 100))
    benchmark.pedantic(lambda: one_pass(index, image_size, backend, cache_dir, next(epochs)),
                       rounds=3, iterations=1)


def test_cache_build(benchmark, dataset, tmp_path):
    """The cache's one-time cost: decode every image into the array."""
    name, index, image_size, _ = dataset
    benchmark.group = f"cache build (one-time) {name}"
    benchmark.extra_info.update(items=len(index), unit="img")
    rounds = iter(range(100))
    benchmark.pedantic(lambda: DecodedCache.open_or_build(index, Augment(image_size, train=True),
                                                          tmp_path / str(next(rounds)), workers=2),
                       rounds=2, iterations=1)


PNG_SIZES = {"32x32": (32, 32), "500x375": (500, 375)}


@pytest.fixture(scope="module", params=list(PNG_SIZES))
def png_files(request, tmp_path_factory):
    """256 PNGs of CIFAR images (upscaled for the large size), as bytes."""
    import io

    from PIL import Image

    folder = copy_subset(tmp_path_factory.mktemp("png") / "train", per_class=26)
    paths = sorted(p for p in folder.rglob("*.jpg"))[:256]
    size = PNG_SIZES[request.param]
    encoded = []
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").resize(size, Image.BICUBIC).save(buffer, format="PNG")
        encoded.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return request.param, encoded


@pytest.mark.parametrize("decoder", ["ours (Pillow)", "torchvision.io.decode_image"])
def test_png_decode(benchmark, png_files, decoder):
    """PNGs are decoded by Pillow because torchvision's decode_png kills the
    process on damaged pixel data (README, Data): this is what that costs,
    one thread, against torchvision's decoder on the same bytes."""
    from torchvision.io import ImageReadMode, decode_image

    from unseen_fast.data.decode import decode_bytes

    size, encoded = png_files
    benchmark.group = f"PNG decode {size}, one thread"
    benchmark.extra_info.update(items=len(encoded), unit="img")
    if decoder.startswith("ours"):
        benchmark.extra_info["role"] = "ours"
        decode = lambda data: decode_bytes(data, "bench.png")  # noqa: E731
    else:
        decode = lambda data: decode_image(data, mode=ImageReadMode.RGB)  # noqa: E731
    benchmark.pedantic(lambda: [decode(data) for data in encoded], rounds=5, iterations=1, warmup_rounds=1)
