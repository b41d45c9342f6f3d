"""The data layer's compiled op: uint8 pixels -> normalized values through a
per-channel table, in one pass (the normalization step of every loader)."""
from __future__ import annotations

import torch

from unseen_fast._extension import _C  # noqa: F401  (registers the ops)


def apply_lut(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Look up every uint8 value in a per-channel table, in one pass.

    Parameters
    ----------
    pixels : torch.Tensor
        (..., C) uint8, channels last (for example an NHWC image batch).
    table : torch.Tensor
        (256, C) float32, float64, bfloat16 or float16: ``table[v, c]`` replaces
        value ``v`` of channel ``c``.

    Returns
    -------
    torch.Tensor
        pixels.shape, table's dtype: ``out[..., c] = table[pixels[..., c], c]``.
        CPU and CUDA tensors use the compiled kernels (CUDA: the table in
        shared memory, 16-byte loads); other devices, or an extension built
        without CUDA, an indexing fallback (an int64 index 8x the pixels).
    """
    if pixels.device.type in _COMPILED_FOR:
        return torch.ops.unseen_fast.apply_lut(pixels, table)
    channels = torch.arange(pixels.shape[-1], device=pixels.device)
    return table.reshape(-1)[pixels.long() * pixels.shape[-1] + channels]


# The device types the extension has an apply_lut kernel for, read once at
# import (a constant, so torch.compile traces apply_lut without a graph break).
_COMPILED_FOR = frozenset(device_type for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                          if torch._C._dispatch_has_kernel_for_dispatch_key("unseen_fast::apply_lut", key))


@torch.library.register_fake("unseen_fast::apply_lut")
def _apply_lut_fake(pixels, table):
    return pixels.new_empty(pixels.shape, dtype=table.dtype)
