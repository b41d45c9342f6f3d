"""`unseen-fast demo`: the ops on random logits, checked against the float64
reference and timed against eager PyTorch."""
from __future__ import annotations

import time

import torch

from unseen_fast import ops, reference
from unseen_fast.errors import UserError
from unseen_fast.parallel import training_device


def run_demo(*, samples: int, classes: int, keep: float, seed: int, device_name: str) -> bool:
    """Score random logits with every method, normalize, select, check against
    the float64 reference and time the fused op against eager PyTorch
    (printed); True when the results match the reference."""
    if samples < 1 or classes < 2:  # one class: every entropy is 0, nothing to rank by
        raise UserError(f"need --samples >= 1 and --classes >= 2, got {samples}, {classes}")
    if not 0 < keep <= 1:
        raise UserError(f"--keep must be in (0, 1], got {keep}")
    device = training_device(device_name, None, None)
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(samples, classes, generator=gen) * 3).to(device)
    labels = torch.randint(0, classes, (samples,), generator=gen).to(device)

    start = time.perf_counter()
    scores = ops.score(logits, labels, ops.METHODS)
    fused_s = time.perf_counter() - start
    start = time.perf_counter()
    reference.score(logits, labels, ops.METHODS, dtype=torch.float32)  # what a user would write, timed
    eager_s = time.perf_counter() - start
    exact = reference.score(logits, labels, ops.METHODS)
    err = (scores.double() - exact).abs().max().item()

    k = max(1, round(samples * keep))  # --keep 0.7 of 1 sample keeps it, not none
    entropy = scores[:, 0].contiguous()
    kept = ops.select_topk(ops.normalize(entropy), k)
    same = torch.equal(kept.cpu(), reference.select_topk(entropy, k).cpu())
    print(f"scored {samples} x {classes} logits on {device} with {len(ops.METHODS)} methods: "
          f"fused {fused_s * 1e3:.1f} ms, eager float32 PyTorch {eager_s * 1e3:.1f} ms "
          f"(first call of each, includes warm-up)")
    print(f"max |error| vs float64 reference: {err:.2e}")
    for name, col in zip(ops.METHODS, scores.T):
        print(f"  {name:<17} mean {col.mean().item():8.4f}  min {col.min().item():8.4f}  max {col.max().item():8.4f}")
    what = "the highest-entropy sample" if k == 1 else f"the {k} highest-entropy samples"
    print(f"kept {what} of {samples} (--keep {keep:g}); matches the reference selection: {same}")
    return same and err < 1e-4
