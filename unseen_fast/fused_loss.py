"""Training loss with per-sample statistics from the same read of the logits.

Forward: one kernel (``torch.ops.unseen_fast.cross_entropy_with_stats``,
CPU and CUDA) writes per row the loss, the statistics and the gradient
``softmax(z) - target`` (target = (1 - eps) onehot + eps / C), as
Liger-Kernel's cross-entropy does. Backward is then one scale of that
gradient by the incoming per-sample weights.

The stored gradient is bfloat16 for bfloat16 logits (then rounded twice:
once stored, once scaled; exact when the scale is a power of two, as the
trainer's 1/batch with batch 2^k) and float32 otherwise (an unscaled
float16 gradient would lose the small values GradScaler protects).
"""
from __future__ import annotations

import torch

from unseen_fast.ops import resolve_check_labels

# Columns of the statistics, in order (csrc/score_math.h, loss_and_stats).
# Each is an importance like the score op's (higher = harder), except
# p_true, correct and logit_margin (higher = easier; logit_margin =
# z_y - max_{k != y} z_k is AUM's per-update margin).
STATS = ("p_true", "correct", "true_margin", "margin", "entropy", "el2n", "loss", "logit_margin")
_OP = "unseen_fast::cross_entropy_with_stats"


@torch.library.register_fake(_OP)
def _(logits, labels, label_smoothing, check_labels):
    n, c = logits.shape
    grad_dtype = torch.bfloat16 if logits.dtype == torch.bfloat16 else torch.float32
    return (logits.new_empty((n,), dtype=torch.float32), logits.new_empty((n, len(STATS)), dtype=torch.float32),
            logits.new_empty((n, c), dtype=grad_dtype))


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])  # statistics and the stored gradient carry no gradient
    ctx.save_for_backward(output[2])
    ctx.logits_dtype = inputs[0].dtype


def _backward(ctx, grad_loss, grad_stats, grad_grad):
    (grad,) = ctx.saved_tensors
    if type(grad) is torch.Tensor and grad.dtype == ctx.logits_dtype:
        # Eager: in place, as Liger-Kernel (no second [N, C] buffer; a second
        # backward through the same graph is refused by autograd's version
        # check). Computed in float32, rounded once to the stored dtype.
        return grad.mul_(grad_loss.unsqueeze(1)), None, None, None
    # Traced (torch.compile sees a FunctionalTensor and refuses a mutated
    # forward output), or float16 logits with a float32 stored gradient.
    out = torch.empty(grad.shape, dtype=ctx.logits_dtype, device=grad.device)
    torch.mul(grad, grad_loss.unsqueeze(1), out=out)
    return out, None, None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


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
    loss, stats, _ = torch.ops.unseen_fast.cross_entropy_with_stats(logits, labels, float(label_smoothing),
                                                                    resolve_check_labels(check_labels, logits))
    return loss, stats.detach()
