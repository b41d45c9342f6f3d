"""Constants and small conversions used across layers; imports nothing of
the package, so every module may import it."""
from __future__ import annotations

__version__ = "0.1.0"

# Image sizes up to this are "small" (CIFAR-like): pad-and-crop augmentation,
# a 3x3 stem without max-pool, and training at the native size.
SMALL_IMAGE_MAX = 64

# The largest seed a user may give: runs derive others from it (seed + 1000 x
# stage, seed + job), and these must stay inside what torch and numpy take.
MAX_SEED = 2**31 - 1

AMP_MODES = ("auto", "bf16", "fp16", "off")

# The names the CLI offers as choices, here so that `--help` imports no torch.
OUTPUT_SCORES = ("entropy", "loss", "margin", "least_confidence", "el2n")  # from one model's logits
DYNAMICS_SCORES = ("forgetting", "aum", "el2n_early", "dynunc", "tdds")   # from recorded training dynamics
FEATURE_SCORES = ("moderate",)                                              # from penultimate features
SCORES = OUTPUT_SCORES + ("random",) + DYNAMICS_SCORES + FEATURE_SCORES
FRAMEWORKS = ("unseen", "fitting", "proxy")
SELECTIONS = ("global", "balanced", "easy", "ccs", "mix", "auto")
SCORE_NORMS = ("rank", "zscore", "none")
BACKENDS = ("auto", "resident", "cache", "dali", "nvjpeg", "torchvision")


def resolve_amp(amp: str, device) -> str:
    """The concrete precision of an ``amp`` setting on ``device``: "auto" is
    bf16 where the hardware computes it natively (a CUDA GPU that supports
    it, or a CPU whose oneDNN reports native bf16), fp16 on older GPUs, and
    float32 ("off") on CPUs without native bf16, where bf16 autocast was
    measured 4.2x slower than float32 (37 vs 156 img/s, fastnet, AMD EPYC)."""
    if amp != "auto":
        return amp
    import torch

    if torch.device(device).type == "cuda":
        # not torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated (before
        # Ampere), and it asks about the current device rather than this one
        return "bf16" if torch.cuda.get_device_capability(torch.device(device))[0] >= 8 else "fp16"
    return "bf16" if cpu_has_native_bf16() else "off"


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def amp_dtype(amp: str) -> "torch.dtype":
    """The autocast dtype of an ``amp`` setting ("bf16", "fp16" or "off")."""
    import torch  # here: `import unseen_fast` stays light

    if amp not in AMP_MODES[1:]:
        raise ValueError(f"amp {amp!r} has no dtype; resolve 'auto' with resolve_amp(amp, device) first")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]


def input_dtype(amp: str) -> "torch.dtype":
    """The dtype loaders deliver images in: bf16 under bf16 autocast (half the
    bytes, no cast in the first layer); float32 otherwise, since fp16
    autocast keeps a float32 master path that GradScaler expects."""
    import torch

    return torch.bfloat16 if amp == "bf16" else torch.float32


def can_draw_bars() -> bool:
    """A progress bar shows where a person watches: a terminal or a Jupyter
    notebook; redirected logs get log lines instead."""
    import sys

    return sys.stderr.isatty() or "ipykernel" in sys.modules
