"""UNSEEN pruning (Algorithm 1 of the paper), resumable phase by phase.

Phases: fold split -> K fold trainings (train_many) -> one scoring pass in
which each image is decoded once and scored by every model that never saw
it -> normalize + top-M_1 -> incremental stages (train on S_{j-1}, score the
rest, add the top M_j) -> outputs. Every phase writes its result atomically
into the run directory and is skipped when found there, so a killed run
resumes from the last finished epoch of the last unfinished training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unseen_fast import ops
from unseen_fast.baselines import (DYNAMICS_SCORES, FEATURE_SCORES, BaselineParams, ccs_select,
                                   dynamics_importance, moderate_importance)
from unseen_fast.data import DataError, ImageIndex
from unseen_fast.fold_scores import SCORE_NORMS, combine_scores, kept_share_per_fold, model_report
from unseen_fast.parallel import TrainJob, train_many
from unseen_fast.dynamics import load_dynamics
from unseen_fast.train import TrainConfig, amp_dtype, load_model, write_json

log = logging.getLogger("unseen_fast.pipeline")

OUTPUT_SCORES = ("entropy", "loss", "margin", "least_confidence", "el2n")
SCORES = OUTPUT_SCORES + ("random",) + DYNAMICS_SCORES + FEATURE_SCORES
FRAMEWORKS = ("unseen", "fitting", "proxy")
SELECTIONS = ("global", "balanced", "ccs")
# The full-data model keeps its softmax trajectory (for TDDS) while it fits in this many bytes.
PROBABILITY_RECORD_LIMIT = 1 << 30


@dataclass
class PruneConfig:
    prune_rate: float                # fraction of samples removed, in (0, 1)
    folds: int = 4                   # K: fold models, each trained on one fold
    stages: int = 2                  # J: selection stages (1 = no incremental selection)
    stage_size: float = 0.1          # M_j for j >= 2: a fraction of N (< 1) or a count (>= 1)
    score: str = "entropy"           # importance score (higher = harder = kept first)
    framework: str = "unseen"        # unseen: K-1 unseen models; fitting: one model on all; proxy: own fold
    selection: str = "global"        # global top-M, balanced (per class, proportional), or ccs (coverage)
    score_norm: str = "rank"         # fold models' scores made comparable before the mean: rank, zscore, none
    split: str = "random"            # fold split: random or stratified by class
    seed: int = 0                    # fold split, model seeds, data order, tie-breaking
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineParams = field(default_factory=BaselineParams)  # dynamics scores and ccs

    def validate(self, index: ImageIndex) -> None:
        n = len(index)
        if not 0 < self.prune_rate < 1:
            raise ValueError(f"prune rate must be in (0, 1), got {self.prune_rate}")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {', '.join(SCORES)}")
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {self.framework!r}; choose one of {', '.join(FRAMEWORKS)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {', '.join(SELECTIONS)}")
        if self.score in DYNAMICS_SCORES + FEATURE_SCORES and (self.framework != "fitting" or self.stages != 1):
            raise ValueError(f"score {self.score!r} comes from one model trained on all samples: use framework "
                             f"'fitting' and 1 stage (got framework {self.framework!r}, {self.stages} stages)")
        if self.score_norm not in SCORE_NORMS:
            raise ValueError(f"unknown score normalization {self.score_norm!r}; choose one of "
                             f"{', '.join(SCORE_NORMS)}")
        self.baseline.validate()
        if self.split not in ("random", "stratified"):
            raise ValueError(f"split must be 'random' or 'stratified', got {self.split!r}")
        if self.framework != "fitting" and self.folds < 2:
            raise ValueError(f"need at least 2 folds, got {self.folds}")
        if self.folds > n:
            raise ValueError(f"{self.folds} folds for {n} samples")
        if self.split == "stratified" and self.framework != "fitting":
            smallest = int(index.class_counts().min())
            if smallest < self.folds:
                cls = index.classes[int(index.class_counts().argmin())]
                raise ValueError(f"stratified split into {self.folds} folds needs >= {self.folds} samples per "
                                 f"class; class {cls!r} has {smallest}")
        if self.stages < 1:
            raise ValueError(f"need at least 1 stage, got {self.stages}")
        if self.stage_size <= 0:
            raise ValueError(f"stage size must be > 0, got {self.stage_size}")
        stage_sizes(n, self.prune_rate, self.stages, self.stage_size)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def stage_sizes(n: int, prune_rate: float, stages: int, stage_size: float) -> list[int]:
    """[M_1, ..., M_J] summing to M = floor(N (1 - p)): M_j = stage_size
    (fraction of N or count) for j >= 2 and M_1 the rest; when that leaves
    M_1 <= 0, M is split evenly over the stages (and the log says so)."""
    total = int(np.floor(n * (1 - prune_rate) + 1e-9))
    if total < 1:
        raise ValueError(f"prune rate {prune_rate} keeps nothing of {n} samples")
    if stages == 1:
        return [total]
    later = int(np.floor(stage_size * n)) if stage_size < 1 else int(stage_size)
    if later < 1:
        raise ValueError(f"stage size {stage_size} of {n} samples is less than one sample")
    first = total - (stages - 1) * later
    if first > 0:
        return [first] + [later] * (stages - 1)
    if total < stages:
        raise ValueError(f"{stages} stages cannot split a coreset of {total} samples")
    log.warning("stage size %s leaves no room for stage 1 (M=%d, J=%d): splitting M evenly", stage_size, total, stages)
    base, extra = divmod(total, stages)
    return [base + (1 if j < extra else 0) for j in range(stages)]


def fold_assignment(labels: np.ndarray, folds: int, split: str, seed: int) -> np.ndarray:
    """(N,) fold of every sample: a random permutation dealt into K nearly
    equal folds, or the same within each class (stratified)."""
    n = len(labels)
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    fold = np.empty(n, dtype=np.int64)
    if split == "random":
        fold[rng.permutation(n)] = np.arange(n) % folds
        return fold
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        fold[members] = (np.arange(len(members)) + offset) % folds  # rotate so small classes spread
        offset += len(members)
    return fold


class RunDir:
    """Paths of a run directory and atomic numpy writes."""

    def __init__(self, root):
        self.root = Path(root)

    def __truediv__(self, name):
        return self.root / name

    def save_npy(self, name: str, array: np.ndarray) -> None:
        tmp = self.root / f"{name}.tmp.npy"
        np.save(tmp, array)
        tmp.replace(self.root / name)

    def load_npy(self, name: str):
        path = self.root / name
        return np.load(path) if path.exists() else None


def prune(data, *, out, config: PruneConfig, device="cpu", nproc: int | None = None, gpus: int | None = None,
          resume: bool = False, progress: bool = False, model_factory=None, share_dir=None) -> dict:
    """Run UNSEEN pruning and return the summary (also in ``out/summary.json``).

    Parameters
    ----------
    data : ImageIndex, or a path / "builtin:digits" understood by open_index
    out : path
        Run directory. An existing one is only continued with ``resume=True``
        and the same configuration and data; otherwise refused.
    config : PruneConfig
    model_factory : callable(num_classes) -> nn.Module, optional
        The user's own model instead of ``config.train.arch`` (must be
        picklable, e.g. a module-level function, when workers are used).
    share_dir : path, optional
        Keep the stage-1 models, their scores and the decoded cache here,
        keyed by everything they depend on, so runs that differ only in
        prune rate, stages, selection or score reuse them (the fold models
        serve unseen and proxy; the full-data model fitting and every
        dynamics score). Without it they live in the run directory.
    """
    from unseen_fast.data import open_index

    start_all = time.perf_counter()
    index = data if isinstance(data, ImageIndex) else open_index(data)
    config.validate(index)
    run = RunDir(out)
    _claim_run_dir(run, config, index, resume)
    n = len(index)
    sizes = stage_sizes(n, config.prune_rate, config.stages, config.stage_size)
    labels = index.labels
    timings, images = {}, {}
    stage1 = _Stage1Store(run, config, index, share_dir)
    loader_kwargs = dict(cache_dir=stage1.cache_dir)
    common = dict(device=device, nproc=nproc, gpus=gpus, loader_kwargs=loader_kwargs, progress=progress,
                  model_factory=model_factory)

    _prepare_cache(index, config, device, stage1.cache_dir, progress)
    fold = run.load_npy("folds.npy")
    if fold is None:
        fold = fold_assignment(labels, config.folds, config.split, config.seed)
        run.save_npy("folds.npy", fold)

    # Stage 1: fold models (or one model for fitting), one scoring pass, scores made comparable.
    scores = run.load_npy("selection_scores_stage1.npy")
    if scores is None:
        per_model, correct = stage1.load_scores()
        if per_model is None:
            tick = time.perf_counter()
            jobs = stage1.jobs(fold)
            if jobs:
                train_many(jobs, stage1.train_config, index, **common)
            timings["stage1_training_s"] = time.perf_counter() - tick
            images["stage1_training"] = config.train.epochs * sum(len(job.ids) for job in jobs)
            tick = time.perf_counter()
            per_model, correct = _score_stage1(config, index, fold, jobs, device, loader_kwargs, model_factory)
            timings["stage1_scoring_s"] = time.perf_counter() - tick
            images["stage1_scoring"] = n
            stage1.save_scores(per_model, correct)
        else:
            log.info("stage-1 scores reused from %s", stage1.root)
            timings["stage1_reused_from"] = str(stage1.root)
        use = scoring_mask(config, fold, len(per_model))
        run.save_npy("scores_per_model_stage1.npy", per_model)
        run.save_npy("correct_per_model_stage1.npy", correct)
        run.save_npy("score_counts_stage1.npy", use.sum(0) if config.score != "random" else np.zeros(n, np.int64))
        run.save_npy("scores_stage1.npy", combine_scores(per_model, use, "none"))  # in the score's own units
        scores = combine_scores(per_model, use, config.score_norm)
        run.save_npy("selection_scores_stage1.npy", scores)  # written last: the phase is complete
    selected = _select(scores, sizes[0], labels, config, exclude=None, stage=1)
    added = np.zeros(n, dtype=np.int64)  # stage in which each sample was added (0: pruned)
    added[selected] = 1

    # Incremental stages: train on the coreset so far, score the rest, add the hardest.
    for stage in range(2, config.stages + 1):
        name = f"scores_stage{stage}.npy"
        stage_scores = run.load_npy(name)
        coreset = np.flatnonzero(added)
        rest = np.flatnonzero(added == 0)
        if stage_scores is None:
            tick = time.perf_counter()
            job = TrainJob(f"stage{stage}", coreset, str(run / "models" / f"stage{stage}"),
                           seed=config.seed + 1000 * stage)
            if config.score != "random":
                train_many([job], config.train, index, **common)
            timings[f"stage{stage}_training_s"] = time.perf_counter() - tick
            images[f"stage{stage}_training"] = config.train.epochs * len(coreset) if config.score != "random" else 0
            tick = time.perf_counter()
            stage_scores = np.full(n, np.nan, dtype=np.float32)
            stage_correct = np.full(n, np.nan, dtype=np.float32)
            if config.score == "random":
                stage_scores[rest] = _random_scores(config.seed, stage, len(rest))
            else:
                scored, correct = _score_with(config, index, [job], rest, device, loader_kwargs, model_factory)
                stage_scores[rest], stage_correct[rest] = scored[0], correct[0]
            timings[f"stage{stage}_scoring_s"] = time.perf_counter() - tick
            images[f"stage{stage}_scoring"] = len(rest)
            run.save_npy(f"correct_stage{stage}.npy", stage_correct)
            run.save_npy(name, stage_scores)
        exclude = torch.from_numpy(added > 0)
        picked = _select(np.nan_to_num(stage_scores, nan=0.0), sizes[stage - 1], labels, config, exclude=exclude,
                         stage=stage)
        added[picked] = stage

    coreset = np.flatnonzero(added)
    assert len(coreset) == sum(sizes), (len(coreset), sizes)
    summary = _write_outputs(run, index, config, sizes, added, fold, timings, images,
                             time.perf_counter() - start_all)
    return summary


def _claim_run_dir(run: RunDir, config: PruneConfig, index: ImageIndex, resume: bool) -> None:
    """Refuse to reuse a run directory for another configuration or dataset."""
    path = run / "config.json"
    wanted = dict(fingerprint=config.fingerprint(), config=dataclasses.asdict(config))
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["fingerprint"] != wanted["fingerprint"]:
            diff = _config_diff(saved["config"], wanted["config"])
            raise DataError(f"{run.root} holds a run with a different configuration ({diff}); "
                            f"use a new --out folder")
        if not resume:
            raise DataError(f"{run.root} already holds a run of this configuration; pass --resume to continue it "
                            f"or choose a new --out folder")
        ImageIndex.load(run.root).assert_same_listing(index)
        log.info("resuming %s", run.root)
        return
    if run.root.exists() and any(run.root.iterdir()):
        raise DataError(f"{run.root} is not empty and holds no unseen-fast run; choose a new --out folder")
    run.root.mkdir(parents=True, exist_ok=True)
    index.save(run.root)
    write_json(path, wanted)


def _config_diff(saved: dict, wanted: dict, prefix: str = "") -> str:
    parts = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _config_diff(a, b, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        elif a != b:
            parts.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return "; ".join(parts)


def _prepare_cache(index, config, device, cache_dir, progress) -> None:
    """Build the decoded cache once here, before worker processes start, so
    they do not each decode the dataset."""
    from unseen_fast.data import choose_backend
    from unseen_fast.data.cache import DecodedCache
    from unseen_fast.data.transforms import Augment

    backend = config.train.backend
    if backend == "auto":
        backend = choose_backend(index, config.train.image_size, device=device)[0]
    if backend == "cache" and not index.in_memory:
        DecodedCache.open_or_build(index, Augment(config.train.image_size, train=False), cache_dir,
                                   progress=progress)


class _Stage1Store:
    """Where the stage-1 models and scores live: the run directory, or a
    shared folder keyed by what they depend on (data, model kind, folds,
    split, seed, training config) so other runs can reuse them."""

    def __init__(self, run: RunDir, config: PruneConfig, index: ImageIndex, share_dir):
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
            key = hashlib.sha256(json.dumps(dict(data=index.fingerprint, train=dataclasses.asdict(train_config),
                                                 **kind), sort_keys=True).encode()).hexdigest()[:16]
            share = Path(share_dir)
            self.root, self.cache_dir, self.shared = share / f"stage1-{kind['kind']}-{key}", share / "cache", True
            self.root.mkdir(parents=True, exist_ok=True)
        if probability_bytes:
            _check_disk_for_probabilities(self.root, probability_bytes)

    def jobs(self, fold: np.ndarray) -> list[TrainJob]:
        config = self.config
        if config.score == "random":
            return []
        if config.framework == "fitting":
            return [TrainJob("fitting", np.arange(self.n), str(self.root / "fitting"), seed=config.seed)]
        return [TrainJob(f"fold{k}", np.flatnonzero(fold == k), str(self.root / f"fold{k}"), seed=config.seed + k)
                for k in range(config.folds)]

    def _scores_name(self) -> str:
        params = hashlib.sha256(json.dumps(dataclasses.asdict(self.config.baseline), sort_keys=True).encode())
        return f"per-model-{self.config.framework}-{self.config.score}-{params.hexdigest()[:8]}"

    def load_scores(self):
        """(M, N) per-model scores and correctness saved by an earlier run, or (None, None)."""
        if not self.shared or self.config.score == "random":
            return None, None
        store = RunDir(self.root)
        return store.load_npy(self._scores_name() + ".npy"), store.load_npy(self._scores_name() + "-correct.npy")

    def save_scores(self, per_model: np.ndarray, correct: np.ndarray) -> None:
        if self.shared and self.config.score != "random":
            store = RunDir(self.root)
            store.save_npy(self._scores_name() + "-correct.npy", correct)
            store.save_npy(self._scores_name() + ".npy", per_model)  # written last: its presence means complete


def _check_disk_for_probabilities(root: Path, size: int) -> None:
    """The probability trajectory is a memmap written during training: say
    before training, not hours into it, when the disk cannot hold it."""
    if (root / "fitting" / "dynamics" / "probs.f16").exists():  # resumed: already allocated
        return
    existing = root.parent  # the run directory or the share folder: both exist by now
    free = shutil.disk_usage(existing).free
    if size > free:
        raise ValueError(f"the fitting model's softmax trajectory (epochs x samples x classes x 2 bytes = "
                         f"{size / 2**30:.1f} GiB, what TDDS reads) does not fit in the {free / 2**30:.1f} GiB "
                         f"free under {existing}; free space or use fewer --epochs")


def _score_stage1(config, index, fold, jobs, device, loader_kwargs, model_factory):
    """(M, N) scores of each stage-1 model (NaN where it did not score) and
    (M, N) whether its prediction was right (NaN where unknown). Scores that
    need no forward pass (random, dynamics, features) come as one row."""
    n = len(index)
    no_predictions = np.full((1, n), np.nan, dtype=np.float32)
    if config.score == "random":
        return _random_scores(config.seed, 1, n)[None], no_predictions
    if config.score in DYNAMICS_SCORES:
        dynamics = load_dynamics(Path(jobs[0].out_dir) / "dynamics")
        return dynamics_importance(config.score, dynamics, config.baseline)[None].astype(np.float32), no_predictions
    if config.score in FEATURE_SCORES:
        features = _features_with(config, index, jobs[0], device, loader_kwargs, model_factory)
        return moderate_importance(features, index.labels)[0][None].astype(np.float32), no_predictions
    ids = np.arange(n)
    if config.framework == "fitting":
        return _score_with(config, index, jobs, ids, device, loader_kwargs, model_factory)
    use = scoring_mask(config, fold, len(jobs))
    return _score_with(config, index, jobs, ids, device, loader_kwargs, model_factory, use=use)


def scoring_mask(config: PruneConfig, fold: np.ndarray, models: int) -> np.ndarray:
    """(models, N) bool: which stage-1 model scores which sample. unseen:
    model k scores the samples outside fold k; proxy: only its own fold;
    one model (fitting, random, dynamics, features): every sample."""
    if models == 1 or config.framework == "fitting":
        return np.ones((models, len(fold)), dtype=bool)
    return np.stack([(fold != k) if config.framework == "unseen" else (fold == k) for k in range(models)])


def _random_scores(seed: int, stage: int, count: int) -> np.ndarray:
    """The Random baseline: uniform scores fixed by (seed, stage)."""
    return np.random.Generator(np.random.PCG64([seed, 2, stage])).random(count).astype(np.float32)


def _eval_loader(config, index, ids, device, loader_kwargs):
    """Evaluation batches of ``ids`` as the models were trained to see them."""
    from unseen_fast.data import make_loader

    dtype = torch.bfloat16 if config.train.amp == "bf16" else torch.float32
    return make_loader(index, ids, train=False, batch_size=max(512, config.train.batch_size),
                       image_size=config.train.image_size, device=device, backend=config.train.backend,
                       dtype=dtype, **loader_kwargs)


@torch.inference_mode()
def _score_with(config, index, jobs, ids, device, loader_kwargs, model_factory, use=None):
    """(len(jobs), len(ids)) scores and correctness (1.0 where the model's
    top class is the label) from one pass over the data (each image decoded
    once): model k scores the samples where ``use[k]`` (default all; NaN
    elsewhere), so no forward pass is spent on a score that is dropped."""
    device = torch.device(device)
    models = [load_model(job.out_dir, index.num_classes, device=device, model_factory=model_factory) for job in jobs]
    out = np.full((len(models), len(ids)), np.nan, dtype=np.float32)
    correct = np.full((len(models), len(ids)), np.nan, dtype=np.float32)
    use_t = None if use is None else torch.from_numpy(use)
    position = np.empty(len(index), dtype=np.int64)
    position[ids] = np.arange(len(ids))
    method = ops.method_codes([config.score, "correct"])
    amp = config.train.amp != "off"
    dtype = amp_dtype(config.train.amp)
    loader = _eval_loader(config, index, ids, device, loader_kwargs)
    for images, labels, sample_ids in loader:
        rows = position[sample_ids.cpu().numpy()]
        for k, model in enumerate(models):
            pick = slice(None) if use_t is None else use_t[k, torch.from_numpy(rows)].to(images.device)
            if use_t is not None and not bool(pick.any()):
                continue
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                logits = model(images[pick].contiguous(memory_format=torch.channels_last))
            scored = torch.ops.unseen_fast.score(logits, labels[pick], method, True).float().cpu().numpy()
            where = rows[pick.cpu().numpy()] if use_t is not None else rows
            out[k, where], correct[k, where] = scored[:, 0], scored[:, 1]
    return out, correct


@torch.inference_mode()
def _features_with(config, index, job, device, loader_kwargs, model_factory) -> np.ndarray:
    """(N, D) penultimate features (the classifier head's input) of a model."""
    device = torch.device(device)
    model = load_model(job.out_dir, index.num_classes, device=device, model_factory=model_factory)
    head = model.head if hasattr(model, "head") else model.fc
    captured = []
    hook = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].flatten(1).float()))
    dtype = amp_dtype(config.train.amp)
    out = None
    loader = _eval_loader(config, index, np.arange(len(index)), device, loader_kwargs)
    try:
        for images, _, sample_ids in loader:
            captured.clear()
            with torch.autocast(device.type, dtype=dtype, enabled=config.train.amp != "off"):
                model(images.contiguous(memory_format=torch.channels_last))
            if out is None:
                out = np.empty((len(index), captured[0].shape[1]), dtype=np.float32)
            out[sample_ids.cpu().numpy()] = captured[0].cpu().numpy()
    finally:
        hook.remove()
    return out


def _select(scores: np.ndarray, k: int, labels: np.ndarray, config: PruneConfig, exclude, stage: int) -> np.ndarray:
    """Sorted ids of the k samples to add. Ties between equal scores are
    broken by a permutation seeded by (seed, stage), not by sample id, which
    would favour the first classes of the listing (ties are common under
    forgetting, random and any saturated score)."""
    n = len(scores)
    perm = np.random.Generator(np.random.PCG64([config.seed, 3, stage])).permutation(n)
    scores_t = torch.from_numpy(np.ascontiguousarray(scores[perm], dtype=np.float32))
    exclude_p = None if exclude is None else exclude[torch.from_numpy(perm)]
    if config.selection == "ccs":
        rng = np.random.Generator(np.random.PCG64([config.seed, 4, stage]))
        candidates = np.arange(n) if exclude_p is None else np.flatnonzero(~exclude_p.numpy())
        picked = ccs_select(scores_t.numpy(), k, beta=config.baseline.ccs_beta, strata=config.baseline.ccs_strata,
                            rng=rng, candidates=candidates)
        return np.sort(perm[picked])
    if exclude_p is not None:
        scores_t = torch.where(exclude_p, torch.zeros((), dtype=scores_t.dtype), scores_t)
    total = float(scores_t.double().sum())
    if total > 0:
        scores_t = ops.normalize(scores_t)
    balanced = config.selection == "balanced"
    picked = ops.select_topk(scores_t, k, labels=torch.from_numpy(labels[perm]) if balanced else None,
                             balanced=balanced, exclude=exclude_p)
    return np.sort(perm[picked.numpy()])


def _write_outputs(run, index, config, sizes, added, fold, timings, images, wall_s) -> dict:
    from unseen_fast import __version__

    coreset = np.flatnonzero(added)
    run.save_npy("coreset.npy", coreset)
    run.save_npy("added_stage.npy", added)
    (run / "coreset.txt.tmp").write_text(
        "".join(f"{index.paths[i]} {index.labels[i]}\n" for i in coreset.tolist()), encoding="utf-8")
    (run / "coreset.txt.tmp").replace(run / "coreset.txt")
    n, batch = len(index), config.train.batch_size
    kept = np.bincount(index.labels[coreset], minlength=index.num_classes)
    summary_path = run / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    timings = {**previous.get("wall_time_s", {}), **timings}
    summary = dict(
        num_samples=n, coreset_size=len(coreset), prune_rate=config.prune_rate, stage_sizes=sizes,
        config=dataclasses.asdict(config),
        kept_per_class={c: int(kept[i]) for i, c in enumerate(index.classes)},
        total_per_class={c: int(t) for c, t in zip(index.classes, index.class_counts().tolist())},
        wall_time_s={**timings, "total_this_invocation": wall_s},
        images_processed={**previous.get("images_processed", {}), **images},
        iterations_per_epoch=_iterations(n, batch, config, fold, sizes),
        **_model_reports(run, config, fold, added, sizes),
        versions=dict(unseen_fast=__version__, torch=torch.__version__),
    )
    write_json(summary_path, summary)
    _plots(run, index, config, added)
    log.info("coreset of %d / %d samples: %s", len(coreset), n, run / "coreset.npy")
    return summary


def _model_reports(run, config, fold, added, sizes) -> dict:
    """Each scoring model's accuracy on the samples it scored (for UNSEEN:
    the samples it never saw) and the share of each fold that was kept: a
    fold kept far more or less than the others means selection followed fold
    membership, not difficulty."""
    correct = run.load_npy("correct_per_model_stage1.npy")
    seen = {"unseen": "never seen (the other folds)", "proxy": "its own training fold",
            "fitting": "all (its training data)"}[config.framework]
    if config.framework == "fitting":
        names, trained = ["fitting"], [len(fold)]
    else:
        names, trained = [f"fold{k}" for k in range(config.folds)], np.bincount(fold, minlength=config.folds)
    models = [model_report(name, size, row, seen) for name, size, row in zip(names, trained, correct)]
    for stage in range(2, config.stages + 1):
        stage_correct = run.load_npy(f"correct_stage{stage}.npy")
        if stage_correct is not None:
            models.append(model_report(f"stage{stage}", sum(sizes[:stage - 1]), stage_correct,
                                       "never seen (not yet selected)"))
    models = [report for report in models if report["scored"] > 0]  # scores without predictions: none
    share = dict(overall=float((added > 0).mean()), stage1=kept_share_per_fold(fold, added == 1, config.folds),
                 coreset=kept_share_per_fold(fold, added > 0, config.folds))
    for report in models:
        log.info("model %s (trained on %d): accuracy %.4f on the %d samples it scored, %s", report["model"],
                 report["trained_on"], report["accuracy"], report["scored"], report["scored_samples"])
    log.info("kept share per fold (overall %.4f): stage 1 %s, coreset %s", share["overall"],
             " ".join(f"{x:.3f}" for x in share["stage1"]), " ".join(f"{x:.3f}" for x in share["coreset"]))
    return dict(scoring_models=models, kept_share_per_fold=share)


def _iterations(n: int, batch: int, config: PruneConfig, fold: np.ndarray, sizes: list[int]) -> dict:
    """Optimizer steps per epoch of training, ours against the paper's accounting."""
    from unseen_fast.train import steps_per_epoch_for as steps

    if config.score == "random":
        stage1 = 0
    elif config.framework == "fitting":
        stage1 = steps(n, batch)
    else:
        stage1 = sum(steps(int((fold == k).sum()), batch) for k in range(config.folds))
    stages = sum(steps(sum(sizes[:j - 1]), batch) for j in range(2, config.stages + 1))
    final = steps(sum(sizes), batch)
    return dict(stage1=stage1, incremental_stages=stages, final_training_on_coreset=final,
                ours_total_with_final=stage1 + stages + final,
                paper_unseen=n * (2 - config.prune_rate) / batch,
                paper_incremental_extra=n * (1 - config.prune_rate - 0.1) / batch)


def _plots(run, index, config, added) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.load(run / "scores_stage1.npy")
    fig, ax = plt.subplots(figsize=(6, 4))
    kept = added > 0
    bins = np.linspace(float(np.nanmin(scores)), float(np.nanmax(scores)) + 1e-12, 60)
    ax.hist(scores[kept], bins=bins, alpha=0.6, label=f"kept ({kept.sum()})")
    ax.hist(scores[~kept], bins=bins, alpha=0.6, label=f"pruned ({(~kept).sum()})")
    ax.set_xlabel(f"stage-1 {config.score} ({config.framework})")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "score_distribution.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * index.num_classes), 4))
    kept_frac = np.bincount(index.labels[kept], minlength=index.num_classes) / np.maximum(index.class_counts(), 1)
    ax.bar(range(index.num_classes), kept_frac)
    ax.set_xticks(range(index.num_classes) if index.num_classes <= 30 else [])
    if index.num_classes <= 30:
        ax.set_xticklabels(index.classes, rotation=60, ha="right", fontsize=8)
    ax.axhline(1 - config.prune_rate, color="k", lw=0.8, ls="--")
    ax.set_ylabel("kept fraction")
    fig.tight_layout()
    fig.savefig(run / "kept_per_class.png", dpi=120)
    plt.close(fig)
