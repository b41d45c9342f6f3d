"""Loads the compiled op library (registers the unseen_fast:: torch ops)."""
import torch  # noqa: F401  (libtorch must be loaded before the extension)

try:
    from unseen_fast import _C
except ImportError as error:  # pragma: no cover - only on a broken install
    raise ImportError(
        "unseen_fast's compiled extension (unseen_fast._C) is missing or does not load: "
        f"{error}. Build it with `pip install --no-build-isolation -e .` "
        "(see README.md)."
    ) from error

__all__ = ["_C"]
