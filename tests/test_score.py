"""score(): every method against the float64 reference, adversarial rows,
low precision, strides, labels and the state-merge property."""
import pytest
import torch

from unseen_fast import ops, reference

ALL = list(ops.METHODS)
LABEL_FREE = [m for m in ALL if m in ops.LABEL_FREE_METHODS]


def check(logits, labels, methods=ALL, **kw):
    got = ops.score(logits, labels, methods)
    want = reference.score(logits.cpu(), None if labels is None else labels.cpu(), methods)
    assert got.dtype == torch.float32 and got.shape == (logits.shape[0], len(methods))
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-6, equal_nan=True, **kw)
    return got


@pytest.mark.parametrize("C", [1, 2, 3, 10, 16, 17, 64, 1000, 5000])
def test_random_rows_match_float64_reference(device, cpu_path, gen, C):
    N = 37
    logits = (torch.randn(N, C, generator=gen) * 4).to(device)
    labels = torch.randint(0, C, (N,), generator=gen).to(device)
    check(logits, labels)


def test_label_free_methods_accept_no_labels(device, cpu_path, gen):
    logits = torch.randn(19, 33, generator=gen).to(device)
    check(logits, None, LABEL_FREE)


def adversarial_rows(C=12):
    inf = float("inf")
    rows = [
        torch.full((C,), 3.0),                                   # all equal
        torch.linspace(-1e4, 1e4, C),                            # huge spread
        torch.linspace(8e3, 8e3 + 1, C),                         # huge offset, small spread
        torch.full((C,), -1e30).index_fill(0, torch.tensor([5]), 1e30),
        torch.tensor([30.0] + [0.0] * (C - 1)),                  # confident: p1 -> 1
        torch.tensor([-inf] * (C - 2) + [1.0, 2.0]),             # -inf entries
        torch.tensor([2.0, 2.0] + [-inf] * (C - 2)),             # tie at the top
        torch.tensor([-3e38, 3e38] + [0.0] * (C - 2)),           # near float max
        torch.full((C,), -inf),                                  # all -inf -> NaN
        torch.tensor([inf] + [0.0] * (C - 1)),                   # +inf -> NaN
        torch.tensor([float("nan")] + [0.0] * (C - 1)),          # NaN -> NaN
        torch.tensor([0.0] * (C - 1) + [float("nan")]),          # NaN in the tail
        torch.tensor([1e-40] * C),                               # denormal logits
    ]
    return torch.stack(rows)


def test_adversarial_rows(device, cpu_path):
    # Three copies: for C <= 16 the first 32 rows take the rows-as-lanes path
    # of the AVX-512 kernel, the rest the per-row path.
    logits = adversarial_rows().repeat(3, 1).to(device)
    # row 7 takes label 1: with label 0 its loss (6e38) overflows float32
    labels = torch.tensor([0, 11, 3, 5, 0, 11, 1, 1, 2, 0, 0, 0, 7]).repeat(3).to(device)
    got = check(logits, labels).view(3, 13, len(ALL))
    assert got[:, :8].isfinite().all(), "only the undefined rows may be NaN"
    assert got[:, 8:12].isnan().all()
    # ties: argmax is the first maximal index
    assert (got[:, 6, ALL.index("correct")] == 0.0).all()  # label 1, argmax 0
    assert (got[:, 0, ALL.index("margin")] == 1.0).all()


def test_thread_count_does_not_change_scores(gen):
    logits = torch.randn(1003, 10, generator=gen)
    threads = torch.get_num_threads()
    results = []
    for t in (1, max(2, threads)):
        torch.set_num_threads(t)
        results.append(ops.score(logits, None, LABEL_FREE))
    torch.set_num_threads(threads)
    assert torch.equal(*results)


def test_confident_rows_keep_relative_precision(cpu_path):
    # 1 - p1 = ~e^-20: the state keeps it without cancellation.
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    labels = torch.tensor([0, 1])
    got = ops.score(logits, labels, ["least_confidence", "loss", "el2n"]).double()
    rest = 2 * torch.exp(torch.tensor(-20.0, dtype=torch.float64))
    lc = rest / (1 + rest)
    torch.testing.assert_close(got[:, 0], lc.expand(2), rtol=1e-5, atol=0)
    torch.testing.assert_close(got[:, 1], torch.log1p(rest).expand(2), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C", [10, 1000])
def test_low_precision_error_within_2x_of_plain_pytorch(device, cpu_path, gen, dtype, C):
    logits = (torch.randn(257, C, generator=gen) * 3).to(dtype).to(device)
    labels = torch.randint(0, C, (257,), generator=gen).to(device)
    exact = reference.score(logits.cpu(), labels.cpu(), ALL)
    plain = reference.score(logits.cpu(), labels.cpu(), ALL, dtype=dtype).double()
    got = ops.score(logits, labels, ALL).cpu().double()
    for j, name in enumerate(ALL):
        err = (got[:, j] - exact[:, j]).abs().max().item()
        plain_err = (plain[:, j] - exact[:, j]).abs().max().item()
        assert err <= 2 * plain_err + 1e-6, f"{name}: {err} vs plain {dtype} {plain_err}"


def test_any_strides_give_the_contiguous_result(device, cpu_path, gen):
    base = torch.randn(40, 30, generator=gen).to(device)
    labels = torch.randint(0, 15, (40,), generator=gen).to(device)
    want = ops.score(base[:, ::2].contiguous(), labels, ALL)
    torch.testing.assert_close(ops.score(base[:, ::2], labels, ALL), want, rtol=0, atol=0)
    transposed = base[:, ::2].t().contiguous().t()
    assert transposed.stride(1) != 1
    torch.testing.assert_close(ops.score(transposed, labels, ALL), want, rtol=0, atol=0)
    rows = base[::3]
    torch.testing.assert_close(ops.score(rows, labels[::3], ALL),
                               ops.score(rows.contiguous(), labels[::3].contiguous(), ALL), rtol=0, atol=0)


@pytest.mark.parametrize("C", [1, 10, 12, 16, 40, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_load_path_gives_the_same_bits(device, gen, C, dtype):
    """On CUDA: the shared-memory tile (C <= 16, contiguous, aligned), 16-byte
    loads, and scalar loads (a base one element off 16 bytes, a row pitch
    that is not a multiple of 16 bytes) fold the same chunks in one order."""
    data = (torch.randn(301, C, generator=gen) * 4).to(dtype).to(device)
    labels = torch.randint(0, C, (301,), generator=gen).to(device)
    want = ops.score(data, labels, ALL)
    shifted = torch.empty(data.numel() + 1, dtype=dtype, device=device)[1:].view_as(data).copy_(data)
    pitched = torch.empty(301, C + 1, dtype=dtype, device=device)[:, :C].copy_(data)
    for view in (shifted, pitched):
        torch.testing.assert_close(ops.score(view, labels, ALL), want, rtol=0, atol=0, equal_nan=True)


def test_offsets_beyond_2_pow_31(cpu_path):
    # Two rows 2^31 elements apart in one (lazily allocated) bf16 buffer.
    C = 64
    storage = torch.empty(2**31 + C, dtype=torch.bfloat16)
    logits = storage.as_strided((2, C), (2**31, 1))
    logits[0] = torch.arange(C, dtype=torch.bfloat16) / 8
    logits[1] = -torch.arange(C, dtype=torch.bfloat16) / 8
    got = ops.score(logits, torch.tensor([0, 0]), ["correct", "entropy"])
    want = reference.score(logits.clone(), torch.tensor([0, 0]), ["correct", "entropy"])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert got[:, 0].tolist() == [0.0, 1.0]


def test_empty_and_shapes(device):
    assert ops.score(torch.empty(0, 5, device=device), None).shape == (0, 1)
    assert ops.score(torch.empty(0, 5, device=device), torch.empty(0, dtype=torch.long, device=device),
                     ALL).shape == (0, len(ALL))
    with pytest.raises(RuntimeError, match="C=0"):
        ops.score(torch.empty(3, 0, device=device), None)
    with pytest.raises(RuntimeError, match="2-D"):
        ops.score(torch.zeros(3, device=device), None)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        ops.score(torch.zeros(3, 4, dtype=torch.float64, device=device), None)


def test_label_errors(device):
    logits = torch.zeros(5, 4, device=device)
    with pytest.raises(RuntimeError, match="'loss' needs labels"):
        ops.score(logits, None, ["entropy", "loss"])
    bad = torch.tensor([0, 1, 4, -1, 2], device=device)
    with pytest.raises(RuntimeError, match=r"label 4 at row 2 is outside \[0, C\) with C=4"):
        ops.score(logits, bad, ["loss"], check_labels=True)
    if device.type == "cpu":  # the default checks where it is free
        with pytest.raises(RuntimeError, match=r"label 4 at row 2 is outside"):
            ops.score(logits, bad, ["loss"])
    with pytest.raises(RuntimeError, match="shape"):
        ops.score(logits, torch.zeros(4, dtype=torch.long, device=device), ["loss"])
    with pytest.raises(RuntimeError, match="int64"):
        ops.score(logits, torch.zeros(5, dtype=torch.int32, device=device), ["loss"])
    with pytest.raises(ValueError, match="unknown score method 'entropi'"):
        ops.score(logits, None, ["entropi"])
    # Unchecked: bad rows score NaN for label methods, the others are untouched.
    got = ops.score(logits, bad, ["loss", "entropy"], check_labels=False).cpu()
    assert got[[2, 3], 0].isnan().all() and got[[0, 1, 4], 0].isfinite().all()
    assert got[:, 1].isfinite().all()


@pytest.mark.cuda
def test_default_cuda_score_never_waits_for_the_gpu():
    """No label check by default on CUDA: no host sync; a bad label gives NaN."""
    logits = torch.randn(300, 10, device="cuda")
    labels = torch.randint(0, 10, (300,), device="cuda")
    labels[7] = 10
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = ops.score(logits, labels, ALL)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    label_methods = [j for j, m in enumerate(ALL) if m not in ops.LABEL_FREE_METHODS]
    assert got[7, label_methods].isnan().all().item()
    assert got[torch.arange(300, device="cuda") != 7].isfinite().all().item()


def test_labels_only_checked_when_a_method_uses_them(device):
    logits = torch.zeros(2, 3, device=device)
    ops.score(logits, torch.tensor([7, 9], device=device), ["entropy"])


@pytest.mark.parametrize("C", [1, 2, 7, 100, 1000])
def test_random_merge_trees_match_a_sequential_pass(gen, C):
    logits = torch.randn(23, C, generator=gen) * 5
    if C >= 12:
        logits = torch.cat([logits, adversarial_rows(C)])
    labels = torch.randint(0, C, (logits.shape[0],), generator=gen)
    codes = ops.method_codes(ALL)
    from unseen_fast import _C
    before = _C.cpu_path()
    _C.set_cpu_path("portable")
    try:
        sequential = ops.score(logits, labels, ALL)
    finally:
        _C.set_cpu_path(before)
    for seed in range(5):
        tree = torch.ops.unseen_fast._score_tree(logits, labels, codes, seed)
        torch.testing.assert_close(tree, sequential, rtol=2e-6, atol=1e-6, equal_nan=True)
        # argmax comes from the (max, -index) order: exact under any tree
        assert torch.equal(tree[:, ALL.index("correct")].nan_to_num(-1),
                           sequential[:, ALL.index("correct")].nan_to_num(-1))


def test_repeated_methods_and_order(device, gen):
    logits = torch.randn(9, 6, generator=gen).to(device)
    labels = torch.randint(0, 6, (9,), generator=gen).to(device)
    both = ops.score(logits, labels, ["loss", "entropy", "loss"])
    assert torch.equal(both[:, 0], both[:, 2])
    assert torch.equal(both[:, 1], ops.score(logits, None, "entropy")[:, 0])
