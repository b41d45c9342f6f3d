"""What a prune run leaves for the user: the coreset (ids and file list),
summary.json (sizes, per-class and per-fold shares, each scoring model's
accuracy, timings, the paper's cost accounting) and the plots."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from unseen_fast.constants import __version__
from unseen_fast.fold_scores import kept_share_per_fold, model_report
from unseen_fast.rundir import RunDir, read_json, reading, save_figure, write_json, write_text
from unseen_fast.train import steps_per_epoch_for
from unseen_fast.usable_images import SKIPPED_LIST

log = logging.getLogger("unseen_fast.pipeline")


class PruneResult(dict):
    """What ``prune`` returns: the content of summary.json (it is that dict)
    plus ``coreset`` (sorted sample ids), ``file_list`` (coreset.txt,
    "relative/path label" lines) and ``run_dir``; prints a short summary."""

    def __init__(self, summary: dict, *, coreset: np.ndarray, run_dir):
        super().__init__(summary)
        self.coreset = coreset
        self.run_dir = Path(run_dir)
        self.file_list = self.run_dir / "coreset.txt"

    @property
    def kept_line(self) -> str:
        """"kept M of N samples", N the samples the prune rate applied to: an
        image that could not be decoded (--skip-bad) keeps its sample id but
        is not one of them."""
        usable = self.get("usable_samples", self["num_samples"])
        left_out = self["num_samples"] - usable
        return (f"kept {self['coreset_size']:,} of {usable:,} samples"
                + (f" ({left_out:,} undecodable image(s) left out: skipped_images.txt)" if left_out else ""))

    def __repr__(self) -> str:
        return (f"PruneResult: {self.kept_line} "
                f"(prune rate {self['prune_rate']}, stages {self['stage_sizes']}, {self['config']['score']} "
                f"{self['config']['framework']}, {self['device']} {self['precision']})\n"
                f"  .coreset: {len(self.coreset):,} sample ids   .file_list: {self.file_list}\n"
                f"  .run_dir: {self.run_dir}")

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython / Jupyter would print the dict
        printer.text(repr(self))


def write_outputs(run: RunDir, index, config, sizes, added, fold, timings, images, wall_s, *, device: str,
                  usable: np.ndarray) -> dict:
    """Write the coreset files, summary.json and the plots; returns the summary."""
    coreset = np.flatnonzero(added)
    run.save_npy("coreset.npy", coreset)
    run.save_npy("added_stage.npy", added)
    listed = index.listed_labels(coreset)  # a file list's own label numbers, else class ids
    write_text(run / "coreset.txt", "".join(f"{index.paths[i]} {label}\n" for i, label in zip(coreset.tolist(), listed)))
    n, batch = len(index), config.train.batch_size
    kept = np.bincount(index.labels[coreset], minlength=index.num_classes)
    summary_path = run / "summary.json"
    previous = read_json(summary_path) if summary_path.exists() else {}
    timings = {**previous.get("wall_time_s", {}), **timings}
    summary = dict(
        num_samples=n, usable_samples=int(usable.sum()), coreset_size=len(coreset), prune_rate=config.prune_rate,
        stage_sizes=sizes,
        device=device, precision=config.train.amp,
        config=dataclasses.asdict(config),
        kept_per_class={c: int(kept[i]) for i, c in enumerate(index.classes)},
        total_per_class={c: int(t) for c, t in zip(index.classes, index.class_counts().tolist())},
        wall_time_s={**timings, "total_this_invocation": wall_s},
        images_processed={**previous.get("images_processed", {}), **images},
        iterations_per_epoch=_iterations(n, batch, config, fold, sizes),
        **_model_reports(run, config, fold, added, sizes, index.num_classes),
        **_label_issue_report(run, config),
        **({"skipped_unreadable_images": len((run / SKIPPED_LIST).read_text().splitlines())}
           if (run / SKIPPED_LIST).exists() else {}),
        **({"auto_selection": read_json(run / "auto_selection.json")} if (run / "auto_selection.json").exists()
           else {}),
        versions=dict(unseen_fast=__version__, torch=torch.__version__),
    )
    write_json(summary_path, summary)
    _plots(run, index, config, added)
    log.info("coreset of %d / %d samples: %s", len(coreset), n, run / "coreset.npy")
    return PruneResult(summary, coreset=coreset, run_dir=run.root)


# a scoring model below this many times chance accuracy is warned about
NEAR_CHANCE = 1.5


def _model_reports(run, config, fold, added, sizes, num_classes: int) -> dict:
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
        if report["accuracy"] < NEAR_CHANCE / num_classes:  # NaN (nothing scored) compares False
            log.warning("model %s is near chance (accuracy %.4f, chance %.4f): its scores are mostly noise and the "
                        "coreset close to a random one; train the models longer (--epochs) or on more data",
                        report["model"], report["accuracy"], 1 / num_classes)
    log.info("kept share per fold (overall %.4f): stage 1 %s, coreset %s", share["overall"],
             " ".join(f"{x:.3f}" for x in share["stage1"]), " ".join(f"{x:.3f}" for x in share["coreset"]))
    return dict(scoring_models=models, kept_share_per_fold=share)


def _label_issue_report(run, config) -> dict:
    flagged = run.load_npy("label_issues.npy")
    if flagged is None or not (run / "label_issues.csv").exists():
        return {}
    count = int(flagged.sum())
    log.info("label issues: %d samples whose label the models that never saw them give at most %g x its "
             "class's usual probability (%s)%s", count, config.label_issue_factor, run / "label_issues.csv",
             ", not selected" if config.drop_label_issues else "")
    return dict(label_issues=dict(found=count, share=count / len(flagged), report="label_issues.csv",
                                  dropped=config.drop_label_issues))


def _iterations(n: int, batch: int, config, fold: np.ndarray, sizes: list[int]) -> dict:
    """Optimizer steps per epoch of training, ours against the paper's accounting."""
    steps = steps_per_epoch_for
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


def _plots(run: RunDir, index, config, added) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with reading(run / "scores_stage1.npy"):
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
    save_figure(fig, run / "score_distribution.png")
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
    save_figure(fig, run / "kept_per_class.png")
    plt.close(fig)
