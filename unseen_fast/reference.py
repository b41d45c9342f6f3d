"""Plain-PyTorch references of the ops, float64 by default.

Written for clarity, not speed: tests and benchmarks compare the kernels with
these. ``dtype`` picks the precision the formulas run in, so the same code is
also "a plain PyTorch implementation in low precision" for error budgets.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from unseen_fast.ops import METHODS


def score(
    logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    methods: Sequence[str] = ("entropy",),
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Scores [N, len(methods)] in ``dtype`` with the same NaN policy as the op."""
    if isinstance(methods, str):
        methods = (methods,)
    z = logits.to(dtype)
    n, c = z.shape
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    top = p.topk(min(2, c), dim=1).values
    p1 = top[:, 0]
    p2 = top[:, 1] if c > 1 else torch.zeros_like(p1)
    columns = []
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}")
        if name == "entropy":
            col = torch.special.entr(p).sum(1)
        elif name == "least_confidence":
            col = 1 - p1
        elif name == "margin":
            col = 1 - (p1 - p2)
        else:
            if labels is None:
                raise ValueError(f"method {name!r} needs labels")
            y = labels.long().view(-1, 1)
            p_y = p.gather(1, y).squeeze(1)
            if name == "loss":
                col = -logp.gather(1, y).squeeze(1)
            elif name == "el2n":
                onehot = torch.zeros_like(p).scatter_(1, y, 1.0)
                col = (p - onehot).square().sum(1).sqrt()
            elif name == "true_margin":
                others = p.scatter(1, y, -1.0).max(1).values if c > 1 else torch.zeros_like(p_y)
                col = -(p_y - others.clamp_min(0))
            elif name == "logit_gap":
                col = z.scatter(1, y, float("-inf")).max(1).values - z.gather(1, y).squeeze(1)
            else:  # correct
                col = (z.argmax(1) == y.squeeze(1)).to(dtype)
        columns.append(col)
    out = torch.stack(columns, 1) if columns else z.new_empty((n, 0))
    # Softmax is undefined for rows with NaN or +inf, or with only -inf.
    undefined = z.isnan().any(1) | z.isposinf().any(1) | z.isneginf().all(1)
    return out.masked_fill(undefined.view(-1, 1), float("nan"))


def normalize(scores: torch.Tensor) -> torch.Tensor:
    """``scores / scores.sum()`` with the sum in float64."""
    wide = scores.double()
    return (wide / wide.sum()).to(scores.dtype)


def _largest_remainder(counts: list[int], k: int) -> list[int]:
    n = sum(counts)
    if n == 0 or k == 0:
        return [0] * len(counts)
    quotas = [k * c // n for c in counts]
    remainders = [k * c % n for c in counts]
    order = sorted(range(len(counts)), key=lambda c: (-remainders[c], c))
    for c in order[: k - sum(quotas)]:
        quotas[c] += 1
    return quotas


def select_topk(
    scores: torch.Tensor,
    k: int,
    *,
    labels: Optional[torch.Tensor] = None,
    balanced: bool = False,
    exclude: Optional[torch.Tensor] = None,
    sorted: bool = False,
) -> torch.Tensor:
    """The op's contract by sorting: highest first, ties to the lower index."""
    s = scores.double().cpu()
    candidates = torch.arange(s.numel())
    if exclude is not None:
        candidates = candidates[~exclude.cpu()]
    # Stable descending sort: equal scores keep ascending index order.
    order = candidates[torch.sort(s[candidates], descending=True, stable=True).indices]
    if not balanced:
        chosen = order[:k]
    else:
        y = labels.cpu()
        n_classes = int(y.max()) + 1 if y.numel() else 0
        counts = torch.bincount(y[candidates], minlength=n_classes).tolist()
        quotas = _largest_remainder(counts, k)
        chosen = torch.cat([order[y[order] == c][: quotas[c]] for c in range(n_classes)]
                           + [torch.empty(0, dtype=torch.long)])
    chosen = chosen.sort().values
    if sorted:  # descending score; the stable sort keeps ties in index order
        chosen = chosen[torch.sort(s[chosen], descending=True, stable=True).indices]
    return chosen.to(scores.device)
