"""The CUDA kernels run on the CPU: csrc/cuda/*.cu built by the C++ compiler
on the CUDA emulation (csrc/cuda/emulate.h: every CUDA thread a fiber,
barriers and warp shuffles honoured, the fiber order shuffled) and checked
like the real CUDA ops, so their logic is tested on machines without a GPU:
every threads-per-row width, the 16-byte and scalar load paths, tails,
adversarial rows, the loss gradient. Not their speed or the device's math
library (expf here is glibc's): tests/test_score.py and friends run the real
kernels where there is a GPU."""
import os
import sys
from pathlib import Path

import pytest
import torch

from test_fused_loss import loss_error_bounds, reference_loss
from test_score import ALL, adversarial_rows
from test_select import random_scores
from unseen_fast import ops, reference

ROOT = Path(__file__).resolve().parents[1]
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
WIDTHS = [1, 2, 3, 5, 6, 8, 9, 10, 14, 16, 17, 40, 64, 65, 1000, 2048, 2049, 3000, 7000]  # every threads-per-row width and its edges;
# 2-14: the tile's every fold length, its edges (5, 9) and every load width (float32 rows of 8-byte pitches: 2, 6, 10, 14; 16-bit ones of 4 bytes: 2, 10, 14; scalar: 3, 5, 9);
# 7000: whole folds of 256-thread rows (4 chunks a thread: 3080 float32 or 6152 16-bit columns from lane 0)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if sys.platform != "linux":
        pytest.skip("the CUDA emulation uses ucontext fibers (glibc)")
    if not (CUDA_INCLUDE / "cuda_bf16.h").exists():
        pytest.skip(f"no CUDA headers under {CUDA_INCLUDE} (set CUDA_HOME)")
    from torch.utils.cpp_extension import load

    build = tmp_path_factory.mktemp("cuda_emulated")
    load(name="unseen_fast_emulated", sources=[str(ROOT / "tests" / "cuda_emulated" / "emulated_ops.cpp")],
         extra_include_paths=[str(ROOT / "csrc"), str(CUDA_INCLUDE)],
         extra_cflags=["-O2", "-DUNSEEN_FAST_EMULATE_CUDA"], build_directory=str(build), is_python_module=False)
    return torch.ops.unseen_fast_emulated


def rows_for(c):
    """Enough rows for two blocks at one thread per row, a partial last block
    at every width (an odd count: the last shared-memory tile of a few
    columns ends off a 16-byte boundary)."""
    return 301 if c <= 16 else 70


def test_the_emulation_catches_a_missing_barrier(emulated):
    values = torch.arange(512, dtype=torch.int32)
    want = values.view(2, 256).roll(-1, 1).reshape(-1)
    assert torch.equal(emulated.rotate(values, True), want)
    assert not torch.equal(emulated.rotate(values, False), want)


def test_the_emulation_refuses_a_barrier_not_every_thread_reaches(emulated):
    with pytest.raises(RuntimeError, match="no thread can go on"):
        emulated.divergent_barrier()


def test_the_emulation_refuses_a_misaligned_vector_load(emulated):
    """A 16-byte load off a 16-byte boundary faults on the GPU; the emulation
    stops the launch (x86 would read it), so a kernel that picks too wide a
    load for a row pitch fails here, not first on a GPU."""
    emulated.vector_load(4)  # 16 bytes past the aligned base: fine
    with pytest.raises(RuntimeError, match="misaligned 16-byte access"):
        emulated.vector_load(2)


@pytest.mark.parametrize("c", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_score_matches_float64(emulated, gen, c, dtype):
    n = rows_for(c)
    logits = (torch.randn(n, c, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    got = emulated.score(logits, labels, list(range(len(ALL))), True)
    want = reference.score(logits, labels, ALL)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("c", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_score_finds_the_argmax_column(emulated, gen, c, dtype):
    """A fold holds chunks TPR chunks apart and maps its register slot back
    to the column: with the label at the row's maximum (random rows give it
    too rarely) `correct` is 1 and `logit_gap` minus the gap to the second,
    with the label beside it both follow the other branch."""
    n = rows_for(c)
    logits = torch.randn(n, c, generator=gen).to(dtype)
    top = torch.randint(0, c, (n,), generator=gen)
    logits[torch.arange(n), top] = 10.0  # a unique maximum at a random column
    labels = top.clone()
    labels[1::2] = (top[1::2] + 1) % c
    got = emulated.score(logits, labels, list(range(len(ALL))), True)
    want = reference.score(logits, labels, ALL)
    correct = ALL.index("correct")
    assert torch.equal(got[:, correct], want[:, correct].float())
    assert got[0::2, correct].eq(1).all() and (c == 1 or got[1::2, correct].eq(0).all())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 14, 16, 17, 40, 1000, 3000, 7000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_score_same_bits_on_every_load_path(emulated, gen, c, dtype):
    """16-byte loads (aligned contiguous rows), scalar loads (a misaligned
    base or row pitch) and strided columns fold the same chunks."""
    n = rows_for(c)
    data = (torch.randn(n, c, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    methods = list(range(len(ALL)))
    want = emulated.score(data, labels, methods, True)
    shifted = torch.empty(n, c + 8, dtype=dtype)  # base off by one element
    shifted[:, 1:c + 1] = data
    pitched = torch.empty(n, c + 1, dtype=dtype)  # row pitch not a multiple of 16 bytes
    pitched[:, :c] = data
    for view in (shifted[:, 1:c + 1], pitched[:, :c], data.t().contiguous().t()):
        assert torch.equal(emulated.score(view, labels, methods, True), want)


@pytest.mark.parametrize("count", [1, 2, 3, 8, 16])
def test_emulated_score_tile_outputs_at_every_method_count(emulated, gen, count):
    """The tile writes its outputs at an odd pitch (count | 1) and reads them
    back row-major: every count from one method to the most per call (16,
    codes repeated) gives the columns of the all-methods call."""
    c, n = 10, 301  # 40-byte rows: the tiled path
    logits = torch.randn(n, c, generator=gen) * 4
    labels = torch.randint(0, c, (n,), generator=gen)
    everything = emulated.score(logits, labels, list(range(len(ALL))), True)
    methods = [int(m) for m in torch.randint(0, len(ALL), (count,), generator=gen)]
    assert torch.equal(emulated.score(logits, labels, methods, True), everything[:, methods])


def test_emulated_score_adversarial_rows(emulated):
    for c in (10, 12, 14, 40, 3000):  # 10, 14: tiled rows read 8 bytes wide
        logits = adversarial_rows(c).repeat(3, 1)
        labels = torch.tensor([0, c - 1, 3, 5, 0, c - 1, 1, 1, 2, 0, 0, 0, 7]).repeat(3)
        got = emulated.score(logits, labels, list(range(len(ALL))), True)
        torch.testing.assert_close(got, ops.score(logits, labels, ALL), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_emulated_score_unchecked_bad_labels_give_nan_label_methods(emulated, gen):
    logits = torch.randn(40, 30, generator=gen)
    labels = torch.randint(0, 30, (40,), generator=gen)
    labels[[3, 17]] = torch.tensor([30, -1])
    got = emulated.score(logits, labels, list(range(len(ALL))), False)
    needs_label = [m not in ops.LABEL_FREE_METHODS for m in ALL]
    assert got[[3, 17]][:, needs_label].isnan().all()
    assert got[[3, 17]][:, [not x for x in needs_label]].isfinite().all()
    good = torch.ones(40, dtype=torch.bool).index_fill_(0, torch.tensor([3, 17]), False)
    torch.testing.assert_close(got[good], ops.score(logits[good], labels[good], ALL), rtol=1e-5, atol=1e-6)


def test_emulated_results_do_not_depend_on_the_thread_order(emulated, gen):
    logits = torch.randn(70, 3000, generator=gen)
    labels = torch.randint(0, 3000, (70,), generator=gen)
    results = []
    for seed in (1, 2, 3):
        emulated.set_order_seed(seed)
        results.append((emulated.score(logits, labels, list(range(len(ALL))), True),
                        *emulated.cross_entropy_with_stats(logits, labels, 0.1, True)))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("c", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_emulated_loss_within_float64_bounds(emulated, gen, c, dtype, eps):
    n = rows_for(c)
    logits = (torch.randn(n, c, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, c, (n,), generator=gen)
    loss, stats, grad = emulated.cross_entropy_with_stats(logits, labels, eps, True)
    z, expected = reference_loss(logits, labels, eps)
    expected.sum().backward()
    loss_err, grad_err = loss_error_bounds(logits, labels, torch.ones(n), eps)
    assert ((loss.double() - expected).abs() <= loss_err).all()
    assert grad.dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    assert ((grad.double() - z.grad).abs() <= grad_err).all()
    _, cpu_stats, _ = ops.torch.ops.unseen_fast.cross_entropy_with_stats(logits, labels, eps, True)
    torch.testing.assert_close(stats, cpu_stats, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_emulated_loss_adversarial_rows_strides_and_bad_labels(emulated, gen):
    inf, nan = float("inf"), float("nan")
    rows = torch.tensor([[1.0, nan, 0.0], [inf, 0.0, 0.0], [-inf, -inf, -inf], [-inf, 2.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, 1, 2, 4, 2])  # 4 is out of range: unchecked, a NaN row
    got = emulated.cross_entropy_with_stats(rows, labels, 0.1, False)
    want = torch.ops.unseen_fast.cross_entropy_with_stats(rows, labels, 0.1, False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, equal_nan=True)
    base = torch.randn(3000, 20, generator=gen)
    y = torch.randint(0, 3000, (20,), generator=gen)
    for g, w in zip(emulated.cross_entropy_with_stats(base.t(), y, 0.1, True),
                    emulated.cross_entropy_with_stats(base.t().contiguous(), y, 0.1, True)):
        assert torch.equal(g, w)


# ---------------------------------------------------------------- select_topk
def emulated_select(emulated, scores, k, labels=None, balanced=False, exclude=None, sorted=False,
                    num_classes=None, precheck=True):
    """The CUDA select_topk's host code and kernels; without ``precheck`` the
    errors come from what the kernels recorded, read after the launch."""
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else 1
    return emulated.select_topk(scores, k, labels, balanced, exclude, sorted, num_classes, precheck)


@pytest.mark.parametrize("n", [1, 7, 1000, 2048, 2049, 20001])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_select_equals_the_cpu_kernel(emulated, gen, n, ties, dtype):
    """Bit for bit (the CPU kernel is checked against the float64 reference
    in test_select.py): global, excluded and balanced, both orders, k from 0
    to every eligible sample; 2048 = one compaction tile."""
    scores = random_scores(gen, n, ties, dtype)
    labels = (torch.rand(n, generator=gen) ** 2 * 7).long()
    exclude = torch.rand(n, generator=gen) < 0.3
    eligible = int((~exclude).sum())
    for k in sorted({0, min(1, eligible), eligible // 3, (7 * eligible) // 10, eligible}):
        for kw in (dict(), dict(exclude=exclude), dict(labels=labels, balanced=True, exclude=exclude)):
            for order in (False, True):
                want = ops.select_topk(scores, k, sorted=order, **kw)
                assert torch.equal(emulated_select(emulated, scores, k, sorted=order, **kw), want), (k, kw, order)


def test_emulated_select_on_adversarial_scores(emulated, gen):
    """Signed zeros, infinities, the smallest subnormals, huge magnitudes, all ties."""
    for dtype in (torch.float32, torch.float64):
        tiny = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
        values = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), tiny, -tiny, torch.finfo(dtype).max,
                               -torch.finfo(dtype).max, 1.0, 1.0], dtype=dtype)
        for _ in range(10):
            scores = values[torch.randint(0, len(values), (300,), generator=gen)]
            labels = torch.randint(0, 4, (300,), generator=gen)
            for k in (1, 77, 150, 300):
                for kw in (dict(), dict(labels=labels, balanced=True)):
                    assert torch.equal(emulated_select(emulated, scores, k, **kw), reference.select_topk(scores, k, **kw))
                    assert torch.equal(emulated_select(emulated, scores, k, sorted=True, **kw),
                                       ops.select_topk(scores, k, sorted=True, **kw))
    none = torch.empty(0)
    empty_labels = torch.empty(0, dtype=torch.long)
    assert emulated.select_topk(none, 0, empty_labels, True, None, False, 1, True).shape == (0,)
    same = torch.full((5000,), 2.5)
    assert emulated_select(emulated, same, 2100).tolist() == list(range(2100))  # all tied: the lowest indices


def test_emulated_select_many_classes_and_empty_ones(emulated, gen):
    """Quotas on the device: 300 classes, some without any sample, all tied,
    1,000 classes, none eligible."""
    scores = torch.rand(9000, generator=gen)
    labels = torch.randint(0, 300, (9000,), generator=gen) // 3 * 3  # two thirds of the classes empty
    for k in (1, 299, 4500, 9000):
        want = ops.select_topk(scores, k, labels=labels, balanced=True)
        assert torch.equal(emulated_select(emulated, scores, k, labels=labels, balanced=True), want)
    # equal classes: every remainder tied, the extra seats go to the lowest classes (over two 256-class rounds)
    same_size = torch.arange(9000) % 300
    for k in (4501, 4650, 4799):
        got = emulated_select(emulated, scores, k, labels=same_size, balanced=True)
        assert torch.equal(got, ops.select_topk(scores, k, labels=same_size, balanced=True))
        per_class = torch.bincount(same_size[got], minlength=300)
        assert per_class.tolist() == [16] * (k - 4500) + [15] * (300 - (k - 4500))
    # 1,000 classes of random sizes: the bisection over remainders against the CPU's sort
    many = (torch.rand(9000, generator=gen) ** 3 * 1000).long()
    for k in (1, 777, 4321, 8999):
        want = ops.select_topk(scores, k, labels=many, balanced=True)
        assert torch.equal(emulated_select(emulated, scores, k, labels=many, balanced=True), want)
    # nothing eligible, nothing asked: no quota divides by the zero eligible count
    everything = torch.ones(9000, dtype=torch.bool)
    got = emulated_select(emulated, scores, 0, labels=labels, balanced=True, exclude=everything, precheck=False)
    assert got.shape == (0,)


@pytest.mark.parametrize("sorted_", [False, True])
def test_emulated_deferred_select_of_bad_input_stays_in_bounds(emulated, sorted_):
    """select_topk_deferred as the CUDA op runs it (the sort before any check):
    bad input leaves slots without a winner, and those must still hold valid
    indices (an index_select of garbage asserts on the device and kills the
    CUDA context); the check afterwards names the cause."""
    n = 3000
    nan_half = torch.rand(n)
    nan_half[::2] = float("nan")  # 1,500 eligible
    cases = [((nan_half, 2000), {}, "score at index 0 is NaN"),
             ((torch.rand(n), 2999), dict(exclude=torch.arange(n) < 10), r"k=2999 is more than the 2990 eligible"),
             ((torch.rand(n), 1000), dict(labels=torch.arange(n) % 7 - 1, balanced=True, num_classes=6),
              "label -1 at index 0 is negative"),
             ((torch.rand(n), 1000), dict(labels=torch.arange(n) % 7, balanced=True, num_classes=3),
              "label at index 3 is not below num_classes=3")]
    for (scores, k), kw, message in cases:
        poison = torch.full((k,), -(2 ** 62), dtype=torch.long)  # what an earlier result left in memory
        del poison
        labels = kw.get("labels")
        indices, errors = emulated.select_topk_deferred(scores, k, labels, kw.get("balanced", False),
                                                        kw.get("exclude"), sorted_, kw.get("num_classes", 1))
        assert indices.shape == (k,) and int(indices.min()) >= 0 and int(indices.max()) < n
        with pytest.raises(RuntimeError, match=message):
            torch.ops.unseen_fast.check_select_errors(errors, labels, k, n, kw.get("num_classes", 1))
    # what the host knows is refused before any launch: k above N (index 0 must exist for the zeros)
    with pytest.raises(RuntimeError, match=r"k=4 is more than the 3 eligible samples \(N=3\)"):
        emulated.select_topk_deferred(torch.rand(3), 4, None, False, None, sorted_, 1)
    with pytest.raises(RuntimeError, match=r"k=1 is more than the 0 eligible"):
        emulated.select_topk_deferred(torch.empty(0), 1, None, False, None, sorted_, 1)


def test_emulated_select_names_the_first_bad_index_of_many(emulated):
    """Bad samples are recorded once per warp (its lowest flagged lane), so
    several in one warp, in other warps and in later blocks must still
    report the lowest index, for every kind of bad input at once."""
    n = 3000
    scores, labels = torch.rand(n), torch.arange(n) % 3
    scores[[2999, 1500, 1040, 1037, 2100]] = float("nan")
    labels[[2500, 779, 777]] = -1
    labels[[1800, 903, 901, 2222]] = 7
    _, errors = emulated.select_topk_deferred(scores, 100, labels, True, None, False, 3)
    for message in ("score at index 1037 is NaN", "label -1 at index 777 is negative",
                    "label at index 901 is not below num_classes=3"):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.unseen_fast.check_select_errors(errors, labels, 100, n, 3)
        if "NaN" in message:
            scores[scores.isnan()] = 0.5
        elif "negative" in message:
            labels[labels < 0] = 0
        _, errors = emulated.select_topk_deferred(scores, 100, labels, True, None, False, 3)


@pytest.mark.parametrize("precheck", [True, False])
def test_emulated_select_refuses_what_the_cpu_kernel_refuses(emulated, precheck):
    """With the checks first (the op) or from the kernels' recorded errors
    (nothing read before the launch): the same messages."""
    cases = [((torch.tensor([0.5, float("nan"), 0.1]), 1), {}, "score at index 1 is NaN"),
             ((torch.rand(3), 1), dict(labels=torch.tensor([0, -2, -5]), balanced=True, num_classes=1),
              "label -2 at index 1 is negative"),
             ((torch.rand(3), 3), dict(exclude=torch.tensor([False, True, False])),
              r"k=3 is more than the 2 eligible samples \(N=3"),
             ((torch.rand(3), -1), {}, "k must be >= 0")]
    for args, kw, message in cases:
        if not precheck and "k must" in message:
            continue  # a negative k never reaches the kernels: prepare_select cannot allocate it
        with pytest.raises(RuntimeError, match=message):
            emulated_select(emulated, *args, precheck=precheck, **kw)
    if not precheck:  # recorded even when nothing is selected
        with pytest.raises(RuntimeError, match="score at index 2 is NaN"):
            emulated_select(emulated, torch.tensor([0.5, 0.2, float("nan")]), 0, precheck=False)
    if not precheck:  # labels beyond the classes the caller announced
        with pytest.raises(RuntimeError, match="label at index 2 is not below num_classes=2"):
            emulated_select(emulated, torch.rand(3), 1, labels=torch.tensor([0, 1, 5]), balanced=True,
                            num_classes=2, precheck=False)


# ------------------------------------------------------------------ apply_lut
@pytest.mark.parametrize("count, channels", [(1, 1), (15, 3), (16, 4), (17, 1), (48, 3), (4096 * 16 + 5, 3),
                                             (64, 5), (1000, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("max_blocks", [0, 1, 3])
def test_emulated_lut_equals_the_cpu_kernel(emulated, gen, count, channels, dtype, max_blocks):
    """Every chunk tail, the shared table (<= 4 channels) and the global one
    (5), every entry width; the grid capped at 1 or 3 blocks (the default
    cap, 4096, binds only past 16.8M elements) runs the grid-stride loop."""
    pixels = torch.randint(0, 256, (count, channels), generator=gen, dtype=torch.uint8)
    pixels[0] = 255
    table = torch.randn(256, channels, generator=gen).to(dtype)
    got = emulated.apply_lut(pixels, table, max_blocks)
    assert got.dtype == dtype and torch.equal(got, ops.apply_lut(pixels, table))


def test_emulated_lut_of_unaligned_and_strided_pixels(emulated, gen):
    base = torch.randint(0, 256, (4 * 16 * 3 + 1,), generator=gen, dtype=torch.uint8)
    table = torch.randn(256, 3, generator=gen)
    unaligned = base[1:].view(-1, 3)  # data 1 byte past a 16-byte boundary: the scalar path
    assert torch.equal(emulated.apply_lut(unaligned, table, 0), ops.apply_lut(unaligned, table))
    nchw = torch.randint(0, 256, (2, 3, 7, 9), generator=gen, dtype=torch.uint8)
    nhwc = nchw.permute(0, 2, 3, 1)
    assert torch.equal(emulated.apply_lut(nhwc, table, 0), ops.apply_lut(nhwc, table))
    assert emulated.apply_lut(torch.empty(0, 3, dtype=torch.uint8), table, 0).shape == (0, 3)


def test_emulated_lut_refuses_what_the_cpu_kernel_refuses(emulated):
    with pytest.raises(RuntimeError, match="pixels must be uint8"):
        emulated.apply_lut(torch.zeros(2, 3), torch.zeros(256, 3), 0)
    with pytest.raises(RuntimeError, match="table must be float32, float64, bfloat16 or float16"):
        emulated.apply_lut(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(256, 3, dtype=torch.int32), 0)
