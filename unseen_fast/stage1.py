"""Stage 1 of UNSEEN: the fold models (or the one fitting model), where they
and their scores live, and the one scoring pass that gives every sample its
scores from the models that never saw it."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from unseen_fast.baselines import DYNAMICS_SCORES, FEATURE_SCORES, dynamics_importance, moderate_importance
from unseen_fast.data import ImageIndex
from unseen_fast.dynamics import load_dynamics
from unseen_fast.errors import UserError
from unseen_fast.evaluate import ScoringPass, penultimate_features, score_samples
from unseen_fast.parallel import TrainJob
from unseen_fast.rundir import RunDir, fingerprint
from unseen_fast.selection import random_scores
from unseen_fast.train import config_identity, load_model

# The full-data model keeps its softmax trajectory (for TDDS) while it fits in this many bytes.
PROBABILITY_RECORD_LIMIT = 1 << 30


class Stage1Store:
    """Where the stage-1 models and scores live: the run directory, or a
    shared folder keyed by what they depend on (data, model kind, folds,
    split, seed, training config) so other runs can reuse them."""

    def __init__(self, run: RunDir, config, index: ImageIndex, share_dir):
        self.config = config
        self.n = len(index)
        train_config, probability_bytes = config.train, 0
        if config.framework == "fitting":  # the full-data model records what every dynamics baseline needs
            size = train_config.epochs * len(index) * index.num_classes * 2
            # asked for TDDS: record the trajectory whatever its size (on disk, float16)
            if size <= PROBABILITY_RECORD_LIMIT or config.score == "tdds":
                probability_bytes = size
            train_config = dataclasses.replace(train_config, record_dynamics=True,
                                               record_probabilities=probability_bytes > 0)
        self.train_config = train_config
        if share_dir is None:
            self.root, self.cache_dir, self.shared = run / "models", run / "cache", False
        else:
            kind = dict(kind="fitting", seed=config.seed) if config.framework == "fitting" else \
                dict(kind="folds", folds=config.folds, split=config.split, seed=config.seed)
            # the data's contents, not only its names and labels: a replaced image retrains
            key = fingerprint(dict(data=index.content_fingerprint, train=config_identity(train_config), **kind))
            share = Path(share_dir)
            self.root, self.cache_dir, self.shared = share / f"stage1-{kind['kind']}-{key}", share / "cache", True
            self.root.mkdir(parents=True, exist_ok=True)
        if probability_bytes:
            _check_disk_for_probabilities(self.root, probability_bytes)

    def jobs(self, fold: np.ndarray, usable: np.ndarray) -> list[TrainJob]:
        """The stage-1 trainings, on the ``usable`` samples (decodable ones) only."""
        config = self.config
        if config.score == "random":
            return []
        if config.framework == "fitting":
            return [TrainJob("fitting", np.flatnonzero(usable), str(self.root / "fitting"), seed=config.seed)]
        return [TrainJob(f"fold{k}", np.flatnonzero((fold == k) & usable), str(self.root / f"fold{k}"),
                         seed=config.seed + k) for k in range(config.folds)]

    def _scores_name(self) -> str:
        params = fingerprint(dataclasses.asdict(self.config.baseline))[:8]
        return f"per-model-{self.config.framework}-{self.config.score}-{params}"

    def load_scores(self) -> ScoringPass | None:
        """The stage-1 scoring pass saved by an earlier run, or None."""
        if not self.shared or self.config.score == "random":
            return None
        arrays = RunDir(self.root).load_npz(self._scores_name() + ".npz")
        return None if arrays is None else ScoringPass(**arrays)

    def save_scores(self, scored: ScoringPass) -> None:
        if self.shared and self.config.score != "random":
            RunDir(self.root).save_npz(self._scores_name() + ".npz", scored.as_arrays())  # atomic


def _check_disk_for_probabilities(root: Path, size: int) -> None:
    """The probability trajectory is a memmap written during training: say
    before training, not hours into it, when the disk cannot hold it."""
    if (root / "fitting" / "dynamics" / "probs.f16").exists():  # resumed: already allocated
        return
    existing = root.parent  # the run directory or the share folder: both exist by now
    free = shutil.disk_usage(existing).free
    if size > free:
        raise UserError(f"the fitting model's softmax trajectory (epochs x samples x classes x 2 bytes = "
                         f"{size / 2**30:.1f} GiB, what TDDS reads) does not fit in the {free / 2**30:.1f} GiB "
                         f"free under {existing}; free space or use fewer --epochs")


def score_stage1(config, index: ImageIndex, fold: np.ndarray, jobs: list[TrainJob], usable: np.ndarray, *, device,
                 loader_kwargs: dict, model_factory=None) -> ScoringPass:
    """The stage-1 scoring pass: (M, N) scores of each stage-1 model (NaN
    where it did not score), correctness and the label-issue evidence.
    Scores that need no forward pass (random, dynamics, features) come as
    one row without predictions."""
    n = len(index)
    if config.score in ("random",) + DYNAMICS_SCORES + FEATURE_SCORES:
        result = ScoringPass.empty(1, n)
        result.scores[0] = _score_without_predictions(config, index, jobs, device=device,
                                                      loader_kwargs=loader_kwargs, model_factory=model_factory)
        return result
    models = [load_model(job.out_dir, index.num_classes, device=device, model_factory=model_factory) for job in jobs]
    return score_samples(models, index, np.arange(n), config.train, config.score, device=device,
                         loader_kwargs=loader_kwargs, use=scoring_mask(config, fold, len(jobs)) & usable)


def _score_without_predictions(config, index: ImageIndex, jobs: list[TrainJob], *, device, loader_kwargs,
                               model_factory) -> np.ndarray:
    if config.score == "random":
        return random_scores(config.seed, 1, len(index))
    if config.score in DYNAMICS_SCORES:
        dynamics = load_dynamics(Path(jobs[0].out_dir) / "dynamics")
        return dynamics_importance(config.score, dynamics, config.baseline).astype(np.float32)
    model = load_model(jobs[0].out_dir, index.num_classes, device=device, model_factory=model_factory)
    features = penultimate_features(model, index, config.train, device=device, loader_kwargs=loader_kwargs)
    return moderate_importance(features, index.labels)[0].astype(np.float32)


def scoring_mask(config, fold: np.ndarray, models: int) -> np.ndarray:
    """(models, N) bool: which stage-1 model scores which sample. unseen:
    model k scores the samples outside fold k; proxy: only its own fold;
    one model (fitting, random, dynamics, features): every sample."""
    if models == 1 or config.framework == "fitting":
        return np.ones((models, len(fold)), dtype=bool)
    return np.stack([(fold != k) if config.framework == "unseen" else (fold == k) for k in range(models)])
