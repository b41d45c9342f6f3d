"""unseen-fast: UNSEEN dataset pruning with fused C++/CUDA kernels."""
from __future__ import annotations

__version__ = "0.1.0"


def build_info() -> dict:
    """Versions and build facts: whether CUDA kernels were compiled, the CUDA
    architectures, the CPU score path, visible GPUs and DALI availability."""
    import platform

    import numpy
    import torch

    from unseen_fast._extension import _C

    info = dict(_C.build_info())
    info.update(
        unseen_fast=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        numpy=numpy.__version__,
        cpu_score_path="avx512" if _C.cpu_simd_enabled() else "portable",
        cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        dali=_dali_version(),
    )
    return info


def _dali_version():
    try:
        import nvidia.dali as dali
    except Exception:  # not installed, or fails to load on this machine
        return None
    return dali.__version__


def prune(data, *, out, config, **kwargs):
    """UNSEEN pruning; see unseen_fast.pipeline.prune (imported lazily: torch, DALI)."""
    from unseen_fast.pipeline import prune as run

    return run(data, out=out, config=config, **kwargs)


# What a caller of prune() needs, imported on first use (torch is slow to import).
_LAZY = {"PruneConfig": "unseen_fast.pipeline", "TrainConfig": "unseen_fast.train",
         "BaselineParams": "unseen_fast.baselines", "ImageIndex": "unseen_fast.data"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unseen_fast' has no attribute {name!r}")


__all__ = ["__version__", "build_info", "prune", *_LAZY]
