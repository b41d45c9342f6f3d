"""Loads the compiled op library (registers the unseen_fast:: torch ops) and
refuses one built against another torch: its ops would crash, not raise."""
import os

import torch

try:
    from unseen_fast import _C
except ImportError as error:  # pragma: no cover - only on a broken install
    raise ImportError(
        "unseen_fast's compiled extension (unseen_fast._C) is missing or does not load: "
        f"{error}. Build it with `pip install --no-build-isolation -e .` "
        "(see README.md)."
    ) from error


def _torch_release(version: str) -> str:
    # "2.11.0+cu130" and "2.11.0a0" are one ABI: compare major.minor.patch
    return version.split("+")[0].split("a")[0]


_BUILT_FOR = _C.build_info()["torch_version"]
if _torch_release(_BUILT_FOR) != _torch_release(torch.__version__):
    raise ImportError(
        f"unseen_fast's compiled extension was built against torch {_BUILT_FOR} but torch "
        f"{torch.__version__} is loaded; rebuild it: pip install --no-build-isolation -e .")

# UNSEEN_FAST_CPU_SIMD=0 runs the portable CPU score path on any CPU, and
# UNSEEN_FAST_CPU_PATH=avx2|portable a path below the best this CPU has (what
# users of older CPUs get), e.g. to run the test suite the way they would.
if os.environ.get("UNSEEN_FAST_CPU_SIMD") == "0":
    _C.set_cpu_simd(False)
if os.environ.get("UNSEEN_FAST_CPU_PATH"):
    try:
        _C.set_cpu_path(os.environ["UNSEEN_FAST_CPU_PATH"])
    except ValueError as err:
        raise ValueError(f"UNSEEN_FAST_CPU_PATH: {err}") from None

__all__ = ["_C"]
