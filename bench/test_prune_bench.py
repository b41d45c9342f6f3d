"""End-to-end UNSEEN pruning (K=4, J=2, P=0.3) against a straightforward
implementation of the same algorithm with the same network, epochs, batch
size and optimizer, written the way a user would: torchvision ImageFolder +
DataLoader (2 workers), float32 NCHW, F.cross_entropy, softmax entropy in
Python, torch.topk. One run:

    python -m pytest bench/test_prune_bench.py --benchmark-only --benchmark-columns=median,rounds

The dataset is a CIFAR-10 subset (PRUNE_BENCH_PER_CLASS images per class,
default 500; 5000 gives all 50,000 images) and PRUNE_BENCH_EPOCHS epochs
(default 2) so that the run fits a CI-sized machine; set both for the full
measurement.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from data_fixtures import copy_subset  # noqa: E402

from unseen_fast.data import ImageIndex  # noqa: E402
from unseen_fast.models import FastNet  # noqa: E402
from unseen_fast.pipeline import PruneConfig, prune  # noqa: E402
from unseen_fast.selection import stage_sizes  # noqa: E402
from unseen_fast.splits import fold_assignment  # noqa: E402
from unseen_fast.train import TrainConfig, lr_factor, parameter_groups  # noqa: E402

PER_CLASS = int(os.environ.get("PRUNE_BENCH_PER_CLASS", 500))
EPOCHS = int(os.environ.get("PRUNE_BENCH_EPOCHS", 2))
K, J, P, BATCH, LR = 4, 2, 0.3, 256, 0.05


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return copy_subset(tmp_path_factory.mktemp("prune") / "train", per_class=PER_CLASS)


def naive_unseen(root: Path) -> np.ndarray:
    """Algorithm 1, the straightforward way."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    train_set = ImageFolder(root, transform=v2.Compose([v2.PILToTensor(), v2.RandomCrop(32, padding=4),
                                                        v2.RandomHorizontalFlip(), *norm]))
    eval_set = ImageFolder(root, transform=v2.Compose([v2.PILToTensor(), *norm]))
    labels = np.array(train_set.targets)
    n = len(labels)

    def fit(ids, seed):
        torch.manual_seed(seed)
        model = FastNet(10)
        optimizer = torch.optim.SGD(parameter_groups(model, 5e-4), lr=LR, momentum=0.9, nesterov=True)
        steps = -(-len(ids) // BATCH)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps * EPOCHS, steps, "onecycle"))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_set, ids), batch_size=BATCH,
                                             shuffle=True, num_workers=2)
        model.train()
        for _ in range(EPOCHS):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                sched.step()
        return model.eval()

    @torch.no_grad()
    def entropy(model, ids):
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(eval_set, ids), batch_size=512, num_workers=2)
        out = []
        for x, _ in loader:
            p = torch.softmax(model(x), 1)
            out.append(-(p * torch.log(p.clamp_min(1e-30))).sum(1))
        return torch.cat(out).numpy()

    sizes = stage_sizes(n, P, J, 0.1)
    fold = fold_assignment(labels, K, "random", 0)
    total, count = np.zeros(n), np.zeros(n)
    for k in range(K):
        model = fit(np.flatnonzero(fold == k), k)
        rest = np.flatnonzero(fold != k)
        total[rest] += entropy(model, rest)
        count[rest] += 1
    scores = total / count
    chosen = torch.topk(torch.from_numpy(scores / scores.sum()), sizes[0]).indices.numpy()
    for stage in range(2, J + 1):
        model = fit(chosen, 1000 * stage)
        rest = np.setdiff1d(np.arange(n), chosen)
        picked = rest[torch.topk(torch.from_numpy(entropy(model, rest)), sizes[stage - 1]).indices.numpy()]
        chosen = np.concatenate([chosen, picked])
    return np.sort(chosen)


@pytest.mark.parametrize("variant", ["unseen-fast prune (ours)", "straightforward PyTorch"])
def test_prune_end_to_end(benchmark, dataset, tmp_path, variant):
    benchmark.group = f"UNSEEN K={K} J={J} P={P}: {10 * PER_CLASS} CIFAR-10 JPEGs, {EPOCHS} epochs per model"
    benchmark.extra_info.update(items=10 * PER_CLASS, unit="dataset img")
    rounds = iter(range(10))
    if "ours" in variant:
        benchmark.extra_info["role"] = "ours"
        index = ImageIndex.from_folder(dataset)
        config = PruneConfig(prune_rate=P, folds=K, stages=J, train=TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR))

        def run():
            summary = prune(index, out=tmp_path / str(next(rounds)), config=config)
            print("phases (s):", {k: round(v, 1) for k, v in summary["wall_time_s"].items()})
            return summary["coreset_size"]
    else:
        def run():
            return len(naive_unseen(dataset))
    size = benchmark.pedantic(run, rounds=1, iterations=1)
    assert size == int(10 * PER_CLASS * (1 - P))


@pytest.fixture(scope="module")
def prune_summary(dataset, tmp_path_factory):
    index = ImageIndex.from_folder(dataset)
    config = PruneConfig(prune_rate=P, folds=K, stages=J, train=TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR))
    return prune(index, out=tmp_path_factory.mktemp("phases") / "run", config=config)


def test_phase_rates_against_the_synthetic_step(benchmark, prune_summary):
    """Each phase's images per second in one prune, next to what the same
    model trains at on synthetic tensors already in memory (same batch,
    precision, layout), measured in the same run: the share of the
    model-bound speed that the data path and the loop leave."""
    from unseen_fast.constants import amp_dtype, input_dtype
    from unseen_fast.models import build_model

    amp = prune_summary["precision"]
    model = build_model("fastnet", 10, image_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, nesterov=True)
    images = torch.randn(BATCH, 3, 32, 32).to(input_dtype(amp)).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (BATCH,))
    steps = 10

    def synthetic():
        for _ in range(steps):
            with torch.autocast("cpu", dtype=amp_dtype(amp), enabled=amp != "off"):
                loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    benchmark.group = f"training img/s: prune phases vs the synthetic step (fastnet, batch {BATCH}, {amp})"
    benchmark.extra_info.update(items=steps * BATCH, unit="img", role="synthetic step")
    synthetic()  # warm-up
    benchmark.pedantic(synthetic, rounds=3, iterations=1)
    rate = steps * BATCH / benchmark.stats.stats.median
    wall, images_done = prune_summary["wall_time_s"], prune_summary["images_processed"]
    phases = {name: images_done[name] / wall[f"{name}_s"] for name in images_done if wall.get(f"{name}_s")}
    benchmark.extra_info.update(phase_img_per_s=phases, synthetic_img_per_s=rate)
    for name, phase_rate in phases.items():
        # scoring phases count each sample once, whatever the number of models: a rate, not a share
        share = f" = {phase_rate / rate:.0%} of the synthetic training step ({rate:,.0f} img/s)" \
            if name.endswith("_training") else " (samples scored per second)"
        print(f"{name}: {phase_rate:,.0f} img/s{share}")
