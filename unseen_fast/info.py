"""Build and environment facts: `unseen-fast info` and ``unseen_fast.build_info()``."""
from __future__ import annotations

from unseen_fast.constants import __version__


def build_info() -> dict:
    """Versions and build facts: whether CUDA kernels were compiled, the CUDA
    architectures, the CPU score path, visible GPUs and DALI availability."""
    import platform

    import numpy
    import torch

    from unseen_fast._extension import _C
    from unseen_fast.data.dali_loader import dali_version

    info = dict(_C.build_info())
    info.update(
        unseen_fast=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        numpy=numpy.__version__,
        cpu_score_path=_C.cpu_path(),
        cuda_devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        dali=dali_version(),
    )
    return info

