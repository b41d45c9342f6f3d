"""Typed Python API of the unseen_fast torch ops (CPU and CUDA).

Every score is an *importance*: higher means harder, and harder samples are
kept first by UNSEEN. The ops are registered as ``torch.ops.unseen_fast.*``
with fake (meta) kernels, so they trace under ``torch.compile``.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence, Union

import torch

from unseen_fast._extension import _C  # registers the ops
from unseen_fast.data.lut import apply_lut  # the data layer's op, part of the ops API
from unseen_fast.errors import UserError

#: Score methods in the order of their integer codes, read from the one list
#: in csrc/score_math.h.
METHODS = tuple(name for name, _ in _C.score_methods())
METHOD_CODES = {name: code for code, name in enumerate(METHODS)}
#: Methods that need no labels.
LABEL_FREE_METHODS = frozenset(name for name, needs_label in _C.score_methods() if not needs_label)


def method_codes(methods: Union[str, Sequence[str]]) -> list[int]:
    """Integer codes of ``methods`` (one name or a sequence of names)."""
    if isinstance(methods, str):
        methods = (methods,)
    codes = []
    for name in methods:
        if name not in METHOD_CODES:
            raise UserError(f"unknown score method {name!r}; choose from {', '.join(METHODS)}")
        codes.append(METHOD_CODES[name])
    return codes


def score(
    logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    methods: Union[str, Sequence[str]] = ("entropy",),
    *,
    check_labels: Optional[bool] = None,
) -> torch.Tensor:
    """Softmax-based difficulty scores of every row, all from one read of ``logits``.

    Parameters
    ----------
    logits : Tensor [N, C], float32, bfloat16 or float16
        Any strides. Low-precision input is read as is and accumulated in float32.
    labels : Tensor [N], int64, optional
        True class of each row, in ``[0, C)``. Needed by ``loss``, ``el2n``,
        ``true_margin`` and ``correct``.
    methods : str or sequence of str
        With ``p = softmax(z)``, ``p1 >= p2`` the two largest probabilities and
        ``y`` the label (every score: higher = harder = kept first):

        - ``entropy``: ``-sum p log p`` (0 log 0 = 0), in ``[0, log C]``.
        - ``loss``: ``logsumexp(z) - z_y`` (cross-entropy), ``>= 0``.
        - ``least_confidence``: ``1 - p1``, in ``[0, 1 - 1/C]``.
        - ``margin``: ``1 - (p1 - p2)``, in ``[0, 1]`` (label-free).
        - ``el2n``: ``||p - onehot(y)||_2``, in ``[0, sqrt 2]``.
        - ``true_margin``: ``-(p_y - max_{k != y} p_k)``, in ``[-1, 1]``
          (for ``C = 1`` the other maximum counts as 0).
        - ``correct``: 1.0 where ``argmax z == y`` (first index on ties), else 0.0.
    check_labels : bool, optional
        Raise on labels outside ``[0, C)``, naming the first bad row. On CUDA
        this costs one host synchronisation; with ``False`` there is none and
        a bad row gets NaN for the label methods (never an out-of-bounds read).
        Default: check on the CPU (free), not on CUDA, so the default CUDA
        call never waits for the GPU; labels from an ``ImageIndex`` were
        validated when the index was built.

    Returns
    -------
    Tensor [N, len(methods)], float32
        Column ``j`` holds ``methods[j]``. A row containing NaN or +inf, or only
        -inf, scores NaN in every column.
    """
    _tensors("score", logits=logits, labels=labels)
    check = resolve_check_labels(check_labels, logits)
    return torch.ops.unseen_fast.score(logits, labels, method_codes(methods), check)


def _tensors(op: str, **arguments) -> None:
    """One line for a list or a NumPy array where the ops take tensors (they
    raised an AttributeError or a schema dump)."""
    for name, value in arguments.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise UserError(f"{op}: {name} must be a torch.Tensor, got {type(value).__module__}."
                            f"{type(value).__qualname__} (torch.as_tensor converts it)")


def resolve_check_labels(check_labels: Optional[bool], logits: torch.Tensor) -> bool:
    """None: check where it is free (CPU), not where it costs a host sync (CUDA)."""
    return logits.device.type == "cpu" if check_labels is None else bool(check_labels)


def normalize(scores: torch.Tensor) -> torch.Tensor:
    """``scores / scores.sum()``, the sum taken in float64 in a fixed order.

    Parameters
    ----------
    scores : Tensor, float32 or float64, any shape
        Importance scores (higher = harder); their sum must be finite and > 0.

    Returns
    -------
    Tensor, same shape and dtype
        Normalized scores (they sum to 1); the same bits on every run.
    """
    _tensors("normalize", scores=scores)
    # importances are >= 0; s / sum(s) of mixed signs is no ranking (eager only: a traced graph cannot branch on data)
    if not torch.compiler.is_compiling() and scores.numel() and bool((scores < 0).any()):
        first = int((scores.flatten() < 0).nonzero()[0, 0])
        raise UserError(f"normalize: score at flat index {first} is {float(scores.flatten()[first])}; importances "
                        f"must be >= 0")
    return torch.ops.unseen_fast.normalize(scores)


def _whole_k(k) -> int:
    if isinstance(k, torch.Tensor) and k.numel() == 1 and not k.is_floating_point() and k.dtype != torch.bool:
        return int(k)  # a count computed with tensors
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):  # 2.5 must not become 2
        raise UserError(f"select_topk: k must be an int (a number of samples), got {k!r} ({type(k).__name__})")
    return int(k)


def select_topk(
    scores: torch.Tensor,
    k: int,
    *,
    labels: Optional[torch.Tensor] = None,
    balanced: bool = False,
    exclude: Optional[torch.Tensor] = None,
    sorted: bool = False,
) -> torch.Tensor:
    """Indices of the ``k`` highest scores (higher = harder = kept first).

    Parameters
    ----------
    scores : Tensor [N], float32 or float64, no NaN
    k : int
        How many to select, ``0 <= k <=`` number of eligible samples.
    labels : Tensor [N], int64, optional
        Class of each sample (>= 0); required when ``balanced``.
    balanced : bool
        Give every class a quota proportional to its share of the eligible
        samples (largest-remainder rounding, quotas sum to ``k``, never more
        than a class has) and take the highest of each class.
    exclude : Tensor [N], bool, optional
        ``True`` removes a sample from the candidates.
    sorted : bool
        ``False``: ascending index order. ``True``: descending score order.

    Returns
    -------
    Tensor [k], int64
        Ties between equal scores go to the lower index; the result is the
        same on every run and on CPU and CUDA.
    """
    _tensors("select_topk", scores=scores, labels=labels, exclude=exclude)
    return torch.ops.unseen_fast.select_topk(scores, _whole_k(k), labels, balanced, exclude, sorted)


def select_topk_deferred(
    scores: torch.Tensor,
    k: int,
    *,
    labels: Optional[torch.Tensor] = None,
    balanced: bool = False,
    exclude: Optional[torch.Tensor] = None,
    sorted: bool = False,
    num_classes: int = 1,
) -> tuple[torch.Tensor, Callable[[], None]]:
    """``select_topk`` that never waits for the GPU: returns ``(indices, check)``.

    On CUDA the argument checks that need the data (NaN scores, labels outside
    ``[0, num_classes)``, ``k`` above the eligible count) are recorded on the
    device; ``check()`` reads them (one host sync: call it where you read the
    result anyway) and raises what ``select_topk`` would have. Until then
    ``indices`` of bad input are unspecified (never out of bounds). On the CPU
    bad input raises at once. ``num_classes`` sizes the per-class work of
    ``balanced`` (``select_topk`` reads it from the labels, which is a sync).
    """
    _tensors("select_topk_deferred", scores=scores, labels=labels, exclude=exclude)
    k = _whole_k(k)
    indices, errors = torch.ops.unseen_fast.select_topk_deferred(scores, k, labels, balanced, exclude, sorted,
                                                                 int(num_classes))

    def check() -> None:
        torch.ops.unseen_fast.check_select_errors(errors, labels, k, scores.shape[0], int(num_classes))

    return indices, check


@torch.library.register_fake("unseen_fast::score")
def _score_fake(logits, labels, methods, check_labels=True):
    return logits.new_empty((logits.shape[0], len(methods)), dtype=torch.float32)


@torch.library.register_fake("unseen_fast::_score_tree")
def _score_tree_fake(logits, labels, methods, seed):
    return logits.new_empty((logits.shape[0], len(methods)), dtype=torch.float32)


@torch.library.register_fake("unseen_fast::normalize")
def _normalize_fake(scores):
    return torch.empty_like(scores)


@torch.library.register_fake("unseen_fast::select_topk")
def _select_topk_fake(scores, k, labels, balanced, exclude, sorted):
    return scores.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("unseen_fast::select_topk_deferred")
def _select_topk_deferred_fake(scores, k, labels, balanced, exclude, sorted, num_classes):
    return scores.new_empty((k,), dtype=torch.int64), scores.new_empty((4,), dtype=torch.int64)


__all__ = ["METHODS", "LABEL_FREE_METHODS", "apply_lut", "method_codes", "score", "normalize", "select_topk",
           "select_topk_deferred"]
