"""Replay --selection auto's proxy step on the cells of an experiment.

The cells' stage-1 fold models and scores come from the experiment's shared
folder, so each replay trains only the proxies (seconds on CPU) and prints
which strategy auto picks and every proxy's validation accuracy; no final
training. Used to compare proxy designs (docs/RESULTS.md, --selection auto):

    python scripts/auto_selection_study.py runs/selection-auto-cpu --out runs/auto-study/new
    python scripts/auto_selection_study.py runs/selection-auto-cpu --out runs/auto-study/b128 --min-steps 1

--min-steps / --replicas / --margin-sd / --start / --finetune-lr / --proxy-folds override the module's constants.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unseen_fast import auto_selection  # noqa: E402
from unseen_fast.data import open_index  # noqa: E402
from unseen_fast.models import default_image_size  # noqa: E402
from unseen_fast.experiment import Grid, _prune_config, _split  # noqa: E402
from unseen_fast.pipeline import prune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path, help="an experiment folder whose grid has an auto method")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--min-steps", type=int, default=auto_selection.PROXY_MIN_STEPS)
    parser.add_argument("--replicas", type=int, default=auto_selection.RANDOM_REPLICAS)
    parser.add_argument("--margin-sd", type=float, default=auto_selection.MARGIN_SD)
    parser.add_argument("--start", choices=("fold", "scratch"), default=auto_selection.PROXY_START)
    parser.add_argument("--proxy-folds", type=int, default=auto_selection.PROXY_FOLDS)
    parser.add_argument("--finetune-lr", type=float, default=auto_selection.PROXY_FINETUNE_LR)
    parser.add_argument("--budget", type=float, default=None, help="--auto-budget (default: the grid's)")
    parser.add_argument("--matched-epochs", action="store_true",
                        help="proxies train the final epochs on a smaller share of each candidate")
    parser.add_argument("--balanced-shrink", action="store_true",
                        help="proxies shrink epochs and samples by the same factor")
    args = parser.parse_args()
    if args.balanced_shrink:
        def plan(images, k, count, budget, cap):
            shrink = min(1.0, (budget * images / count / (k * cap)) ** 0.5)
            epochs = max(1, int(round(cap * shrink)))
            return epochs, min(k, int(budget * images // count) // epochs)
        auto_selection.proxy_plan = plan
    if args.matched_epochs:
        auto_selection.proxy_plan = lambda images, k, count, budget, cap: (
            cap, min(k, int(budget * images // count) // cap))
    auto_selection.PROXY_MIN_STEPS = args.min_steps
    auto_selection.RANDOM_REPLICAS = args.replicas
    auto_selection.MARGIN_SD = args.margin_sd
    auto_selection.PROXY_START = args.start
    auto_selection.PROXY_FINETUNE_LR = args.finetune_lr
    auto_selection.PROXY_FOLDS = args.proxy_folds

    grid = Grid(**json.loads((args.experiment / "grid.json").read_text()))
    index = open_index(grid.data, file_list=grid.file_list)
    train_index, _, _ = _split(grid, index, args.experiment)
    image_size = grid.prune_train.get("image_size") or default_image_size(index)
    rows = []
    for seed in grid.seeds:
        for rate in grid.prune_rates:
            spec = dict(grid.methods[args.method], **({"auto_budget": args.budget} if args.budget else {}))
            config = _prune_config(spec, rate, seed, grid.prune_train, image_size)
            run = args.out / f"p{rate}" / f"seed{seed}"
            tick = time.perf_counter()
            summary = prune(train_index, out=run, config=config, resume=(run / "config.json").exists(),
                            share_dir=args.experiment / "shared")
            report = summary["auto_selection"]
            accuracy = {c["name"]: c["validation_accuracy"] for c in report["candidates"]}
            probability = {c["name"]: c.get("validation_label_probability") for c in report["candidates"]}
            rows.append(dict(rate=rate, seed=seed, chosen=report["chosen"], **accuracy,
                             replicas=report["candidates"][-1].get("replica_accuracy"),
                             label_probability=probability,
                             margin=report["margin"], batch=report.get("proxy_batch_size"),
                             seconds=time.perf_counter() - tick))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "study.json").write_text(json.dumps(rows, indent=1))
    for rate in grid.prune_rates:
        picks = [r["chosen"] for r in rows if r["rate"] == rate]
        names = [c for c in rows[0] if c in {name for name, _, _ in auto_selection.CANDIDATES}]
        means = {name: np.mean([r[name] for r in rows if r["rate"] == rate]) for name in names}
        print(f"p{rate}: chosen {picks}; mean proxy accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
