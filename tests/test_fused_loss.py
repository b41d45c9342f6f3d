"""The fused training loss op (cross_entropy_with_stats): loss, gradient
and statistics against float64 autograd with error bounds, on both CPU paths
and (when there is one) CUDA; adversarial rows, strides, dtypes, errors."""
import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICES
from unseen_fast import ops
from unseen_fast.fused_loss import STATS, cross_entropy_with_stats

OP = torch.ops.unseen_fast.cross_entropy_with_stats


def reference_loss(logits, labels, eps):
    z = logits.detach().double().requires_grad_()
    return z, F.cross_entropy(z, labels, label_smoothing=eps, reduction="none")


def loss_error_bounds(logits, labels, weights, eps):
    """Per-element bounds on the float32 algorithm's error (unit roundoff u).

    Forward: the row's exp sum is accumulated over C terms, each rescaled by
    the online merge, so the loss (and lse = loss + z_y) is off by at most
    u (2C + 3R + |lse| + 4), R = the row's logit range. Backward: softmax is
    rebuilt as exp(z - lse), so p_i inherits the lse error relatively, plus
    u |z_i - lse| from the subtraction and a few u from exp, the target and
    the weight, and flush-to-zero may drop a p below float32's smallest
    normal. A low-precision gradient adds its final rounding, and a bfloat16
    one a first rounding when the kernel stores softmax - target (backward
    only scales it). The bounds hold for any summation order (reduction
    length, not one draw's luck).
    """
    u = torch.finfo(torch.float32).eps / 2
    z = logits.detach().double()
    c = z.shape[1]
    lse = torch.logsumexp(z, 1, keepdim=True)
    row_range = z.amax(1, keepdim=True) - z.amin(1, keepdim=True)
    lse_err = u * (2 * c + 3 * row_range + lse.abs() + 4)
    loss_err = lse_err.squeeze(1) * (1 + eps) + eps * u * c * z.abs().amax(1)
    p = torch.softmax(z, 1)
    target = torch.full_like(z, eps / c).scatter_add_(1, labels[:, None], torch.full_like(lse, 1 - eps))
    w = weights.double().abs()[:, None]
    grad = (p - target) * w
    grad_err = w * (p * (lse_err + u * (z - lse).abs() + 3 * u) + 2 * u * (p - target).abs()
                    + torch.finfo(torch.float32).tiny)
    if logits.dtype == torch.bfloat16:  # the stored unscaled gradient's rounding
        grad_err = grad_err + torch.finfo(torch.bfloat16).eps / 2 * (grad.abs() + grad_err)
    if logits.dtype != torch.float32:  # the gradient's rounding to its dtype (and fp16 subnormals)
        info = torch.finfo(logits.dtype)
        grad_err = grad_err + info.eps / 2 * (grad.abs() + grad_err) + info.smallest_normal * info.eps / 2
    return loss_err, grad_err


@pytest.mark.parametrize("n, c", [(1, 1), (7, 2), (33, 10), (64, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_loss_and_gradient_vs_float64(cpu_path, gen, n, c, dtype, eps):
    logits = (torch.randn(n, c, generator=gen) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, c, (n,), generator=gen)
    weights = torch.randn(n, generator=gen)
    loss, stats = cross_entropy_with_stats(logits, labels, label_smoothing=eps)
    (loss * weights).sum().backward()
    z, expected = reference_loss(logits, labels, eps)
    (expected * weights.double()).sum().backward()
    loss_err, grad_err = loss_error_bounds(logits, labels, weights, eps)
    assert ((loss.double() - expected).abs() <= loss_err).all()
    assert logits.grad.dtype == dtype
    assert ((logits.grad.double() - z.grad).abs() <= grad_err).all()
    assert stats.shape == (n, len(STATS)) and not stats.requires_grad


def test_error_bounds_are_tight_enough_to_catch_a_one_percent_error(gen):
    """The bounds are not vacuous: a 1% error in p (a wrong lse by 0.01) fails them."""
    logits = torch.randn(64, 1000, generator=gen) * 4
    labels = torch.randint(0, 1000, (64,), generator=gen)
    weights = torch.ones(64)
    _, grad_err = loss_error_bounds(logits, labels, weights, 0.0)
    z = logits.double()
    wrong = torch.exp(z - (torch.logsumexp(z, 1, keepdim=True) + 0.01))
    right = torch.softmax(z, 1)
    assert ((wrong - right).abs() > grad_err).float().mean() > 0.5


def test_stats_match_the_score_op(cpu_path, gen):
    logits = torch.randn(50, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (50,), generator=gen)
    _, stats = cross_entropy_with_stats(logits, labels)
    scores = ops.score(logits, labels, ["correct", "true_margin", "margin", "entropy", "el2n", "loss"])
    if cpu_path == "portable":  # the same online merge and finalize(): bit for bit
        assert torch.equal(stats[:, 1:7], scores)
    else:  # score's rows-as-lanes formulas (C <= 16) round differently from finalize()
        assert torch.allclose(stats[:, 1:7], scores, rtol=1e-5, atol=1e-6)
    other = logits.double().scatter(1, labels[:, None], float("-inf")).amax(1)
    assert torch.allclose(stats[:, 7].double(), logits.double().gather(1, labels[:, None]).squeeze(1) - other,
                          atol=1e-5)
    assert torch.equal(stats[:, 7], -ops.score(logits, labels, ["logit_gap"])[:, 0])  # the kernel's, no second read
    p_true = torch.softmax(logits.double(), 1).gather(1, labels[:, None]).squeeze(1)
    assert torch.allclose(stats[:, 0].double(), p_true, atol=1e-6)


def test_loss_non_contiguous_and_extreme(cpu_path, gen):
    logits = (torch.randn(12, 40, generator=gen) * 3).t()[:, :12].contiguous().t()  # column-major view
    logits = logits.clone().requires_grad_()
    labels = torch.randint(0, 12, (40,), generator=gen)[:logits.shape[0]]
    loss, _ = cross_entropy_with_stats(logits, labels)
    z, expected = reference_loss(logits, labels, 0.0)
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    huge = torch.tensor([[1e30, 0.0, -1e30]], requires_grad=True)
    loss, _ = cross_entropy_with_stats(huge, torch.tensor([1]))
    loss.sum().backward()
    assert loss.item() == pytest.approx(1e30, rel=1e-6) and torch.isfinite(huge.grad).all()


def test_loss_errors():
    with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 1\\), got 1.0"):
        cross_entropy_with_stats(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), label_smoothing=1.0)
    with pytest.raises(ValueError, match="labels must be int64, got torch.int32"):
        cross_entropy_with_stats(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="label"):
        cross_entropy_with_stats(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_loss_opcheck(gen):
    logits = torch.randn(6, 5, generator=gen, requires_grad=True)
    labels = torch.randint(0, 5, (6,), generator=gen)
    for eps in (0.0, 0.2):
        torch.library.opcheck(torch.ops.unseen_fast.cross_entropy_with_stats, (logits, labels, eps, True))


def test_backward_is_a_scale_of_the_forward_gradient(cpu_path, gen):
    """The kernel's stored gradient is softmax - target; backward only scales it."""
    logits = (torch.randn(20, 37, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, 37, (20,), generator=gen)
    weights = torch.randn(20, generator=gen)
    raw_loss, raw_stats, stored = OP(logits, labels, 0.1, True)
    assert raw_loss.requires_grad and not raw_stats.requires_grad and not stored.requires_grad
    stored = stored.clone()
    loss, _ = cross_entropy_with_stats(logits, labels, label_smoothing=0.1)
    (loss * weights).sum().backward()
    assert torch.equal(logits.grad, stored * weights[:, None])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # scaled in place: said, not wrong
        loss, _ = cross_entropy_with_stats(logits, labels)
        loss.sum().backward(retain_graph=True)
        loss.sum().backward()
    p = torch.softmax(logits.detach().double(), 1)
    target = torch.full_like(p, 0.1 / 37).scatter_add_(1, labels[:, None], torch.full((20, 1), 0.9, dtype=p.dtype))
    assert torch.allclose(stored.double(), p - target, atol=1e-6)


@pytest.mark.parametrize("dtype, grad_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.float16, torch.float32)])
def test_stored_gradient_dtype(dtype, grad_dtype):
    """bfloat16 keeps its dtype; float16 is stored in float32, so a tiny
    probability survives to be scaled up by GradScaler."""
    logits = torch.tensor([[0.0, -20.0, 0.0]]).to(dtype).requires_grad_()
    loss, _ = cross_entropy_with_stats(logits, torch.tensor([2]))
    _, _, stored = OP(logits.detach(), torch.tensor([2]), 0.0, True)
    assert stored.dtype == grad_dtype
    (loss * 65536.0).sum().backward()  # a GradScaler-like scale
    p = torch.softmax(logits.detach().double(), 1)[0, 1].item()  # 1e-9: below float16's smallest subnormal
    assert logits.grad.dtype == dtype and logits.grad[0, 1].item() == pytest.approx(p * 65536, rel=1e-2)


def test_adversarial_rows(cpu_path):
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor([[1.0, nan, 0.0],      # NaN: the whole row is NaN
                           [inf, 0.0, 0.0],      # +inf: softmax undefined
                           [-inf, -inf, -inf],   # no finite logit
                           [-inf, 2.0, 0.0],     # a -inf logit: p = 0, gradient -target
                           [-inf, 2.0, 0.0],     # ... with smoothing below
                           [5.0, 5.0, 5.0],      # ties
                           [0.0, 1e-30, -1e30]])
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 0])
    for eps in (0.0, 0.3):
        loss, stats, grad = OP(logits, labels, eps, True)
        assert loss[:3].isnan().all() and stats[:3].isnan().all() and grad[:3].isnan().all()
        assert grad[3:].isfinite().all() and stats[[3, 5, 6]].isfinite().all()
        z = logits[3:].double().requires_grad_()
        expected = F.cross_entropy(z, labels[3:], label_smoothing=eps, reduction="none")
        expected.sum().backward()
        assert torch.allclose(grad[3:].double(), z.grad, atol=1e-6)
        finite = expected.isfinite()
        assert torch.allclose(loss[3:].double()[finite], expected[finite], atol=1e-5)
        assert (loss[3:][~finite] == inf).all()  # the label's logit is -inf, or smoothing meets one


def test_an_unchecked_bad_label_gives_a_nan_row_only(cpu_path, gen):
    logits = torch.randn(5, 4, generator=gen)
    labels = torch.tensor([0, 4, -1, 3, 2])
    loss, stats, grad = OP(logits, labels, 0.1, False)
    bad = torch.tensor([False, True, True, False, False])
    with_label = [i for i, name in enumerate(STATS) if name not in ("margin", "entropy")]
    assert loss[bad].isnan().all() and grad[bad].isnan().all() and stats[bad][:, with_label].isnan().all()
    good_loss, good_stats, good_grad = OP(logits[~bad], labels[~bad], 0.1, True)
    assert torch.equal(loss[~bad], good_loss) and torch.equal(grad[~bad], good_grad)
    assert torch.equal(stats[~bad], good_stats)
    assert stats[bad][:, [STATS.index("margin"), STATS.index("entropy")]].isfinite().all()  # need no label


@pytest.mark.parametrize("c", [5, 40, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_rows_equal_contiguous_ones(cpu_path, gen, c, dtype):
    base = (torch.randn(c, 30, generator=gen) * 3).to(dtype)
    strided = base.t()  # column stride 30
    labels = torch.randint(0, c, (30,), generator=gen)
    for got, want in zip(OP(strided, labels, 0.1, True), OP(strided.contiguous(), labels, 0.1, True)):
        assert torch.equal(got, want)


def test_the_cpu_paths_agree(gen):
    """Every vector path this CPU runs against the portable one (each is
    also held to the float64 bounds through the cpu_path fixture)."""
    from unseen_fast import _C

    paths = [p for p in ("avx512", "avx2") if _C.build_info()[f"cpu_{p}"]] + ["portable"]
    if len(paths) == 1:
        pytest.skip("this CPU runs the portable path only")
    logits = torch.randn(50, 1000, generator=gen) * 4
    labels = torch.randint(0, 1000, (50,), generator=gen)
    before = _C.cpu_path()
    try:
        results = {}
        for path in paths:
            assert _C.set_cpu_path(path) == path
            results[path] = OP(logits, labels, 0.1, True)
    finally:
        _C.set_cpu_path(before)
    for path in paths[:-1]:
        for fast, portable in zip(results[path], results["portable"]):
            assert torch.allclose(fast, portable, rtol=1e-5, atol=1e-7), path


@pytest.mark.cuda
@pytest.mark.parametrize("c", [1, 10, 40, 1000, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cuda_matches_float64_and_the_cpu(gen, c, dtype, eps):
    """Every threads-per-row width (C = 1, 10 / 40 / 1000 / 3000) within the
    float64 error bounds, and close to the CPU kernel."""
    n = 130
    logits = (torch.randn(n, c, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    weights = torch.randn(n, generator=gen)
    on_gpu = logits.cuda().requires_grad_()
    loss, stats = cross_entropy_with_stats(on_gpu, labels.cuda(), label_smoothing=eps)
    (loss * weights.cuda()).sum().backward()
    z, expected = reference_loss(logits, labels, eps)
    (expected * weights.double()).sum().backward()
    loss_err, grad_err = loss_error_bounds(logits, labels, weights, eps)
    assert ((loss.cpu().double() - expected).abs() <= loss_err).all()
    assert ((on_gpu.grad.cpu().double() - z.grad).abs() <= grad_err).all()
    _, cpu_stats = cross_entropy_with_stats(logits, labels, label_smoothing=eps)
    assert torch.allclose(stats.cpu(), cpu_stats, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.cuda
def test_cuda_adversarial_rows_strides_and_bad_labels(gen):
    inf, nan = float("inf"), float("nan")
    rows = torch.tensor([[1.0, nan, 0.0], [inf, 0.0, 0.0], [-inf, -inf, -inf], [-inf, 2.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, 1, 2, 4, 2])  # 4 is out of range: unchecked, a NaN row
    for got, want in zip(OP(rows.cuda(), labels.cuda(), 0.1, False), OP(rows, labels, 0.1, False)):
        assert torch.allclose(got.cpu(), want, rtol=1e-5, atol=1e-6, equal_nan=True)
    base = torch.randn(3000, 20, generator=gen).cuda()
    y = torch.randint(0, 3000, (20,), generator=gen).cuda()
    for got, want in zip(OP(base.t(), y, 0.1, True), OP(base.t().contiguous(), y, 0.1, True)):
        assert torch.equal(got, want)


@pytest.mark.cuda
def test_cuda_loss_never_waits_for_the_gpu(gen):
    logits = torch.randn(256, 1000, device="cuda", requires_grad=True)
    labels = torch.randint(0, 1000, (256,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _ = cross_entropy_with_stats(logits, labels, check_labels=False)
        loss.mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logits.grad.isfinite().all().item()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    loss, stats = cross_entropy_with_stats(torch.zeros(0, 5, device=device), torch.zeros(0, dtype=torch.long,
                                                                                         device=device))
    assert loss.shape == (0,) and stats.shape == (0, len(STATS))
