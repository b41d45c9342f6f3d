"""select_topk() and normalize() against the references."""
import pytest
import torch

from unseen_fast import ops, reference


def check(scores, k, **kw):
    got = ops.select_topk(scores, k, **kw)
    ref_kw = {key: (v.cpu() if torch.is_tensor(v) else v) for key, v in kw.items()}
    want = reference.select_topk(scores.cpu(), k, **ref_kw)
    assert got.dtype == torch.int64 and got.shape == (k,)
    assert torch.equal(got.cpu(), want), f"k={k} {kw}"
    return got


def random_scores(gen, n, ties, dtype=torch.float32):
    if ties:  # few distinct values, +-0 and infinities: many ties
        values = torch.tensor([-float("inf"), -1.0, -0.0, 0.0, 0.5, 1.0, float("inf")], dtype=dtype)
        return values[torch.randint(0, len(values), (n,), generator=gen)]
    return torch.randn(n, generator=gen, dtype=dtype)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 70001, 300_000])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_topk_matches_reference(device, gen, n, ties, dtype):
    scores = random_scores(gen, n, ties, dtype).to(device)
    for k in sorted({0, 1, n // 3, (7 * n) // 10, n - 1, n}):
        check(scores, k)
        check(scores, k, sorted=True)


@pytest.mark.parametrize("ties", [False, True])
def test_exclude(device, gen, ties):
    n = 5000
    scores = random_scores(gen, n, ties).to(device)
    exclude = (torch.rand(n, generator=gen) < 0.4).to(device)
    eligible = int((~exclude).sum())
    for k in (0, 1, eligible // 2, eligible):
        got = check(scores, k, exclude=exclude)
        assert not exclude[got].any()
        check(scores, k, exclude=exclude, sorted=True)


@pytest.mark.parametrize("n_classes", [1, 3, 10, 1000])
@pytest.mark.parametrize("ties", [False, True])
def test_balanced(device, gen, n_classes, ties):
    n = 20_000
    scores = random_scores(gen, n, ties).to(device)
    # uneven class sizes, one class absent among the eligible
    labels = (torch.rand(n, generator=gen) ** 2 * n_classes).long().clamp_max(n_classes - 1).to(device)
    exclude = (labels == n_classes // 2) if n_classes > 2 else None
    eligible = n if exclude is None else int((~exclude).sum())
    for k in (1, eligible // 10, (7 * eligible) // 10, eligible):
        got = check(scores, k, labels=labels, balanced=True, exclude=exclude)
        check(scores, k, labels=labels, balanced=True, exclude=exclude, sorted=True)
        counts = torch.bincount(labels[got].cpu(), minlength=n_classes)
        have = torch.bincount(labels.cpu()[~exclude.cpu()] if exclude is not None else labels.cpu(),
                              minlength=n_classes)
        assert counts.sum() == k and (counts <= have).all()
        exact = k * have.double() / have.sum()
        assert ((counts.double() - exact).abs() < 1).all(), "quota off by a whole sample"


def test_thread_count_does_not_change_the_result(gen):
    scores = random_scores(gen, 200_003, ties=True)
    labels = torch.randint(0, 50, (200_003,), generator=gen)
    positive = torch.rand(200_003, generator=gen)
    threads = torch.get_num_threads()
    results = []
    for t in (1, max(2, threads)):
        torch.set_num_threads(t)
        results.append((ops.select_topk(scores, 123_457), ops.select_topk(scores, 99, sorted=True),
                        ops.select_topk(scores, 5000, labels=labels, balanced=True),
                        ops.normalize(positive)))
    torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_select_errors(device):
    scores = torch.arange(6.0, device=device)
    with pytest.raises(RuntimeError, match="k must be >= 0, got k=-1"):
        ops.select_topk(scores, -1)
    with pytest.raises(RuntimeError, match="k=7 is more than the 6 eligible"):
        ops.select_topk(scores, 7)
    with pytest.raises(RuntimeError, match="k=5 is more than the 4 eligible"):
        ops.select_topk(scores, 5, exclude=torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool, device=device))
    nan = scores.clone()
    nan[4] = float("nan")
    with pytest.raises(RuntimeError, match="score at index 4 is NaN"):
        ops.select_topk(nan, 2)
    with pytest.raises(RuntimeError, match="1-D"):
        ops.select_topk(scores.view(2, 3), 2)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.select_topk(torch.arange(6, device=device), 2)
    with pytest.raises(RuntimeError, match="exclude must be a bool tensor of shape"):
        ops.select_topk(scores, 2, exclude=torch.zeros(5, dtype=torch.bool, device=device))
    with pytest.raises(RuntimeError, match="balanced=True needs labels"):
        ops.select_topk(scores, 2, balanced=True)
    with pytest.raises(RuntimeError, match="label -2 at index 3 is negative"):
        ops.select_topk(scores, 2, labels=torch.tensor([0, 1, 0, -2, 1, 0], device=device), balanced=True)
    with pytest.raises(RuntimeError, match="labels must be an int64 tensor"):
        ops.select_topk(scores, 2, labels=torch.zeros(6, device=device), balanced=True)


def test_empty_inputs(device):
    assert ops.select_topk(torch.empty(0, device=device), 0).shape == (0,)
    assert ops.select_topk(torch.ones(4, device=device), 0, sorted=True).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_matches_reference(device, gen, dtype):
    scores = torch.rand(100_001, generator=gen, dtype=dtype).to(device)
    before = scores.clone()
    got = ops.normalize(scores)
    # a new tensor: the schema promises no mutation and no alias (float64 input once came back divided in place)
    assert torch.equal(scores, before) and got.data_ptr() != scores.data_ptr()
    assert got.dtype == dtype and got.shape == scores.shape
    # The reference sums in another order: equal to float64 rounding.
    rtol = 1e-12 if dtype == torch.float64 else 1.2e-7
    torch.testing.assert_close(got.cpu(), reference.normalize(scores.cpu()), rtol=rtol, atol=0)
    torch.testing.assert_close(got.double().sum().cpu(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(ops.normalize(scores.view(11, 9091)).flatten(), got)


def test_normalize_errors(device):
    with pytest.raises(RuntimeError, match="sum to 0; need a positive sum"):
        ops.normalize(torch.zeros(5, device=device))
    with pytest.raises(ValueError, match="score at flat index 1 is -3.0; importances must be >= 0"):
        ops.normalize(torch.tensor([1.0, -3.0], device=device))
    with pytest.raises(RuntimeError, match="sum to -"):  # the op itself, without the wrapper's check
        torch.ops.unseen_fast.normalize(torch.tensor([1.0, -3.0], device=device))
    with pytest.raises(RuntimeError, match="score at flat index 2 is nan"):
        ops.normalize(torch.tensor([1.0, 2.0, float("nan")], device=device))
    with pytest.raises(RuntimeError, match="score at flat index 0 is inf"):
        ops.normalize(torch.tensor([float("inf"), 2.0], device=device))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.normalize(torch.ones(3, dtype=torch.int64, device=device))


@pytest.mark.cuda
def test_cuda_select_topk_reads_the_host_once():
    """The argument checks read every fact in one copy; the selection itself
    never waits for the GPU (each sync warns under sync debug mode "warn")."""
    import warnings

    scores = torch.rand(1_281_167, device="cuda")
    labels = torch.randint(0, 1000, (scores.numel(),), device="cuda")
    torch.cuda.synchronize()
    for kw in (dict(), dict(labels=labels, balanced=True)):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ops.select_topk(scores, 400_000, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_deferred_select_equals_select_topk(device, gen):
    scores = random_scores(gen, 5000, True).to(device)
    labels = torch.randint(0, 7, (5000,), generator=gen).to(device)
    exclude = (torch.rand(5000, generator=gen) < 0.2).to(device)
    eligible = int((~exclude).sum())
    for k in (0, 1, 1234, eligible):
        for kw in (dict(), dict(exclude=exclude), dict(labels=labels, balanced=True, exclude=exclude)):
            for order in (False, True):
                got, check = ops.select_topk_deferred(scores, k, sorted=order, num_classes=7, **kw)
                check()
                assert torch.equal(got, ops.select_topk(scores, k, sorted=order, **kw)), (k, kw, order)


def test_deferred_select_raises_on_the_cpu_at_once():
    with pytest.raises(RuntimeError, match="score at index 1 is NaN"):
        ops.select_topk_deferred(torch.tensor([0.5, float("nan"), 0.1]), 1)
    with pytest.raises(RuntimeError, match="label 4 is not below num_classes=3"):
        ops.select_topk_deferred(torch.rand(3), 1, labels=torch.tensor([0, 4, 1]), balanced=True, num_classes=3)
    with pytest.raises(RuntimeError, match="errors must be the int64"):
        torch.ops.unseen_fast.check_select_errors(torch.zeros(3), None, 1, 3, 1)


@pytest.mark.cuda
def test_deferred_cuda_select_never_waits_and_raises_in_check():
    scores = torch.rand(1_281_167, device="cuda")
    labels = torch.randint(0, 1000, (scores.numel(),), device="cuda")
    with_nan = scores.clone()
    with_nan[77] = float("nan")  # before the sync check: a host-to-device copy of an index would count as a sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        plain, check_plain = ops.select_topk_deferred(scores, 400_000)
        per_class, check_per_class = ops.select_topk_deferred(scores, 400_000, labels=labels, balanced=True,
                                                              num_classes=1000)
        bad, check_bad = ops.select_topk_deferred(with_nan, 10)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # bad input with the sort (ATen's sort may sync): the slots without a winner hold valid indices, no device assert
    short, check_short = ops.select_topk_deferred(with_nan, scores.numel(), sorted=True)
    check_plain()
    check_per_class()
    assert torch.equal(plain, ops.select_topk(scores, 400_000))
    assert torch.equal(per_class, ops.select_topk(scores, 400_000, labels=labels, balanced=True))
    with pytest.raises(RuntimeError, match="score at index 77 is NaN"):
        check_bad()
    assert 0 <= int(short.min()) and int(short.max()) < scores.numel()
    with pytest.raises(RuntimeError, match="score at index 77 is NaN"):
        check_short()
