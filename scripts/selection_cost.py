"""Time the host selection step at ImageNet size: combining K fold models'
scores (each sample scored by the K-1 models that never saw it) and the
top-k. Usage: python scripts/selection_cost.py [N] [K]"""
import sys
import time

import numpy as np
import torch

from unseen_fast import ops
from unseen_fast.fold_scores import combine_scores

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_281_167
folds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
rng = np.random.default_rng(0)
fold = rng.integers(0, folds, n)
per_model = rng.random((folds, n)).astype(np.float32)
use = fold[None, :] != np.arange(folds)[:, None]
labels = torch.from_numpy(rng.integers(0, 1000, n))
for norm in ("rank", "zscore", "none"):
    tick = time.perf_counter()
    scores = combine_scores(per_model, use, norm)
    print(f"combine_scores {norm}: {time.perf_counter() - tick:.3f} s")
for balanced in (False, True):
    tick = time.perf_counter()
    ops.select_topk(ops.normalize(torch.from_numpy(scores)), int(0.7 * n), labels=labels, balanced=balanced)
    print(f"normalize + select_topk (k = 70%, balanced={balanced}): {time.perf_counter() - tick:.3f} s")
