"""UNSEEN pruning (Algorithm 1 of the paper), resumable phase by phase.

split -> fold training -> one scoring pass -> scores made comparable ->
select M_1 -> incremental stages (train on S_{j-1}, score the rest, add the
top M_j) -> outputs. Every phase writes its result atomically into the run
folder and is skipped when found there, so a killed run resumes from the
last finished epoch of the last unfinished training.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unseen_fast.auto_selection import WarmStart, choose_selection, validation_mask, validation_size
from unseen_fast.baselines import DYNAMICS_SCORES, FEATURE_SCORES, BaselineParams
from unseen_fast.constants import FRAMEWORKS, OUTPUT_SCORES, SCORES, resolve_amp
from unseen_fast.data import ImageIndex, check_backend, open_index, prepare_cache, release_resident
from unseen_fast.errors import UserError, check_seed, plain_fields
from unseen_fast.evaluate import ScoringPass, score_samples
from unseen_fast.fold_scores import SCORE_NORMS, combine_scores
from unseen_fast.label_issues import find_label_issues, label_issues_csv
from unseen_fast.outputs import PruneResult, write_outputs
from unseen_fast.parallel import TrainJob, check_picklable, train_many, training_device
from unseen_fast.rundir import RunDir, make_folder, read_json, write_json, write_text
from unseen_fast.selection import SELECTIONS, random_scores, select, stage_sizes
from unseen_fast.splits import fold_assignment
from unseen_fast.stage1 import Stage1Store, score_stage1, scoring_mask
from unseen_fast.train import TrainConfig, check_model, concrete, config_identity, load_model
from unseen_fast.usable_images import SKIPPED_LIST, checked_before, readable_images, usable_mask

log = logging.getLogger("unseen_fast.pipeline")
PHASE_COSTS = "phase_costs.json"  # wall time and images of each finished phase, kept across invocations



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
    drop_label_issues: bool = False  # never select the samples label_issues.csv reports (unseen, output scores)
    label_issue_factor: float = 0.1  # an issue: the label's mean unseen probability <= factor x its class's mean
    auto_budget: float = 0.25        # selection auto: proxy training <= this x the stage-1 training images
    auto_keep_split: bool = False    # selection auto: keep the proxies' validation split out of the coreset too
    split: str = "random"            # fold split: random or stratified by class
    seed: int = 0                    # fold split, model seeds, data order, tie-breaking
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineParams = field(default_factory=BaselineParams)  # dynamics scores and ccs

    def __post_init__(self):  # what needs no data: a wrong value fails where the config is made
        plain_fields(self, ints=("folds", "stages"), reals=("prune_rate", "stage_size", "auto_budget",
                     "label_issue_factor"), kinds=(("train", TrainConfig), ("baseline", BaselineParams)))
        if not 0 < self.prune_rate < 1:
            raise UserError(f"prune rate must be in (0, 1), got {self.prune_rate}")
        for name, value, known in (("score", self.score, SCORES), ("framework", self.framework, FRAMEWORKS),
                                   ("selection", self.selection, SELECTIONS + ("random",)),  # auto's fallback
                                   ("score normalization", self.score_norm, SCORE_NORMS),
                                   ("split", self.split, ("random", "stratified"))):
            if value not in known:
                raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(known)}")
        if self.score in DYNAMICS_SCORES + FEATURE_SCORES and (self.framework != "fitting" or self.stages != 1):
            raise UserError(f"score {self.score!r} comes from one model trained on all samples: use framework "
                             f"'fitting' and 1 stage (got framework {self.framework!r}, {self.stages} stages)")
        if self.drop_label_issues and not finds_label_issues(self):
            raise UserError(f"--drop-label-issues needs framework 'unseen' and a score from the models' outputs "
                            f"({', '.join(OUTPUT_SCORES)}): label issues come from the K-1 models that never saw "
                            f"a sample (got framework {self.framework!r}, score {self.score!r})")
        if self.selection == "auto" and self.score == "random":
            raise UserError("--selection auto compares strategies over the scores; with --score random they "
                            "are all random")
        if not 0 < self.auto_budget <= 1:
            raise UserError(f"auto budget must be in (0, 1], got {self.auto_budget}")
        if not 0 < self.label_issue_factor <= 1:
            raise UserError(f"label issue factor must be in (0, 1], got {self.label_issue_factor}")
        self.baseline.validate(self.train.epochs if self.score in DYNAMICS_SCORES else None)
        self.seed = check_seed(self.seed)  # a NumPy integer too becomes an int (JSON)
        if self.framework != "fitting" and self.folds < 2:
            raise UserError(f"need at least 2 folds, got {self.folds}")
        if self.stages < 1:
            raise UserError(f"need at least 1 stage, got {self.stages}")
        if self.stage_size <= 0:
            raise UserError(f"stage size must be > 0, got {self.stage_size}")

    def validate(self, index: ImageIndex) -> None:
        """What depends on the data (its classes and size)."""
        n = len(index)
        _check_classes(index)
        if self.selection == "auto":  # before any training, not after stage 1
            validation_size(n, sum(stage_sizes(n, self.prune_rate, self.stages, self.stage_size, quiet=True)))
        if self.folds > n:
            raise UserError(f"{self.folds} folds for {n} samples")
        if self.split == "stratified" and self.framework != "fitting":
            smallest = int(index.class_counts().min())
            if smallest < self.folds:
                cls = index.classes[int(index.class_counts().argmin())]
                raise UserError(f"stratified split into {self.folds} folds needs >= {self.folds} samples per "
                                 f"class; class {cls!r} has {smallest}")
        stage_sizes(n, self.prune_rate, self.stages, self.stage_size, quiet=True)  # errors now, the warning once


def finds_label_issues(config: PruneConfig) -> bool:
    """Label issues need out-of-fold predictions: the unseen framework with a
    score computed from the models' outputs."""
    return config.framework == "unseen" and config.score in OUTPUT_SCORES


def _check_classes(index: ImageIndex) -> None:
    """Pruning needs at least two classes, each with a sample: one class usually
    means --data points one level too high (cifar10/ holding train/)."""
    if index.num_classes < 2:
        hint = ""
        if index.source == "file_list":  # its labels, not folders: the folder advice would mislead
            raise UserError(f"the file list gives {index.num_classes} label(s) ({', '.join(index.classes[:3])}), "
                            f"pruning needs at least 2")
        if index.root is not None and index.classes:
            hint = (f"; if the class folders are inside {index.classes[0]!r}, use "
                    f"--data {Path(index.root) / index.classes[0]}")
        raise UserError(f"{index.root or 'the dataset'} has {index.num_classes} class(es), pruning needs at least "
                        f"2{hint}")
    empty = [name for name, count in zip(index.classes, index.class_counts().tolist()) if count == 0]
    if empty:
        raise UserError(f"class(es) {', '.join(map(repr, empty[:5]))} have no samples; remove them from the class "
                        f"list or give them samples")


def prune(data, *, out, config: PruneConfig, device="auto", nproc: int | None = None, gpus: int | None = None,
          resume: bool = False, progress: bool = False, model_factory=None, share_dir=None,
          skip_bad: bool = False) -> PruneResult:
    """Run UNSEEN pruning; returns a PruneResult: the summary (also in
    ``out/summary.json``, a dict) with ``.coreset`` ids, ``.file_list`` and ``.run_dir``.

    Parameters
    ----------
    data : ImageIndex, or a path / "builtin:digits" understood by open_index
    out : path
        Run directory. An existing one is only continued with ``resume=True``
        and the same configuration and data; otherwise refused.
    config : PruneConfig
    device : "auto" (the GPU when one is visible, else the CPU; the CLI's
        default), "cpu", "cuda" or "cuda:N"; ``gpus`` / ``nproc``: as the
        CLI's --gpus / --nproc
    model_factory : callable(num_classes) -> nn.Module, optional
        The user's own model instead of ``config.train.arch`` (must be
        picklable, e.g. a module-level function, when workers are used).
    share_dir : path, optional
        Keep the stage-1 models, their scores and the decoded cache here,
        keyed by everything they depend on, so runs that differ only in
        prune rate, stages, selection or score reuse them (the fold models
        serve unseen and proxy; the full-data model fitting and every
        dynamics score). Without it they live in the run directory.
    skip_bad : bool
        Every file's header is checked before anything is written. Without
        this an unreadable file stops the run, naming it; with it such files
        are left out (listed in ``skipped_images.txt``).
    """
    start = time.perf_counter()
    device = training_device(device, gpus, nproc)  # the scoring runs there too
    index = data if isinstance(data, ImageIndex) else open_index(data)
    index.refuse_inside(out)  # before anything is written there
    train = dataclasses.replace(config.train, amp=resolve_amp(config.train.amp, str(device)))  # once, for the log
    config = dataclasses.replace(config, train=train)
    log.info("pruning %d samples on %s, precision %s", len(index), device, config.train.amp)  # the first line
    checked = checked_before(Path(out), index, skip_bad) if resume else None
    index, skipped = checked or readable_images(index, skip_bad)
    config.validate(index)
    config = dataclasses.replace(config, train=concrete(config.train, index, where := str(device)))
    check_model(config.train, index.num_classes, model_factory)  # these two: before the run folder is claimed
    check_picklable(model_factory, gpus if gpus and gpus > 1 else nproc)
    check_backend(config.train.backend, index)
    if share_dir is not None:  # inside the data (models, cache: a class) or a file: refused before --out is claimed
        index.refuse_inside(share_dir, "--share-models")
        make_folder(share_dir, "--share-models")
    run = _claim(RunDir(out), config, index, resume)
    if skipped:
        write_text(run / SKIPPED_LIST, "".join(f"{path}\t{reason}\n" for path, reason in skipped.items()))
    try:
        job = _PruneJob(run, config, index, dict(device=device, nproc=nproc, gpus=gpus, progress=progress,
                                                 model_factory=model_factory), share_dir, skip_bad)
        fold = job.split()
        added = job.select_stages(fold)
        return write_outputs(run, index, config, job.sizes, added, fold, job.timings, job.images,
                             time.perf_counter() - start, device=where, usable=job.usable)
    finally:
        run.unlock()
        release_resident()  # the device memory the shared dataset held


def _claim(run: RunDir, config: PruneConfig, index: ImageIndex, resume: bool) -> RunDir:
    """Refuse to reuse a run folder for another configuration or dataset."""
    identity = dict(dataclasses.asdict(config), train=config_identity(config.train))  # not run settings
    if config.selection != "auto":  # means nothing then: runs from before it existed resume as they were
        identity.pop("auto_keep_split")
    index.assert_listed_as_in(run.root)  # first: another dataset also changes settings derived from it (image size)
    if run.claim(identity, resume=resume, prepare=index.save, upgrade=_saved_identity_today):
        trained = (run / "models").exists() or any(run.root.glob("scores_*"))  # else a replaced image is welcome
        index.check_images(run.root, may_change=not trained)
        log.info("resuming %s", run.root)
    elif resume:  # a requeued job's first start; a mistyped --out shows here
        log.info("--resume: no run in %s yet, starting one", run.root)
    return run


def _saved_identity_today(saved: dict) -> dict:
    """A run folder's saved identity in today's terms: --selection auto runs
    from before auto_keep_split existed kept the validation split out; other
    runs do not depend on it (whether or not their folder names it)."""
    if saved.get("selection") != "auto":
        return {key: value for key, value in saved.items() if key != "auto_keep_split"}
    if "auto_keep_split" not in saved:
        return {**saved, "auto_keep_split": True}
    return saved


class _PruneJob:
    """The phases of one prune run over its run folder; each returns its
    result from the folder when an earlier invocation finished it."""

    def __init__(self, run: RunDir, config: PruneConfig, index: ImageIndex, common: dict, share_dir,
                 skip_bad: bool = False):
        self.run, self.config, self.index = run, config, index
        self.store = Stage1Store(run, config, index, share_dir)
        self.loader_kwargs = dict(cache_dir=self.store.cache_dir)
        self.common = dict(common, loader_kwargs=self.loader_kwargs)
        costs = read_json(run / PHASE_COSTS) if (run / PHASE_COSTS).exists() else {}  # of earlier invocations
        self.timings, self.images = costs.get("wall_time_s", {}), costs.get("images_processed", {})
        bad = prepare_cache(index, config.train.image_size, backend=config.train.backend, device=common["device"],
                            cache_dir=self.store.cache_dir, progress=common["progress"])
        self.usable = usable_mask(run, index, bad, skip_bad, config.score)  # (N,) False: never trained on, scored or kept
        # the prune rate applies to the usable samples, as it does when unreadable headers left the index
        self.sizes = stage_sizes(int(self.usable.sum()), config.prune_rate, config.stages, config.stage_size)

    def _cost(self, phase: str, tick: float, images: int) -> None:
        """A phase finished: its wall time (summed over the invocations that ran
        it) and images, saved at once so a run resumed after a crash reports them."""
        self.timings[f"{phase}_s"] = self.timings.get(f"{phase}_s", 0.0) + time.perf_counter() - tick
        self.images[phase] = images
        write_json(self.run / PHASE_COSTS, dict(wall_time_s=self.timings, images_processed=self.images))

    def split(self) -> np.ndarray:
        """(N,) fold of every sample."""
        fold = self.run.load_npy("folds.npy")
        if fold is None:
            fold = fold_assignment(self.index.labels, self.config.folds, self.config.split, self.config.seed)
            self.run.save_npy("folds.npy", fold)
        return fold

    def stage1(self, fold: np.ndarray) -> np.ndarray:
        """(N,) stage-1 importance: fold models (or one model for fitting),
        one scoring pass, the K-1 scores made comparable and averaged."""
        scores = self.run.load_npy("selection_scores_stage1.npy")
        if scores is not None:
            return scores
        config, run, n = self.config, self.run, len(self.index)
        scored = self.store.load_scores()
        if scored is None:
            scored = self._train_and_score_stage1(fold)
            self.store.save_scores(scored)
        else:
            log.info("stage-1 scores reused from %s", self.store.root)
            self.timings["stage1_reused_from"] = str(self.store.root)
        per_model = scored.scores
        use = scoring_mask(config, fold, len(per_model)) & self.usable
        run.save_npy("scores_per_model_stage1.npy", per_model)
        run.save_npy("correct_per_model_stage1.npy", scored.correct)
        run.save_npz("predictions_stage1.npz", dict(predicted=scored.predicted, confidence=scored.confidence,
                                                    label_probability=scored.label_probability))
        run.save_npy("score_counts_stage1.npy", use.sum(0) if config.score != "random" else np.zeros(n, np.int64))
        run.save_npy("scores_stage1.npy", combine_scores(per_model, use, "none"))  # in the score's own units
        scores = combine_scores(per_model, use, config.score_norm)
        run.save_npy("selection_scores_stage1.npy", scores)  # written last: the phase is complete
        return scores

    def select_stages(self, fold: np.ndarray) -> np.ndarray:
        """(N,) the stage in which each sample was added (0: pruned): stage-1
        scores, then each later stage's model scoring what is left."""
        config, labels, sizes = self.config, self.index.labels, self.sizes
        scores = self.stage1(fold)
        # never selected: dropped label issues and (selection auto) the validation split
        excluded = (self.label_issues(fold) & config.drop_label_issues) | ~self.usable
        selecting = config
        if config.selection == "auto":
            selecting, excluded = self.choose_selection(scores, excluded, fold)
        added = np.zeros(len(labels), dtype=np.int64)
        added[select(scores, sizes[0], labels, selecting, exclude=excluded if excluded.any() else None, stage=1)] = 1
        for stage in range(2, config.stages + 1):
            # a random selection reads no scores: no stage model to train
            scores = self.later_stage(stage, added, excluded) if selecting.selection != "random" else scores
            added[select(scores, sizes[stage - 1], labels, selecting, exclude=(added > 0) | excluded,
                         stage=stage)] = stage
        assert (added > 0).sum() == sum(sizes), ((added > 0).sum(), sizes)
        return added

    def label_issues(self, fold: np.ndarray) -> np.ndarray:
        """(N,) bool: the samples whose label the K-1 models that never saw
        them find unlikely (label_issues.csv); all False where the
        framework or score gives no such models."""
        flagged = self.run.load_npy("label_issues.npy")
        if flagged is None:
            flagged = np.zeros(len(self.index), dtype=bool)
            if finds_label_issues(self.config):
                index = self.index
                evidence = ScoringPass(scores=self.run.load_npy("scores_per_model_stage1.npy"),
                                       correct=self.run.load_npy("correct_per_model_stage1.npy"),
                                       **self.run.load_npz("predictions_stage1.npz"))
                use = scoring_mask(self.config, fold, len(evidence.scores)) & self.usable
                issues = find_label_issues(evidence, use, index.labels, index.num_classes,
                                           self.config.label_issue_factor)
                write_text(self.run / "label_issues.csv",
                           label_issues_csv(issues, index.paths, index.labels, index.classes))
                flagged = issues.mask(len(index))
            self.run.save_npy("label_issues.npy", flagged)
        if self.config.drop_label_issues:
            left, needed = int((self.usable & ~flagged).sum()), sum(self.sizes)
            if left < needed:
                raise UserError(f"dropping the {int(flagged.sum())} label issues leaves {left} samples, fewer than "
                                f"the coreset's {needed}; raise --prune-rate or run without --drop-label-issues")
        return flagged

    def choose_selection(self, scores: np.ndarray, excluded: np.ndarray, fold: np.ndarray):
        """selection auto: (the config with the strategy its proxies chose,
        the samples never selected: ``excluded``, plus the validation split
        with ``auto_keep_split``)."""
        validation = self.run.load_npy("validation.npy")
        if validation is None:
            validation = validation_mask(self.index.labels, sum(self.sizes), self.config.seed, excluded)
            self.run.save_npy("validation.npy", validation)
        jobs = self.store.jobs(fold, self.usable)
        stage1_images = self.config.train.epochs * sum(len(job.ids) for job in jobs)
        warm_starts = []  # the fold models (job k trains fold k) proxies may fine-tune: seed, seed + 1, ... mod K
        if jobs and jobs[0].name.startswith("fold"):
            order = np.roll(np.arange(len(jobs)), -(self.config.seed % len(jobs)))
            warm_starts = [WarmStart(jobs[k].out_dir, fold == k, self.store.train_config.arch) for k in order]
        selecting, _ = choose_selection(self.run, self.config, self.index, scores, sum(self.sizes), excluded,
                                        validation, stage1_images=stage1_images, common=self.common,
                                        warm_starts=warm_starts)
        if self.config.auto_keep_split:
            return selecting, excluded | validation
        # The split is needed only to judge the proxies: the chosen strategy then selects from every sample,
        # as --selection <strategy> would (kept out, the split cost hard-first its hardest picks, RESULTS.md).
        log.info("auto selection: the %d samples of the proxies' validation split may now be selected",
                 int(validation.sum()))
        return selecting, excluded

    def _train_and_score_stage1(self, fold: np.ndarray) -> ScoringPass:
        tick = time.perf_counter()
        jobs = self.store.jobs(fold, self.usable)
        if jobs:
            train_many(jobs, self.store.train_config, self.index, **self.common)
        self._cost("stage1_training", tick, self.config.train.epochs * sum(len(job.ids) for job in jobs))
        tick = time.perf_counter()
        result = score_stage1(self.config, self.index, fold, jobs, self.usable, device=self.common["device"],
                              loader_kwargs=self.loader_kwargs, model_factory=self.common["model_factory"])
        self._cost("stage1_scoring", tick, len(self.index))
        return result

    def later_stage(self, stage: int, added: np.ndarray, dropped: np.ndarray) -> np.ndarray:
        """(N,) importance of the samples not yet selected (0 for the others):
        a model trained on the coreset so far scores the rest."""
        name = f"scores_stage{stage}.npy"
        scores = self.run.load_npy(name)
        if scores is None:
            scores, correct = self._train_and_score_stage(stage, np.flatnonzero(added),
                                                          np.flatnonzero((added == 0) & ~dropped))
            self.run.save_npy(f"correct_stage{stage}.npy", correct)
            self.run.save_npy(name, scores)
        return np.nan_to_num(scores, nan=0.0)

    def _train_and_score_stage(self, stage: int, coreset: np.ndarray, rest: np.ndarray):
        config, n = self.config, len(self.index)
        scores = np.full(n, np.nan, dtype=np.float32)
        correct = np.full(n, np.nan, dtype=np.float32)
        trained = config.score != "random"
        tick = time.perf_counter()
        job = TrainJob(f"stage{stage}", coreset, str(self.run / "models" / f"stage{stage}"),
                       seed=config.seed + 1000 * stage)
        if trained:
            train_many([job], config.train, self.index, **self.common)
        self._cost(f"stage{stage}_training", tick, config.train.epochs * len(coreset) if trained else 0)
        tick = time.perf_counter()
        if trained:
            model = load_model(job.out_dir, self.index.num_classes, device=self.common["device"],
                               model_factory=self.common["model_factory"])
            scored = score_samples([model], self.index, rest, config.train, config.score,
                                   device=self.common["device"], loader_kwargs=self.loader_kwargs)
            scores[rest], correct[rest] = scored.scores[0], scored.correct[0]
        else:
            scores[rest] = random_scores(config.seed, stage, n)[rest]  # per sample id, as --selection random
        self._cost(f"stage{stage}_scoring", tick, len(rest))
        return scores, correct
