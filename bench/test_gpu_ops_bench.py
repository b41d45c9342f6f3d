"""The CUDA ops against the hardware and plain PyTorch, in one run (issue 15's
targets). Skipped without a GPU.

    python -m pytest bench/test_gpu_ops_bench.py --benchmark-only --benchmark-columns=median,iqr,rounds

Each timed call enqueues REPS operations and synchronizes once, so launch
and sync overheads do not dominate small shapes; the rates in the summary
are per operation. A device copy of the same tensor is the bandwidth
reference: its bytes count the read and the write, the score op's the one
read of the logits, so "GB/s" compares like with like.
UNSEEN_FAST_BENCH_DEVICE=cpu runs the same file on the CPU at 1/100 size
(to check the file itself on a machine without a GPU; not a speed figure).
"""
import os

import pytest
import torch
import torch.nn.functional as F

from unseen_fast import ops
from unseen_fast.data.transforms import MEAN, STD, normalization_table
from unseen_fast.fused_loss import cross_entropy_with_stats

DEVICE = os.environ.get("UNSEEN_FAST_BENCH_DEVICE", "cuda")
SCALE = 100 if DEVICE == "cpu" else 1
REPS = 1 if DEVICE == "cpu" else 20
ALL = list(ops.METHODS)

pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="GPU benchmarks need a CUDA device")


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(benchmark, fn, nbytes=None, items=None, role=None, rounds=10):
    """Benchmarks REPS calls of fn and one sync; rates per call."""
    def run():
        for _ in range(REPS):
            fn()
        sync()
    run()  # warm-up: allocator, cuBLAS/cuDNN handles, torch.compile
    if nbytes:
        benchmark.extra_info["bytes"] = nbytes * REPS
    if items:
        benchmark.extra_info["items"] = items * REPS
    if role:
        benchmark.extra_info["role"] = role
    benchmark.extra_info["reps_per_round"] = REPS
    benchmark.pedantic(run, rounds=rounds, iterations=1)


SCORE_CASES = {  # name: (N, C, dtype)
    "200k x 1000 float32": (200_000, 1000, torch.float32),
    "200k x 1000 bfloat16": (200_000, 1000, torch.bfloat16),
    "1M x 10 float32": (1_000_000, 10, torch.float32),
    "50k x 32000 bfloat16": (50_000, 32_000, torch.bfloat16),
}


@pytest.fixture(scope="module", params=list(SCORE_CASES))
def score_case(request):
    n, c, dtype = SCORE_CASES[request.param]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    logits = (torch.randn(n // SCALE, c, generator=gen, device=DEVICE) * 3).to(dtype)
    labels = torch.randint(0, c, (n // SCALE,), generator=gen, device=DEVICE)
    # the same values, contiguous, one element off a 16-byte boundary: no 16-byte loads, no shared-memory tile
    shifted = torch.empty(logits.numel() + 1, dtype=dtype, device=DEVICE)[1:].view_as(logits).copy_(logits)
    return request.param, logits, labels, shifted


def plain_scores(logits, labels):
    """The same outputs in float32 PyTorch ops (what a user would write)."""
    z = logits.float()
    logp = torch.log_softmax(z, 1)
    p = logp.exp()
    top2 = p.topk(2, 1).values
    p_y = p.gather(1, labels[:, None]).squeeze(1)
    onehot = F.one_hot(labels, z.shape[1]).float()
    other = p.scatter(1, labels[:, None], float("-inf")).amax(1)
    return torch.stack([-(p * logp).sum(1), -logp.gather(1, labels[:, None]).squeeze(1), 1 - top2[:, 0],
                        1 - (top2[:, 0] - top2[:, 1]), (p - onehot).norm(dim=1), other - p_y,
                        (p.argmax(1) == labels).float()], 1)


SCORERS = {
    "fused score, all methods (ours)": lambda z, y: ops.score(z, y, ALL, check_labels=False),
    "fused score, all methods, base off 16 bytes (ours, scalar loads)":
        lambda z, y: ops.score(z, y, ALL, check_labels=False),
    "fused score, entropy (ours)": lambda z, y: ops.score(z, None, ["entropy"]),
    "plain PyTorch, all methods": plain_scores,
    "device copy of the logits": lambda z, y: z.clone(),
}


@pytest.mark.parametrize("variant", list(SCORERS))
def test_score_bandwidth(benchmark, score_case, variant):
    name, logits, labels, shifted = score_case
    logits = shifted if "off 16 bytes" in variant else logits
    benchmark.group = f"score {name} on {DEVICE}"
    nbytes = logits.numel() * logits.element_size()
    copy = "copy" in variant
    timed(benchmark, lambda: SCORERS[variant](logits, labels), nbytes=2 * nbytes if copy else nbytes,
          role="ours" if "ours" in variant else None)


SELECT_SIZES = [50_000, 1_281_167, 10_000_000]


@pytest.mark.parametrize("fraction", [0.3, 0.7])
@pytest.mark.parametrize("n", SELECT_SIZES)
@pytest.mark.parametrize("variant", ["select_topk (ours)", "select_topk_deferred (ours, no sync)",
                                     "torch.topk sorted=False"])
def test_select(benchmark, n, fraction, variant):
    scores = torch.rand(n // SCALE, generator=torch.Generator(device=DEVICE).manual_seed(0), device=DEVICE)
    k = int(scores.numel() * fraction)
    benchmark.group = f"select N={n} k={fraction:.0%} on {DEVICE}"
    if "deferred" in variant:
        timed(benchmark, lambda: ops.select_topk_deferred(scores, k)[0], items=scores.numel(), role="ours")
    elif "ours" in variant:
        timed(benchmark, lambda: ops.select_topk(scores, k), items=scores.numel(), role="ours")
    else:
        timed(benchmark, lambda: torch.topk(scores, k, sorted=False), items=scores.numel())


def per_class_topk(scores, labels, fraction, classes):
    """Balanced selection as a user writes it: one torch.topk per class."""
    picked = []
    for c in range(classes):
        members = (labels == c).nonzero().squeeze(1)
        quota = int(round(members.numel() * fraction))
        picked.append(members[torch.topk(scores[members], quota, sorted=False).indices])
    return torch.cat(picked)


@pytest.mark.parametrize("scores_kind", ["uniform", "two values"])
@pytest.mark.parametrize("classes", [10, 1000])
@pytest.mark.parametrize("n", [1_281_167])  # ImageNet-size; the per-class loop makes 10M too long for the GPU check's step
@pytest.mark.parametrize("variant", ["select_topk balanced (ours)", "select_topk_deferred balanced (ours, no sync)",
                                     "per-class torch.topk loop"])
def test_balanced_select(benchmark, n, classes, scores_kind, variant):
    """Per-class quotas at k = 70%. "two values" (0/1 scores such as
    `correct`, or all-equal first-stage scores) sends whole warps to one
    histogram bucket of a class for several radix passes: the case the
    warp-aggregated atomics (one per distinct bucket) are for."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    count = n // SCALE
    scores = torch.rand(count, generator=gen, device=DEVICE)
    if scores_kind == "two values":
        scores = (scores > 0.5).float()
    labels = torch.randint(0, classes, (count,), generator=gen, device=DEVICE)
    k = int(count * 0.7)
    benchmark.group = f"balanced select N={n} {classes} classes {scores_kind} k=70% on {DEVICE}"
    if "deferred" in variant:
        fn = lambda: ops.select_topk_deferred(scores, k, labels=labels, balanced=True, num_classes=classes)[0]
    elif "ours" in variant:
        fn = lambda: ops.select_topk(scores, k, labels=labels, balanced=True)
    else:
        fn = lambda: per_class_topk(scores, labels, 0.7, classes)
    timed(benchmark, fn, items=count, role="ours" if "ours" in variant else None, rounds=5)


LOSS_SHAPES = [(4096, 1000), (65536, 10), (8192, 32000)]


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant", ["loss with stats (ours)", "F.cross_entropy + separate score",
                                     "F.cross_entropy alone"])
def test_loss(benchmark, shape, variant):
    n, c = shape
    dtype = torch.bfloat16 if c > 10_000 else torch.float32
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    logits = torch.randn(n // SCALE, c, generator=gen, device=DEVICE).to(dtype).requires_grad_()
    labels = torch.randint(0, c, (n // SCALE,), generator=gen, device=DEVICE)
    benchmark.group = f"loss forward+backward {n} x {c} {str(dtype)[6:]} on {DEVICE}"

    def ours():
        loss, stats = cross_entropy_with_stats(logits, labels, check_labels=False)
        loss.mean().backward()

    def separate():
        loss = F.cross_entropy(logits, labels, reduction="none")
        stats = ops.score(logits.detach(), labels, ["loss", "correct", "margin", "entropy"], check_labels=False)
        loss.mean().backward()

    def alone():
        F.cross_entropy(logits, labels, reduction="none").mean().backward()

    fn = {"loss with stats (ours)": ours, "F.cross_entropy + separate score": separate,
          "F.cross_entropy alone": alone}[variant]
    timed(benchmark, fn, nbytes=logits.numel() * logits.element_size(),
          role="ours" if "ours" in variant else None)


NORMALIZE_SHAPES = {"CIFAR batch 256 x 32 x 32": (256, 32, 32), "ImageNet batch 512 x 224 x 224": (512, 224, 224)}


@pytest.mark.parametrize("shape", list(NORMALIZE_SHAPES))
@pytest.mark.parametrize("variant", ["apply_lut (ours)", "indexing fallback (int64 index)",
                                     "float formula (x.float() - mean) / std", "device copy of the output"])
def test_normalize_batch(benchmark, shape, variant):
    """The loaders' last step on every batch: uint8 NHWC -> bfloat16. Bytes
    count the 1-byte read and the 2-byte write (a copy: both of 2 bytes)."""
    b, h, w = NORMALIZE_SHAPES[shape]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    pixels = torch.randint(0, 256, (max(b // SCALE, 1), h, w, 3), generator=gen, device=DEVICE, dtype=torch.uint8)
    table = normalization_table(torch.bfloat16, pixels.device)
    mean = torch.tensor(MEAN, device=DEVICE)
    inv_std = torch.tensor([1 / s for s in STD], device=DEVICE)
    out = torch.empty(pixels.shape, dtype=torch.bfloat16, device=DEVICE)
    channels = torch.arange(3, device=DEVICE)
    fn = {"apply_lut (ours)": lambda: ops.apply_lut(pixels, table),
          "indexing fallback (int64 index)": lambda: table.reshape(-1)[pixels.long() * 3 + channels],
          "float formula (x.float() - mean) / std": lambda: ((pixels.float() - mean) * inv_std).to(torch.bfloat16),
          "device copy of the output": lambda: out.clone()}[variant]
    benchmark.group = f"normalize {shape} to bfloat16 on {DEVICE}"
    count = pixels.numel()
    timed(benchmark, fn, nbytes=4 * count if "copy" in variant else 3 * count,
          role="ours" if "ours" in variant else None)
