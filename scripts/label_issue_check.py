"""Precision and recall of label_issues.csv: flip a known share of labels
(each to a uniformly drawn other class), prune, and compare the report with
the flipped samples.

    python scripts/label_issue_check.py digits [--flip 0.1] [--seeds 0 1 2]
    python scripts/label_issue_check.py cifar --images 10000 [--epochs 6]

cifar reads ../shared/datasets (CIFAR-10 training JPEGs, extracted once
into .cache/datasets by the test fixtures)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def flipped(index, share: float, seed: int):
    """A copy of ``index`` with ``share`` of its labels moved to another class, and the flipped ids."""
    from unseen_fast import ImageIndex

    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(index), size=int(round(share * len(index))), replace=False))
    labels = index.labels.copy()
    labels[ids] = (labels[ids] + rng.integers(1, index.num_classes, size=len(ids))) % index.num_classes
    copy = ImageIndex(root=index.root, paths=index.paths, labels=labels, classes=index.classes,
                      source=f"{index.source} with {len(ids)} labels flipped (seed {seed})", images=index.images)
    return copy, ids


def measure(index, config, share: float, seed: int, work: Path) -> dict:
    from unseen_fast import prune

    noisy, truth = flipped(index, share, seed)
    tick = time.perf_counter()
    prune(noisy, out=work / f"run{seed}", config=config)
    np.save(work / f"run{seed}" / "flipped_ids.npy", truth)
    found = np.flatnonzero(np.load(work / f"run{seed}" / "label_issues.npy"))
    hits = np.intersect1d(found, truth).size
    return dict(seed=seed, flipped=len(truth), reported=len(found), correct=hits,
                precision=hits / max(len(found), 1), recall=hits / max(len(truth), 1),
                seconds=time.perf_counter() - tick)


def dataset(name: str, images: int, work: Path):
    from unseen_fast import ImageIndex

    if name == "digits":
        return ImageIndex.digits()
    sys.path.insert(0, str(REPO / "tests"))
    from data_fixtures import copy_subset

    return ImageIndex.from_folder(copy_subset(work / "cifar" / "train", per_class=images // 10))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", choices=["digits", "cifar"])
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    from unseen_fast import PruneConfig, TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        index = dataset(args.data, args.images, work)
        train = TrainConfig(image_size=8) if args.data == "digits" else TrainConfig(epochs=6, batch_size=128)
        if args.epochs:
            train.epochs = args.epochs
        config = PruneConfig(prune_rate=0.3, stages=1, train=train)
        rows = [measure(index, config, args.flip, seed, work) for seed in args.seeds]
    for row in rows:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"{args.data}, {len(index)} images, {args.flip:.0%} flipped, {len(rows)} seeds: precision "
          f"{np.mean([r['precision'] for r in rows]):.3f}, recall {np.mean([r['recall'] for r in rows]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
