"""Training loss with per-sample statistics from the same read of the logits.

Forward: one call of the fused score kernel gives the unsmoothed loss and
the statistics; the smoothed loss adds ``eps * (logsumexp - mean(z))``.
Backward: ``(softmax(z) - target) * grad`` from the saved logsumexp (one exp
pass; no second softmax reduction), target = (1 - eps) onehot + eps / C.
"""
from __future__ import annotations

import torch

from unseen_fast.ops import method_codes, resolve_check_labels

# Columns of the statistics, in order. Each is an importance like the score
# op's (higher = harder), except p_true, correct and logit_margin (higher =
# easier; logit_margin = z_y - max_{k != y} z_k is AUM's per-update margin).
STATS = ("p_true", "correct", "true_margin", "margin", "entropy", "el2n", "loss", "logit_margin")
_SCORE_METHODS = ("loss", "correct", "true_margin", "margin", "entropy", "el2n", "logit_gap")


@torch.library.custom_op("unseen_fast::cross_entropy_with_stats", mutates_args=())
def _cross_entropy_with_stats(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                              check_labels: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores = torch.ops.unseen_fast.score(logits, labels, method_codes(_SCORE_METHODS), check_labels)
    nll = scores[:, 0]
    true_logit = logits.gather(1, labels.view(-1, 1)).squeeze(1).float()
    lse = nll + true_logit
    if label_smoothing:
        loss = (1 - label_smoothing) * nll + label_smoothing * (lse - logits.float().mean(1))
    else:
        loss = nll.clone()
    # logit_margin = -logit_gap: from the kernel's running max / second max, no second read of the logits
    stats = torch.cat([torch.exp(-nll).unsqueeze(1), scores[:, 1:-1], nll.unsqueeze(1), -scores[:, -1:]], 1)
    return loss, stats, lse


@_cross_entropy_with_stats.register_fake
def _(logits, labels, label_smoothing, check_labels):
    n = logits.shape[0]
    return (logits.new_empty((n,), dtype=torch.float32), logits.new_empty((n, len(STATS)), dtype=torch.float32),
            logits.new_empty((n,), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    logits, labels, label_smoothing, _ = inputs
    ctx.save_for_backward(logits, labels, output[2])
    ctx.label_smoothing = label_smoothing


def _backward(ctx, grad_loss, grad_stats, grad_lse):
    logits, labels, lse = ctx.saved_tensors
    eps, classes = ctx.label_smoothing, logits.shape[1]
    grad = torch.exp(logits.float() - lse.unsqueeze(1))
    if eps:
        grad -= eps / classes
    grad.scatter_add_(1, labels.view(-1, 1), torch.full_like(lse, -(1 - eps)).unsqueeze(1))
    grad *= grad_loss.unsqueeze(1)
    return grad.to(logits.dtype), None, None, None


_cross_entropy_with_stats.register_autograd(_backward, setup_context=_setup_context)


def cross_entropy_with_stats(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                             check_labels: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy (with autograd) and per-sample statistics.

    Parameters
    ----------
    logits : torch.Tensor
        (N, C) float32, bfloat16 or float16.
    labels : torch.Tensor
        (N,) int64 in [0, C).
    label_smoothing : float
        In [0, 1): the target is (1 - eps) onehot + eps / C, as in
        ``F.cross_entropy(label_smoothing=eps)``.
    check_labels : bool, optional
        Raise on a label outside [0, C) (on CUDA a host sync per call).
        Default: on the CPU only, as ``ops.score``; the trainer passes False:
        its labels come from a validated index.

    Returns
    -------
    loss : torch.Tensor
        (N,) float32, differentiable: ``F.cross_entropy(..., reduction="none")``.
    stats : torch.Tensor
        (N, len(STATS)) float32, detached, columns ``STATS``: p_true =
        softmax(z)_y, correct (argmax == y), true_margin, margin, entropy,
        el2n, loss (unsmoothed), with the score op's definitions, and
        logit_margin = z_y - max_{k != y} z_k (+inf when C = 1).
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    loss, stats, _ = _cross_entropy_with_stats(logits, labels, float(label_smoothing),
                                               resolve_check_labels(check_labels, logits))
    return loss, stats.detach()
