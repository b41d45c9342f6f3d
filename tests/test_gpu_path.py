"""The whole GPU path on small data, so that one run of the suite on a GPU
machine covers it: the loaders on the device, a training, the scoring pass,
`prune --gpus 1` (fold models concurrent on CUDA streams) twice with the
identical coreset, and --selection auto's proxies. Skipped without a GPU;
the CPU variants of each check live in the other test files.
UNSEEN_FAST_GPU_TESTS_ON=cpu runs this file on the CPU instead, to check
the file itself on a machine without a GPU."""
import os

import numpy as np
import pytest
import torch

from unseen_fast import ImageIndex, PruneConfig, TrainConfig, prune
from unseen_fast.data import make_loader
from unseen_fast.evaluate import score_samples
from unseen_fast.parallel import TrainJob, train_many
from unseen_fast.train import load_model

DEVICE = os.environ.get("UNSEEN_FAST_GPU_TESTS_ON", "cuda")
pytestmark = pytest.mark.cuda if DEVICE == "cuda" else []


def digits_train(**fields) -> TrainConfig:
    return TrainConfig(**{"image_size": 8, "epochs": 2, "batch_size": 128, **fields})


@pytest.mark.parametrize("backend", ["resident", "cache"])
@pytest.mark.parametrize("train", [True, False])
def test_loaders_deliver_every_sample_once_on_the_device(backend, train, tmp_path):
    digits = ImageIndex.digits()
    ids = np.random.default_rng(0).permutation(len(digits))[:1000]
    ld = make_loader(digits, ids, train=train, batch_size=96, image_size=8, backend=backend, device=DEVICE,
                     dtype=torch.bfloat16, cache_dir=tmp_path, seed=3)
    parts = list(ld)
    assert all(images.device.type == DEVICE and images.dtype == torch.bfloat16 for images, _, _ in parts)
    assert all(images.is_contiguous(memory_format=torch.channels_last) for images, _, _ in parts)
    got = torch.cat([sample_ids.cpu() for _, _, sample_ids in parts]).numpy()
    labels = torch.cat([labels.cpu() for _, labels, _ in parts]).numpy()
    if train:
        assert sorted(got.tolist()) == sorted(ids.tolist())
    else:
        assert got.tolist() == ids.tolist()
    assert labels.tolist() == digits.labels[got].tolist()


@pytest.mark.parametrize("folder, image_size, train", [("small_folder", 32, True), ("small_folder", 32, False),
                                                       ("square_folder", 72, False)])
def test_nvjpeg_decodes_files_on_the_device_like_the_cache(request, tmp_path, folder, image_size, train):
    """nvJPEG in one batched call per batch, then the cache's square and
    augmentation on the device: the cache backend's batches up to the
    decoders' IDCT differences (bit for bit on the CPU)."""
    index = ImageIndex.from_folder(request.getfixturevalue(folder))
    ids = np.random.default_rng(2).permutation(len(index))
    out = {}
    for backend in ("nvjpeg", "cache"):
        ld = make_loader(index, ids, train=train, batch_size=16, image_size=image_size, backend=backend,
                         device=DEVICE, dtype=torch.float32, cache_dir=tmp_path, seed=7)
        parts = list(ld)
        assert all(images.device.type == DEVICE for images, _, _ in parts)
        out[backend] = [torch.cat([p[i].cpu() for p in parts]) for i in range(3)]
    assert torch.equal(out["nvjpeg"][2], out["cache"][2]) and torch.equal(out["nvjpeg"][1], out["cache"][1])
    diff = (out["nvjpeg"][0] - out["cache"][0]).abs()
    print(f"{folder} @ {image_size}, train={train}: nvjpeg vs cache mean |diff| {diff.mean():.4f}, max {diff.max():.3f}")
    assert diff.mean() < 0.05  # about 3 uint8 levels in normalized units
    if DEVICE == "cpu":
        assert diff.max() == 0


def test_nvjpeg_training_crops_of_whole_images_on_the_device(tmp_path):
    """Large-image training crops from each whole decoded image, on the device."""
    from data_fixtures import dominant_colour_shares, striped_folder

    index = ImageIndex.from_folder(striped_folder(tmp_path / "striped"))
    parts = list(make_loader(index, np.arange(len(index)), train=True, batch_size=8, image_size=72, backend="nvjpeg",
                             device=DEVICE, dtype=torch.float32, cache_dir=tmp_path, seed=1))
    assert all(images.device.type == DEVICE for images, _, _ in parts)
    images = torch.cat([images.cpu() for images, _, _ in parts])
    assert images.shape == (len(index), 3, 72, 72)
    red, _, blue = dominant_colour_shares(images)
    assert red > 0.05 and blue > 0.05


def test_a_model_trained_on_the_gpu_learns_and_scores(tmp_path):
    digits = ImageIndex.digits()
    train_ids, held_out = np.arange(0, 1797, 2), np.arange(1, 1797, 2)
    config = digits_train(epochs=4, batch_size=64)
    train_many([TrainJob("gpu", train_ids, str(tmp_path / "gpu"), seed=0)], config, digits, device=DEVICE)
    model = load_model(tmp_path / "gpu", digits.num_classes, device=DEVICE)
    scored = score_samples([model], digits, held_out, config, "entropy", device=DEVICE)
    accuracy = float(np.nanmean(scored.correct))
    assert accuracy > 0.5, accuracy
    assert np.isfinite(scored.scores).all()


def test_prune_with_one_gpu_twice_gives_the_identical_coreset(tmp_path, monkeypatch):
    """gpus=1 (through the Python API, device left at its default): the fold
    models train concurrently on CUDA streams and are scored on the GPU;
    seeded inits, per-job generators and repeatable kernels make the run
    repeatable."""
    from unseen_fast import evaluate, parallel, pipeline, stage1

    calls = {"concurrently": [], "score": []}
    real_concurrently = parallel.concurrently
    monkeypatch.setattr(parallel, "concurrently", lambda jobs, config, index, device, *a, **k: (
        calls["concurrently"].append(str(device)), real_concurrently(jobs, config, index, device, *a, **k))[1])
    spy = lambda *a, **k: (calls["score"].append(str(k.get("device"))), evaluate.score_samples(*a, **k))[1]  # noqa: E731
    for module in (pipeline, stage1):  # the stage-1 and the later stages' scoring
        monkeypatch.setattr(module, "score_samples", spy)
    config = PruneConfig(prune_rate=0.3, folds=4, stages=2, train=digits_train())
    where = dict(gpus=1) if DEVICE == "cuda" else dict(device=DEVICE)
    first = prune(ImageIndex.digits(), out=tmp_path / "first", config=config, **where)
    second = prune(ImageIndex.digits(), out=tmp_path / "second", config=config, **where)
    assert np.array_equal(first.coreset, second.coreset)
    assert first["device"] == DEVICE
    if DEVICE == "cuda":  # the stream path itself ran, and nothing was scored on the CPU
        assert calls["concurrently"] and all(d.startswith("cuda") for d in calls["concurrently"]), calls
    assert calls["score"] and all(d.startswith(DEVICE) for d in calls["score"]), calls
    folds = [m for m in first["scoring_models"] if m["model"].startswith("fold")]
    assert len(folds) == 4 and all(m["accuracy"] > 0.2 for m in folds), folds  # chance is 0.1


def test_selection_auto_on_the_gpu(tmp_path):
    config = PruneConfig(prune_rate=0.3, selection="auto", train=digits_train())
    result = prune(ImageIndex.digits(), out=tmp_path / "run", config=config, device=DEVICE)
    report = result["auto_selection"]
    assert report["chosen"] in {"hard", "mix", "ccs", "random"}
    assert len(result.coreset) == result["coreset_size"] and (tmp_path / "run" / "validation.npy").exists()


def test_train_command_on_the_gpu(tmp_path, capsys):
    """`unseen-fast train` on the device, its validation report included
    (accuracy_report once crashed on device tensors)."""
    import json

    from unseen_fast.cli import main

    args = ["train", "--data", "builtin:digits", "--epochs", "2", "--image-size", "8", "--out", str(tmp_path / "run"),
            "--quiet"]
    assert main(args + (["--gpus", "1"] if DEVICE == "cuda" else ["--device", DEVICE])) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0.3 < report["top1"] <= 1 and len(report["per_class"]) == 10
    assert "validation top1" in capsys.readouterr().out


def test_nvjpeg_agrees_with_the_cache_on_cmyk_grayscale_and_truncated_jpegs(small_folder, tmp_path):
    """JPEGs that are not plain RGB or not whole: the GPU decoder must give
    what the CPU decoders give (a CMYK or grayscale file as RGB, a truncated
    one left out under skip_bad), not silently other pixels or a garbage
    image where libjpeg-turbo fails."""
    import shutil

    from PIL import Image

    root = tmp_path / "odd"
    shutil.copytree(small_folder, root)
    source = sorted((root / "cat").glob("*.jpg"))[0]
    rgb = Image.open(source).convert("RGB").resize((64, 48))
    rgb.convert("CMYK").save(root / "cat" / "cmyk.jpg", quality=95)
    rgb.convert("L").save(root / "cat" / "gray.jpg", quality=95)
    rgb.save(root / "cat" / "whole.jpg", quality=95)
    data = (root / "cat" / "whole.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(data[:len(data) // 2])
    index = ImageIndex.from_folder(root)
    odd = [index.paths.index(f"cat/{name}.jpg") for name in ("cmyk", "gray", "truncated", "whole")]
    ids = np.array(odd + [i for i in range(len(index)) if i not in odd][:12])
    out = {}
    for backend in ("nvjpeg", "cache"):
        ld = make_loader(index, ids, train=False, batch_size=8, image_size=32, backend=backend, device=DEVICE,
                         dtype=torch.float32, cache_dir=tmp_path / "cache", skip_bad=True)
        parts = list(ld)
        out[backend] = [torch.cat([p[i].cpu() for p in parts]) for i in (0, 2)]
    assert out["nvjpeg"][1].tolist() == out["cache"][1].tolist() == [i for i in ids.tolist() if i != odd[2]]
    diff = (out["nvjpeg"][0] - out["cache"][0]).abs()
    print(f"odd JPEGs: nvjpeg vs cache mean |diff| {diff.mean():.4f}, max {diff.max():.3f}")
    assert diff.mean() < 0.05  # as for plain JPEGs: the decoders' IDCT differences only
    if DEVICE == "cpu":
        assert diff.max() == 0
