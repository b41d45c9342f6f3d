"""The backends beyond the common contract (tests/test_data_loaders.py):
nvjpeg (GPU decoding without DALI, run here on the CPU) and resident (the
dataset held on the device), against the cache backend."""
import dataclasses

import numpy as np
import pytest
import torch

from data_fixtures import collect, loader
from unseen_fast.data import ImageIndex, choose_backend
from unseen_fast.data.decode import decode_bytes, decode_file
from unseen_fast.train import TrainConfig


# ------------------------------------------------------------ nvjpeg backend
@pytest.mark.parametrize("folder, image_size, train", [("small_folder", 32, True), ("small_folder", 32, False),
                                                       ("square_folder", 72, False)])
def test_nvjpeg_batches_equal_the_cache_batches_on_the_cpu(request, cache_dir, folder, image_size, train,
                                                           monkeypatch):
    """Same decoder on the CPU, same square, same per-batch augmentation:
    bit for bit, mid-epoch resume included; every JPEG in the batched call.
    (Training crops of large images differ by design: the next test.)"""
    from unseen_fast.data import nvjpeg_loader

    index = ImageIndex.from_folder(request.getfixturevalue(folder))
    per_file = []
    monkeypatch.setattr(nvjpeg_loader, "decode_bytes", lambda *a: per_file.append(a) or decode_bytes(*a))
    ids = np.random.default_rng(1).permutation(len(index))
    kwargs = dict(train=train, image_size=image_size, batch_size=10, seed=4, epoch=2)
    for start_batch in (0, 2):
        nv = collect(loader(index, ids, "nvjpeg", cache_dir, start_batch=start_batch, **kwargs))
        cache = collect(loader(index, ids, "cache", cache_dir, start_batch=start_batch, **kwargs))
        assert all(torch.equal(a, b) for a, b in zip(nv, cache))
    assert per_file == []  # no file left the batched decode_jpeg call


def test_nvjpeg_training_crops_come_from_the_whole_image(tmp_path, cache_dir):
    """Random-resized crops of large images are taken from the whole decoded
    image, as torchvision and DALI take them: on red | green | blue striped
    images they show all three colours; the cache's crops (from its center
    square) only green."""
    from data_fixtures import dominant_colour_shares, striped_folder

    index = ImageIndex.from_folder(striped_folder(tmp_path / "striped"))
    shares = {}
    for backend in ("nvjpeg", "cache", "torchvision"):
        images = torch.cat([collect(loader(index, np.arange(len(index)), backend, cache_dir, train=True, image_size=72,
                                           batch_size=8, seed=1, epoch=epoch))[0] for epoch in range(4)])
        assert images.shape == (4 * len(index), 3, 72, 72)
        shares[backend] = dominant_colour_shares(images)
    red, green, blue = shares["nvjpeg"]
    assert red > 0.1 and blue > 0.1 and green > 0.2, shares
    assert shares["cache"][0] < 0.01 and shares["cache"][2] < 0.01, shares
    # the same crop distribution as torchvision's RandomResizedCrop on the whole image (64 crops: loose)
    assert np.allclose(shares["nvjpeg"], shares["torchvision"], atol=0.12), shares


def test_nvjpeg_decodes_other_formats_on_the_cpu(small_folder, tmp_path, cache_dir):
    import shutil

    from torchvision.io import write_png

    root = tmp_path / "mixed"
    shutil.copytree(small_folder, root)
    jpeg = root / "cat" / "0001.jpg"
    write_png(decode_file(str(jpeg)), str(root / "cat" / "0001b.png"))  # the same pixels, losslessly
    index = ImageIndex.from_folder(root)
    a, b = index.paths.index("cat/0001.jpg"), index.paths.index("cat/0001b.png")
    images, _, got = collect(loader(index, np.array([a, b]), "nvjpeg", cache_dir, train=False))
    assert got.tolist() == [a, b] and torch.equal(images[0], images[1])


def test_auto_picks_nvjpeg_on_a_gpu_without_dali(small_index, monkeypatch):
    from unseen_fast.data import loader as loader_module

    monkeypatch.setattr(loader_module, "dali_available", lambda: False)
    monkeypatch.setattr(loader_module, "gpu_jpeg_decoding", lambda device: True)
    backend, why = choose_backend(small_index, 224, device="cuda", cache_budget_bytes=1000)
    assert backend == "nvjpeg" and "DALI is not installed: JPEGs decoded on the GPU" in why
    assert choose_backend(small_index, 224, device="cpu", cache_budget_bytes=1000)[0] == "torchvision"
    monkeypatch.setattr(loader_module, "gpu_jpeg_decoding", lambda device: False)  # a CPU-only torchvision
    assert choose_backend(small_index, 224, device="cuda", cache_budget_bytes=1000)[0] == "torchvision"


def test_auto_keeps_dali_to_jpeg_datasets(small_folder, tmp_path, monkeypatch):
    """DALI's decoder kills the process on damaged PNGs: auto passes over it
    for a dataset with one PNG (nvjpeg on a GPU, torchvision on the CPU)."""
    import shutil

    from unseen_fast.data import loader as loader_module

    monkeypatch.setattr(loader_module, "dali_available", lambda: True)
    assert choose_backend(ImageIndex.from_folder(small_folder), 224, cache_budget_bytes=1000)[0] == "dali"
    root = tmp_path / "mixed"
    shutil.copytree(small_folder, root)
    shutil.copy(next((root / "cat").iterdir()), root / "cat" / "zz.png")  # a JPEG named .png is enough
    index = ImageIndex.from_folder(root)
    backend, why = choose_backend(index, 224, cache_budget_bytes=1000)
    assert backend == "torchvision" and f"DALI decodes JPEG datasets only ({root / 'cat' / 'zz.png'} is not one)" \
        in why and "not installed" not in why, why
    monkeypatch.setattr(loader_module, "gpu_jpeg_decoding", lambda device: True)
    assert choose_backend(index, 224, device="cuda", cache_budget_bytes=1000)[0] == "nvjpeg"


def test_file_decoders_of_in_memory_images_use_the_cache_and_a_missing_dali_is_refused_first(
        small_index, tmp_path, monkeypatch, caplog):
    """dali and nvjpeg decode files: on images already in memory both serve
    the decoded cache (dali used to fail after the run folder was claimed),
    and the run's log says so (it said so only at debug level); dali asked
    for where it is not installed stops prune and train before --out exists."""
    import logging

    from unseen_fast.cli import main
    from unseen_fast.data import DataError, check_backend, loader as loader_module, make_loader
    from unseen_fast.pipeline import PruneConfig, prune

    digits = ImageIndex.digits()
    for backend in ("dali", "nvjpeg"):
        batches = make_loader(digits, np.arange(40), train=False, batch_size=20, image_size=8, backend=backend,
                              cache_dir=tmp_path / "cache")
        assert batches.backend == "cache" and len(list(batches)) == 2
        with caplog.at_level(logging.INFO, logger="unseen_fast.data"):
            check_backend(backend, digits)
        assert f"--backend {backend} decodes image files; the built-in digits dataset is already in memory, " \
               f"so the decoded cache serves it" in caplog.text
    monkeypatch.setattr(loader_module, "dali_available", lambda: False)
    assert main(["train", "--data", str(small_index.root), "--out", str(tmp_path / "train"), "--backend", "dali",
                 "--epochs", "1", "--quiet"]) == 2
    assert not (tmp_path / "train").exists()
    config = PruneConfig(prune_rate=0.3, folds=2, train=dataclasses.replace(TrainConfig(epochs=1), backend="dali"))
    with pytest.raises(DataError, match="backend 'dali' needs nvidia-dali .* use --backend auto"):
        prune(small_index, out=tmp_path / "run", config=config)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ resident backend
@pytest.mark.parametrize("image_size", [8, 20])  # pad-and-crop, and random-resized crops of the 8x8 digits
def test_resident_batches_equal_the_cache_batches(image_size):
    """The same random numbers per batch (seeded by batch number): the
    resident backend delivers the cache's pixels bit for bit, for several
    epochs, a shuffled subset and a batch size that leaves a short last
    batch, and after a mid-epoch resume; so which backend ``auto`` picks
    (it depends on the device's memory) cannot change a training."""
    digits = ImageIndex.digits()
    ids = np.random.default_rng(3).permutation(len(digits))[:1000]
    for epoch, start_batch in ((0, 0), (1, 0), (2, 3)):
        kwargs = dict(train=True, seed=5, epoch=epoch, image_size=image_size, batch_size=96, start_batch=start_batch)
        resident = collect(loader(digits, ids, "resident", None, **kwargs))
        cache = collect(loader(digits, ids, "cache", None, **kwargs))
        assert len(resident[2]) == len(ids) - 96 * start_batch
        assert all(torch.equal(a, b) for a, b in zip(resident, cache))


def test_resident_batches_equal_the_cache_batches_with_bad_images(small_folder, tmp_path, cache_dir):
    """With unreadable images left out (--skip-bad) both backends skip the
    same ids and augment what is left alike."""
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(small_folder, root)
    for name in ("cat/0003.jpg", "dog/0001.jpg"):  # valid headers, cut short: found when the cache is built
        (root / name).write_bytes((root / name).read_bytes()[:300])
    index = ImageIndex.from_folder(root)
    ids = np.random.default_rng(0).permutation(len(index))
    kwargs = dict(train=True, seed=1, epoch=4, batch_size=16, skip_bad=True)
    resident = collect(loader(index, ids, "resident", cache_dir, **kwargs))
    cache = collect(loader(index, ids, "cache", cache_dir, **kwargs))
    assert len(resident[2]) == len(index) - 2
    assert all(torch.equal(a, b) for a, b in zip(resident, cache))


def test_resident_dataset_is_uploaded_once_and_shared(small_index, cache_dir):
    from unseen_fast.data import release_resident

    release_resident()
    first = loader(small_index, np.arange(20), "resident", cache_dir, train=True)
    second = loader(small_index, np.arange(40, 60), "resident", cache_dir, train=False)
    assert first.pixels is second.pixels  # every loader of this device reads the one tensor
    assert first.pixels.shape == (len(small_index), 32, 32, 3) and first.pixels.dtype == torch.uint8
    release_resident()
    assert loader(small_index, np.arange(5), "resident", cache_dir, train=False).pixels is not first.pixels
