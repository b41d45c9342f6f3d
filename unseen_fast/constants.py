"""Constants and small conversions used across layers; imports nothing of
the package, so every module may import it."""
from __future__ import annotations

__version__ = "0.1.0"

# Image sizes up to this are "small" (CIFAR-like): pad-and-crop augmentation,
# a 3x3 stem without max-pool, and training at the native size.
SMALL_IMAGE_MAX = 64

AMP_MODES = ("bf16", "fp16", "off")


def amp_dtype(amp: str) -> "torch.dtype":
    """The autocast dtype of an ``amp`` setting ("bf16", "fp16" or "off")."""
    import torch  # here: `import unseen_fast` stays light

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]


def input_dtype(amp: str) -> "torch.dtype":
    """The dtype loaders deliver images in: bf16 under bf16 autocast (half the
    bytes, no cast in the first layer); float32 otherwise, since fp16
    autocast keeps a float32 master path that GradScaler expects."""
    import torch

    return torch.bfloat16 if amp == "bf16" else torch.float32
