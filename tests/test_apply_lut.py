"""apply_lut (uint8 -> per-channel table values) against indexing in float64."""
import pytest
import torch

from unseen_fast import ops
from unseen_fast.data.transforms import MEAN, STD, finish_batch, normalization_table


def reference(pixels, table):
    c = pixels.shape[-1]
    return table.cpu().double().reshape(-1)[pixels.cpu().long() * c + torch.arange(c)]


@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (5, 7, 3), (2, 17, 13, 4), (3, 1000, 3), (2, 9, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_matches_reference(gen, device, shape, dtype):
    pixels = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(device)
    table = torch.randn(256, shape[-1], generator=gen).to(device, dtype)
    out = ops.apply_lut(pixels, table)
    assert out.dtype == dtype and out.shape == pixels.shape and out.device == pixels.device
    assert torch.equal(out.cpu().double(), reference(pixels, table))


def test_non_contiguous_unaligned_and_extreme_levels(gen, device):
    pixels = torch.randint(0, 256, (4, 3, 9, 11), generator=gen, dtype=torch.uint8).permute(0, 2, 3, 1)
    pixels[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    pixels = pixels.to(device)
    table = torch.randn(256, 3, generator=gen).to(device)
    assert torch.equal(ops.apply_lut(pixels, table).cpu().double(), reference(pixels, table))
    strided = pixels[:, ::2]
    assert torch.equal(ops.apply_lut(strided, table).cpu().double(), reference(strided, table))
    flat = torch.randint(0, 256, (3 * 700 + 1,), generator=gen, dtype=torch.uint8).to(device)
    unaligned = flat[1:].view(700, 3)  # a storage offset of one byte
    assert torch.equal(ops.apply_lut(unaligned, table).cpu().double(), reference(unaligned, table))


@pytest.mark.cuda
def test_cuda_lut_is_the_compiled_kernel_and_never_waits(gen):
    """On a GPU the loaders' normalization is the CUDA kernel (not the
    indexing fallback, whose int64 index is 8x the batch) and never syncs."""
    from unseen_fast.data.lut import _COMPILED_FOR

    assert "cuda" in _COMPILED_FOR, "the extension was built without its CUDA apply_lut"
    pixels = torch.randint(0, 256, (64, 32, 32, 3), generator=gen, dtype=torch.uint8).cuda()
    table = normalization_table(torch.bfloat16, pixels.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.apply_lut(pixels, table)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu().double(), reference(pixels, table))
    with pytest.raises(RuntimeError, match="apply_lut: table is on cuda:0 but pixels are on cpu"):
        ops.apply_lut(pixels.cpu(), table)  # the device message, not the CUDA guard's


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finish_batch_equals_the_float_formula(gen, dtype):
    images = torch.randint(0, 256, (6, 3, 10, 12), generator=gen, dtype=torch.uint8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    inv_std = torch.tensor([1 / s for s in STD]).view(1, 3, 1, 1)
    expected = ((images.float() - mean) * inv_std).to(dtype)
    out = finish_batch(images, dtype=dtype, device="cpu")
    assert torch.equal(out, expected) and out.is_contiguous(memory_format=torch.channels_last)
    exact = (images.double() - mean.double()) / torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert (out.double() - exact).abs().max() <= (expected.double() - exact).abs().max()
    assert normalization_table(dtype, "cpu").shape == (256, 3)


@pytest.mark.parametrize("pixels, table, message", [
    (torch.zeros(2, 3), torch.zeros(256, 3), "pixels must be uint8"),
    (torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(255, 3), r"table must be \[256, C\] with C = pixels.shape\[-1\] = 3"),
    (torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(256, 3), r"C = pixels.shape\[-1\] = 4"),
    (torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(256, 3, dtype=torch.int32),
     "table must be float32, float64, bfloat16 or float16, got Int"),
])
def test_errors(device, pixels, table, message):
    with pytest.raises(RuntimeError, match=message):
        ops.apply_lut(pixels.to(device), table.to(device))


def test_apply_lut_compiles_without_a_graph_break(gen):
    pixels = torch.randint(0, 256, (2, 5, 3), generator=gen, dtype=torch.uint8)
    table = torch.randn(256, 3, generator=gen)
    compiled = torch.compile(ops.apply_lut, fullgraph=True, backend="eager")
    assert torch.equal(compiled(pixels, table), ops.apply_lut(pixels, table))


def test_opcheck(gen, device):
    pixels = torch.randint(0, 256, (3, 5, 3), generator=gen, dtype=torch.uint8).to(device)
    table = torch.randn(256, 3, generator=gen).to(device)
    torch.library.opcheck(torch.ops.unseen_fast.apply_lut, (pixels, table))
