"""Does a change keep the coreset? Prune builtin:digits and a 2,000-image
CIFAR-10 subset (../shared/datasets) with fixed seeds and save the coresets
(``save DIR``), or compare with saved ones (``compare DIR``). Run it before
and after a refactor on the same machine: training rounds differently on
other CPU models, so the coreset is only reproducible on one machine."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cases(work: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from data_fixtures import copy_subset

    from unseen_fast import ImageIndex, PruneConfig, TrainConfig

    cifar = copy_subset(work / "cifar" / "train", per_class=200)
    yield "digits", ImageIndex.digits(), PruneConfig(prune_rate=0.3, train=TrainConfig(image_size=8, threads=1))
    yield "cifar", ImageIndex.from_folder(cifar), PruneConfig(
        prune_rate=0.5, train=TrainConfig(epochs=4, batch_size=64, threads=1))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    from unseen_fast import prune

    mode, store = argv[0], Path(argv[1])
    store.mkdir(parents=True, exist_ok=True)
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, index, config in cases(Path(tmp)):
            out = Path(tmp) / f"run-{name}"
            shutil.rmtree(out, ignore_errors=True)
            prune(index, out=out, config=config)
            coreset = np.load(out / "coreset.npy")
            if mode == "save":
                np.save(store / f"{name}.npy", coreset)
                print(f"{name}: saved {len(coreset)} ids")
            else:
                equal = np.array_equal(np.load(store / f"{name}.npy"), coreset)
                same &= equal
                print(f"{name}: {'identical' if equal else 'DIFFERENT'} coreset ({len(coreset)} ids)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
