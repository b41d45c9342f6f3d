"""Samples whose given label looks wrong, from models that never saw them.

The rule is confident learning (Northcutt et al. 2021, cleanlab) on UNSEEN's
out-of-fold predictions. A class's threshold is the mean probability the
scoring models give the label to the samples labelled with that class (how
confident they are on their own class). A sample is a label issue when every
model that scored it (the K-1 that never saw it) puts it in the same other
class c, and their mean probability of c reaches c's threshold.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from unseen_fast.evaluate import ScoringPass


@dataclass
class LabelIssues:
    ids: np.ndarray         # (I,) sample ids, most confident first
    predicted: np.ndarray   # (I,) the class the models agree on
    confidence: np.ndarray  # (I,) their mean probability of it

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, n: int) -> np.ndarray:
        flagged = np.zeros(n, dtype=bool)
        flagged[self.ids] = True
        return flagged


def class_thresholds(evidence: ScoringPass, use: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) mean over samples labelled c of the scoring models' mean
    probability of c (NaN for a class no model scored)."""
    label_probability = _mean_over_scorers(evidence.label_probability, use)
    scored = np.isfinite(label_probability)
    totals = np.bincount(labels[scored], weights=label_probability[scored], minlength=num_classes)
    counts = np.bincount(labels[scored], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals / counts


def find_label_issues(evidence: ScoringPass, use: np.ndarray, labels: np.ndarray,
                      num_classes: int) -> LabelIssues:
    """The label issues among the samples that ``use`` says were scored.

    Parameters
    ----------
    evidence : the stage-1 scoring pass, (M, N) arrays
    use : (M, N) bool, which model scored which sample (under UNSEEN: the models that never saw it)
    labels : (N,) int, the given labels
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.where(use, evidence.predicted, np.nan)
    # fmax/fmin skip NaN (models that did not score): equal when the scorers agree
    first = np.fmax.reduce(predicted, axis=0)
    scored = use.any(0) & np.isfinite(first)
    agree = scored & (np.fmin.reduce(predicted, axis=0) == first)
    top = np.where(agree, first, -1).astype(np.int64)
    confidence = _mean_over_scorers(evidence.confidence, use)
    thresholds = class_thresholds(evidence, use, labels, num_classes)
    flagged = agree & (top != labels)
    flagged[flagged] &= confidence[flagged] >= thresholds[top[flagged]]
    ids = np.flatnonzero(flagged)
    order = np.argsort(-confidence[ids], kind="stable")
    ids = ids[order]
    return LabelIssues(ids=ids, predicted=top[ids], confidence=confidence[ids].astype(np.float32))


def label_issues_csv(issues: LabelIssues, paths: list[str], labels: np.ndarray, classes: list[str]) -> str:
    """The report: one row per issue, most confident first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "given_label", "given_class", "predicted_label", "predicted_class", "confidence"])
    for i, c, p in zip(issues.ids.tolist(), issues.predicted.tolist(), issues.confidence.tolist()):
        writer.writerow([paths[i], int(labels[i]), classes[labels[i]], c, classes[c], f"{p:.4f}"])
    return buffer.getvalue()


def _mean_over_scorers(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """(N,) mean of ``values`` over the models that scored each sample (NaN when none)."""
    counts = use.sum(0)
    total = np.where(use, np.nan_to_num(values), 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
