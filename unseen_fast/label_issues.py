"""Samples whose given label looks wrong, from models that never saw them.

Confident learning (Northcutt et al. 2021, cleanlab) on UNSEEN's
out-of-fold predictions, ranked by self-confidence. A class's threshold t_c
is the mean probability the scoring models give the label to the samples
labelled c (how sure they are of their own class). A sample labelled y is a
label issue when the models that never saw it (the K-1) give y, on average,
at most ``factor`` x t_y. The threshold is relative, so it follows the
models' quality and the number of classes. Measured with 10% of labels
flipped (scripts/label_issue_check.py, docs/RESULTS.md): factor 0.1 keeps
precision near 0.8 even with fold models at ~40% accuracy (10,000 CIFAR-10
images) and above 0.9 on digits; requiring the K-1 models to agree on one
other class lowered recall without raising precision there.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from unseen_fast.evaluate import ScoringPass


DEFAULT_FACTOR = 0.1


@dataclass
class LabelIssues:
    ids: np.ndarray                # (I,) sample ids, the surest first
    predicted: np.ndarray          # (I,) the class most of the K-1 models put it in (-1: none but its own)
    confidence: np.ndarray         # (I,) those models' mean probability of that class
    label_probability: np.ndarray  # (I,) the K-1 models' mean probability of the given label

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


def find_label_issues(evidence: ScoringPass, use: np.ndarray, labels: np.ndarray, num_classes: int,
                      factor: float = DEFAULT_FACTOR) -> LabelIssues:
    """The label issues among the samples that ``use`` says were scored.

    Parameters
    ----------
    evidence : the stage-1 scoring pass, (M, N) arrays
    use : (M, N) bool, which model scored which sample (under UNSEEN: the models that never saw it)
    labels : (N,) int, the given labels
    factor : a sample is an issue when its label's mean probability is at most factor x its class's threshold
    """
    labels = np.asarray(labels, dtype=np.int64)
    label_probability = _mean_over_scorers(evidence.label_probability, use)
    thresholds = class_thresholds(evidence, use, labels, num_classes)
    with np.errstate(invalid="ignore"):
        flagged = label_probability <= factor * thresholds[labels]  # NaN (unscored, no threshold): False
    ids = np.flatnonzero(flagged)
    ids = ids[np.argsort(label_probability[ids] / thresholds[labels[ids]], kind="stable")]
    predicted, confidence = _other_class(evidence, use, labels, ids)
    return LabelIssues(ids=ids, predicted=predicted, confidence=confidence,
                       label_probability=label_probability[ids].astype(np.float32))


def _other_class(evidence: ScoringPass, use: np.ndarray, labels: np.ndarray, ids: np.ndarray):
    """For each of ``ids``: the top class (other than its label) most of its
    scoring models predict, ties to the lower class, and those models' mean
    probability of it; (-1, NaN) when every model predicts the label."""
    top = np.where(use[:, ids], evidence.predicted[:, ids], np.nan)
    top[top == labels[ids]] = np.nan
    votes = (top[:, None, :] == top[None, :, :]).sum(1)  # (M, I): models voting as model m (NaN: none)
    winners = np.isfinite(top) & (votes == votes.max(0, initial=0))
    predicted = np.where(winners, top, np.inf).min(0, initial=np.inf)  # ties: the lower class
    predicted[np.isinf(predicted)] = np.nan
    agree = top == predicted
    with np.errstate(invalid="ignore"):
        confidence = np.where(agree, evidence.confidence[:, ids], 0).sum(0) / agree.sum(0)
    return np.nan_to_num(predicted, nan=-1).astype(np.int64), confidence.astype(np.float32)


def label_issues_csv(issues: LabelIssues, paths: list[str], labels: np.ndarray, classes: list[str]) -> str:
    """The report: one row per issue, the surest first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "given_label", "given_class", "predicted_label", "predicted_class", "confidence",
                     "label_probability"])
    for i, c, p, q in zip(issues.ids.tolist(), issues.predicted.tolist(), issues.confidence.tolist(),
                          issues.label_probability.tolist()):
        named = c >= 0
        writer.writerow([paths[i], int(labels[i]), classes[labels[i]], c if named else "",
                         classes[c] if named else "", f"{p:.4f}" if named else "", f"{q:.4f}"])
    return buffer.getvalue()


def _mean_over_scorers(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """(N,) mean of ``values`` over the models that scored each sample (NaN when none)."""
    counts = use.sum(0)
    total = np.where(use, np.nan_to_num(values), 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
