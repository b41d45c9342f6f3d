"""Throughput of the ops against what a user would otherwise write, in one run.

    python -m pytest bench/test_ops_bench.py --benchmark-only --benchmark-columns=median,iqr,rounds

Each group holds ours (role "ours") and its alternatives; the summary at the
end prints the ratios and GB/s of logits read.
"""
import pytest
import torch

from unseen_fast import ops, reference

ALL = list(ops.METHODS)
SCORE_CASES = {  # name: (N, C, dtype)
    "200k x 1000 float32": (200_000, 1000, torch.float32),
    "200k x 1000 bfloat16": (200_000, 1000, torch.bfloat16),
    "1M x 10 float32": (1_000_000, 10, torch.float32),
}


def eager_scores(logits, labels):
    # The same outputs computed the way a user would: float32 PyTorch ops.
    return reference.score(logits, labels, ALL, dtype=torch.float32)


_compiled = {}


def compiled_scores(logits, labels):
    fn = _compiled.setdefault("fn", torch.compile(eager_scores, dynamic=False))
    return fn(logits, labels)


@pytest.fixture(scope="module", params=list(SCORE_CASES))
def score_case(request):
    n, c, dtype = SCORE_CASES[request.param]
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(n, c, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    return request.param, logits, labels


ALTERNATIVES = {
    "fused score (ours)": lambda z, y: ops.score(z, y, ALL),
    "eager PyTorch composite": eager_scores,
    "torch.compile composite": compiled_scores,
    "single-read floor logits.sum(1)": lambda z, y: z.sum(1),
}


@pytest.mark.parametrize("variant", list(ALTERNATIVES))
def test_score(benchmark, score_case, variant):
    name, logits, labels = score_case
    benchmark.group = f"score {name}"
    benchmark.extra_info["bytes"] = logits.numel() * logits.element_size()
    if "ours" in variant:
        benchmark.extra_info["role"] = "ours"
    fn = ALTERNATIVES[variant]
    fn(logits, labels)  # warm-up (compiles the torch.compile variant)
    benchmark.pedantic(fn, args=(logits, labels), rounds=5, iterations=1)


N_IMAGENET = 1_281_167


@pytest.fixture(scope="module")
def imagenet_scores():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(N_IMAGENET, generator=gen), torch.randint(0, 1000, (N_IMAGENET,), generator=gen)


SELECTORS = {
    "select_topk (ours, index order)": lambda s, k: ops.select_topk(s, k),
    "select_topk sorted=True (ours)": lambda s, k: ops.select_topk(s, k, sorted=True),
    "torch.topk sorted=False": lambda s, k: torch.topk(s, k, sorted=False),
    "torch.topk sorted=True": lambda s, k: torch.topk(s, k, sorted=True),
    "torch.sort": lambda s, k: torch.sort(s, descending=True, stable=True),
}


@pytest.mark.parametrize("fraction", [0.3, 0.7])
@pytest.mark.parametrize("variant", list(SELECTORS))
def test_select(benchmark, imagenet_scores, fraction, variant):
    scores, _ = imagenet_scores
    k = int(N_IMAGENET * fraction)
    benchmark.group = f"select_topk N={N_IMAGENET} k={fraction:.0%}"
    if "ours" in variant:
        benchmark.extra_info["role"] = "ours"
    benchmark.pedantic(SELECTORS[variant], args=(scores, k), rounds=7, iterations=1, warmup_rounds=1)


def per_class_loop(scores, labels, quotas):
    # What a user writes without the op: mask each class, torch.topk inside it.
    picked = []
    for c, q in enumerate(quotas):
        members = (labels == c).nonzero().squeeze(1)
        picked.append(members[torch.topk(scores[members], q).indices])
    return torch.cat(picked).sort().values


@pytest.mark.parametrize("variant", ["ours", "per-class torch.topk loop"])
def test_select_balanced(benchmark, imagenet_scores, variant):
    scores, labels = imagenet_scores
    k = int(N_IMAGENET * 0.7)
    benchmark.group = f"balanced select N={N_IMAGENET} k=70% 1000 classes"
    if variant == "ours":
        benchmark.extra_info["role"] = "ours"
        benchmark.pedantic(lambda: ops.select_topk(scores, k, labels=labels, balanced=True),
                           rounds=5, iterations=1, warmup_rounds=1)
    else:
        counts = torch.bincount(labels, minlength=1000).tolist()
        quotas = reference._largest_remainder(counts, k)
        assert per_class_loop(scores, labels, quotas).numel() == k  # same quotas, same amount of work
        benchmark.pedantic(per_class_loop, args=(scores, labels, quotas), rounds=2, iterations=1)
