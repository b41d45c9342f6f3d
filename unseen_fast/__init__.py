"""unseen-fast: UNSEEN dataset pruning with fused C++/CUDA kernels."""
from __future__ import annotations

import os

# Repeatable cuBLAS results with several CUDA streams (the fold models of --gpus 1), read when cuBLAS first
# starts in the process; a value the user set is kept (torch's reproducibility notes).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from unseen_fast.constants import __version__  # noqa: E402
from unseen_fast.info import build_info  # noqa: E402


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
