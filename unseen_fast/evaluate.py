"""Trained models applied to samples: the scoring pass (models x batches ->
per-sample scores, each image decoded once), penultimate features, logits
and accuracy reports. Used by prune, train --val-data, experiment and
analyze; every pass uses the evaluation transform."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from unseen_fast import ops
from unseen_fast.constants import amp_dtype, input_dtype, resolve_amp
from unseen_fast.data import ImageIndex, make_loader

EVAL_BATCH = 512  # no gradients: larger batches than training


def concrete_precision(config, device):
    """``config`` (a TrainConfig) with "auto" precision resolved for ``device``."""
    return dataclasses.replace(config, amp=resolve_amp(config.amp, device))


def eval_loader(index: ImageIndex, ids, config, *, device, loader_kwargs: dict | None = None):
    """Evaluation batches of ``ids`` as models trained with ``config`` (a TrainConfig) see them."""
    config = concrete_precision(config, device)
    return make_loader(index, ids, train=False, batch_size=max(EVAL_BATCH, config.batch_size),
                       image_size=config.image_size, device=device, backend=config.backend,
                       dtype=input_dtype(config.amp), **(loader_kwargs or {}))


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer (fastnet's ``head``, torchvision's ``fc``)."""
    return model.head if hasattr(model, "head") else model.fc


def model_classes(model: nn.Module) -> int:
    return classifier_head(model).out_features


@dataclasses.dataclass
class ScoringPass:
    """What the scoring pass gives, each (models, samples) float32, NaN where
    a model did not score a sample: the importance, correctness (1/0), and
    the evidence for label issues: the model's top class (as a float),
    its probability, and the probability of the given label."""
    scores: np.ndarray
    correct: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    label_probability: np.ndarray

    @classmethod
    def empty(cls, models: int, samples: int) -> "ScoringPass":
        return cls(*np.full((5, models, samples), np.nan, dtype=np.float32))

    def as_arrays(self) -> dict:
        return dataclasses.asdict(self)


@torch.inference_mode()
def score_samples(models: list[nn.Module], index: ImageIndex, ids, config, method: str, *, device="cpu",
                  loader_kwargs: dict | None = None, use: np.ndarray | None = None) -> ScoringPass:
    """Score ``ids`` with every model, each image decoded once.

    Returns a ScoringPass of (len(models), len(ids)) arrays: the importance
    ``method`` (see ``ops.score``), correctness, and the top class, its
    probability and the given label's probability. Model k scores only the
    samples where ``use[k]`` (default: all), NaN elsewhere, so no forward
    pass is spent on a score that is dropped. The samples are grouped by
    which models score them (under UNSEEN: by fold), so every batch goes
    whole through each of its models (static shapes, no masks); results stay
    on the device until one copy at the end.
    """
    device = torch.device(device)
    config = concrete_precision(config, device)
    ids = np.asarray(ids, dtype=np.int64)
    use = np.ones((len(models), len(ids)), dtype=bool) if use is None else np.asarray(use, dtype=bool)
    fields = len(dataclasses.fields(ScoringPass))
    out = torch.full((fields, len(models), len(ids)), float("nan"), device=device)
    position = torch.empty(len(index), dtype=torch.int64)
    position[torch.from_numpy(ids)] = torch.arange(len(ids))
    position = position.to(device)
    # one read of the logits: the importance, correct, 1 - p_top, -log p_label
    codes = ops.method_codes([method, "correct", "least_confidence", "loss"])
    dtype = amp_dtype(config.amp)
    patterns, group = np.unique(use.T, axis=0, return_inverse=True)
    for pattern_number, pattern in enumerate(patterns):
        scorers = np.flatnonzero(pattern).tolist()
        members = ids[group.reshape(-1) == pattern_number]
        if not scorers or not len(members):
            continue
        for images, labels, sample_ids in eval_loader(index, members, config, device=device,
                                                      loader_kwargs=loader_kwargs):
            rows = position[sample_ids]
            images = images.contiguous(memory_format=torch.channels_last)
            for k in scorers:
                with torch.autocast(device.type, dtype=dtype, enabled=config.amp != "off"):
                    logits = models[k](images)
                # labels come from the validated index: no check, no host sync
                scored = torch.ops.unseen_fast.score(logits, labels, codes, False)
                top = logits.argmax(1).float()  # exact: class ids < 2^24
                result = torch.stack([scored[:, 0], scored[:, 1], top, 1 - scored[:, 2], torch.exp(-scored[:, 3])])
                out[:, k].index_copy_(1, rows, result.float())
    return ScoringPass(*out.cpu().numpy())


@torch.inference_mode()
def penultimate_features(model: nn.Module, index: ImageIndex, config, *, device="cpu",
                         loader_kwargs: dict | None = None) -> np.ndarray:
    """(N, D) float32 input of the classifier head for every sample of ``index``."""
    device = torch.device(device)
    config = concrete_precision(config, device)
    captured = []
    hook = classifier_head(model).register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0].flatten(1).float()))
    dtype = amp_dtype(config.amp)
    out = None
    try:
        for images, _, sample_ids in eval_loader(index, np.arange(len(index)), config, device=device,
                                                 loader_kwargs=loader_kwargs):
            captured.clear()
            with torch.autocast(device.type, dtype=dtype, enabled=config.amp != "off"):
                model(images.contiguous(memory_format=torch.channels_last))
            if out is None:
                out = np.empty((len(index), captured[0].shape[1]), dtype=np.float32)
            out[sample_ids.cpu().numpy()] = captured[0].cpu().numpy()
    finally:
        hook.remove()
    return out


@torch.no_grad()
def predict_logits(model: nn.Module, index: ImageIndex, ids, *, image_size: int, device="cpu",
                   batch_size: int = EVAL_BATCH, amp: str = "auto", **loader_kwargs) -> torch.Tensor:
    """(len(ids), C) float32 logits, row i for ids[i] (evaluation transform)."""
    ids = np.asarray(ids, dtype=np.int64)
    device = torch.device(device)
    model.eval()
    amp = resolve_amp(amp, device)
    dtype = amp_dtype(amp)
    out = torch.empty(len(ids), model_classes(model), dtype=torch.float32, device=device)
    position = torch.empty(len(index), dtype=torch.int64, device=device)
    position[torch.from_numpy(ids).to(device)] = torch.arange(len(ids), device=device)
    loader = make_loader(index, ids, train=False, batch_size=batch_size, image_size=image_size, device=device,
                         dtype=input_dtype(amp), **loader_kwargs)
    for images, _, sample_ids in loader:
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            out[position[sample_ids]] = model(images).float()
    return out


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """top1, per-class accuracy and the variance of per-class accuracy."""
    logits, labels = logits.cpu(), labels.cpu()  # one copy; the report is read on the host
    correct = (logits.argmax(1) == labels).double()
    per_class = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, labels, correct)
    counts = torch.bincount(labels, minlength=len(classes)).double()
    present = counts > 0
    acc = per_class[present] / counts[present]
    return dict(top1=float(correct.mean()) if len(correct) else float("nan"), num_samples=len(correct),
                per_class={c: float(per_class[i] / counts[i]) for i, c in enumerate(classes) if present[i]},
                class_accuracy_variance=float(acc.var(unbiased=False)) if len(acc) else float("nan"))
