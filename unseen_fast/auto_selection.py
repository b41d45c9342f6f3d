"""``--selection auto``: choose the selection strategy of a run by validation.

Which strategy beats a random subset depends on the regime (Sorscher et al.
2022; Zheng et al. 2023): hard-first wins when the final training budget is
large next to the data kept, easy or stratified selection when data is
scarce. A run cannot know its regime in advance, so it measures: a
stratified validation split is held out (never selected), each candidate
strategy picks a coreset from the rest with the stage-1 scores, a short
proxy (the fast network) trains on each, and the candidate whose proxy does
best on the validation split is used for every stage. Random is a
candidate, so a run never commits to a strategy its own proxies rank below
random. The proxies' cost is bounded by ``auto_budget`` x the stage-1
training cost (images processed) and reported.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from unseen_fast import ops
from unseen_fast.data import ImageIndex
from unseen_fast.errors import UserError
from unseen_fast.evaluate import score_samples
from unseen_fast.parallel import TrainJob, train_many
from unseen_fast.rundir import RunDir, read_json, save_figure, write_json
from unseen_fast.selection import random_scores, select
from unseen_fast.train import load_model

log = logging.getLogger("unseen_fast.auto_selection")

# (name, strategy, parameters): at most a handful, each a different regime
CANDIDATES = (
    ("hard", "global", {}),                     # the paper: the hardest M
    ("easy", "easy", {}),                       # the easiest per class
    ("mix", "mix", dict(mix_alpha=0.5)),         # half hardest per class, half by strata
    ("ccs", "ccs", dict(ccs_beta=0.1)),          # strata after dropping the hardest 10%
    ("random", "random", {}),                   # the baseline every coreset must beat
)
VALIDATION_SHARE, VALIDATION_MAX, VALIDATION_MIN = 0.1, 10_000, 50
REPORT = "auto_selection.json"


def validation_size(n: int, coreset_size: int, excluded: int = 0) -> int:
    """min(10% of N, 10,000, half the samples neither kept nor excluded),
    refused below VALIDATION_MIN with what limits it."""
    room = (n - coreset_size - excluded) // 2
    size = min(int(round(VALIDATION_SHARE * n)), VALIDATION_MAX, room)
    if size < VALIDATION_MIN:
        limit = (f"10% of the {n} samples is {int(round(VALIDATION_SHARE * n))}" if room >= VALIDATION_MIN else
                 f"half the {n - coreset_size - excluded} samples neither kept nor excluded is {max(room, 0)}; "
                 f"raise --prune-rate")
        raise UserError(f"--selection auto needs a validation split of at least {VALIDATION_MIN} held-out samples: "
                        f"{limit}; or choose another --selection")
    return size


def validation_mask(labels: np.ndarray, coreset_size: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """(N,) bool: a stratified random validation split (validation_size)
    outside ``exclude``, so the coreset can still be chosen from the rest."""
    n = len(labels)
    size = validation_size(n, coreset_size, int(exclude.sum()))
    draw = torch.from_numpy(random_scores(seed, 1000, n))
    picked = ops.select_topk(draw, size, labels=torch.from_numpy(labels), balanced=True,  # class quotas
                             exclude=torch.from_numpy(np.asarray(exclude, dtype=bool)))
    mask = np.zeros(n, dtype=bool)
    mask[picked.numpy()] = True
    return mask


def strategy_config(config, strategy: str, params: dict):
    """``config`` (a PruneConfig) selecting with ``strategy`` and its parameters."""
    return dataclasses.replace(config, selection=strategy,
                               baseline=dataclasses.replace(config.baseline, **params))


def candidate_coreset(config, strategy: str, params: dict, scores: np.ndarray, k: int, labels: np.ndarray,
                      exclude: np.ndarray) -> np.ndarray:
    return select(scores, k, labels, strategy_config(config, strategy, params), exclude=exclude, stage=1)


def proxy_plan(stage1_images: int, k: int, candidates: int, budget: float, epochs_cap: int) -> tuple[int, int]:
    """(epochs, samples per proxy) that spend at most ``budget`` x the
    stage-1 images over all candidates: whole epochs of the candidate
    coreset when they fit, else one epoch of a fixed share of it."""
    per_candidate = int(budget * stage1_images // candidates)
    epochs = min(per_candidate // max(k, 1), epochs_cap)
    if epochs >= 1:
        return epochs, k
    return 1, per_candidate


def choose_selection(run: RunDir, config, index: ImageIndex, scores: np.ndarray, k: int, exclude: np.ndarray,
                     validation: np.ndarray, *, stage1_images: int, common: dict):
    """The candidate strategy whose proxy scores best on ``validation``;
    returns ``config`` with that selection (its report in auto_selection.json)."""
    report = read_json(run / REPORT) if (run / REPORT).exists() else None
    if report is None:
        report = _measure(run, config, index, scores, k, exclude, validation, stage1_images, common)
        write_json(run / REPORT, report)
        _plot(run, report)
    chosen = next(c for c in CANDIDATES if c[0] == report["chosen"])
    log.info("auto selection: %s (validation accuracy %s; proxies cost %.0f%% of stage-1 training)",
             chosen[0], ", ".join(f"{c['name']} {c['validation_accuracy']:.4f}" for c in report["candidates"]),
             100 * report["proxy_cost_share"])
    return strategy_config(config, chosen[1], chosen[2]), chosen[0]


def _measure(run, config, index, scores, k, exclude, validation, stage1_images, common) -> dict:
    tick = time.perf_counter()
    labels = index.labels
    epochs, samples = proxy_plan(stage1_images, k, len(CANDIDATES), config.auto_budget, config.train.epochs)
    if samples < config.train.batch_size:
        raise UserError(f"--auto-budget {config.auto_budget} gives each of the {len(CANDIDATES)} proxies {samples} "
                        f"training images, less than one batch of {config.train.batch_size}; raise it")
    rng = np.random.Generator(np.random.PCG64([config.seed, 6]))
    jobs, sizes = [], []
    for number, (name, strategy, params) in enumerate(CANDIDATES):
        ids = candidate_coreset(config, strategy, params, scores, k, labels, exclude | validation)
        sizes.append(len(ids))
        if samples < len(ids):  # the budget allows less than one epoch: a fixed share of each candidate
            ids = np.sort(rng.choice(ids, size=samples, replace=False))
        jobs.append(TrainJob(f"proxy-{name}", ids, str(run / "models" / f"proxy-{name}"),
                             seed=config.seed + 2000 + number))
    proxy_config = dataclasses.replace(config.train, arch="fastnet", epochs=epochs, record_dynamics=False,
                                       record_probabilities=False)
    log.info("auto selection: %d proxies (fastnet, %d epoch(s) on %d samples each), validation %d samples",
             len(jobs), epochs, min(samples, k), int(validation.sum()))
    train_many(jobs, proxy_config, index, **dict(common, model_factory=None))
    models = [load_model(job.out_dir, index.num_classes, device=common["device"]) for job in jobs]
    held_out = np.flatnonzero(validation)
    scored = score_samples(models, index, held_out, proxy_config, "entropy", device=common["device"],
                           loader_kwargs=common.get("loader_kwargs"))
    accuracy = np.nanmean(scored.correct, axis=1)
    candidates = [dict(name=name, selection=strategy, params=params, coreset_size=size,
                       proxy_trained_on=len(job.ids), validation_accuracy=float(acc))
                  for (name, strategy, params), size, job, acc in zip(CANDIDATES, sizes, jobs, accuracy)]
    best = int(np.argmax(accuracy))  # ties: the earlier candidate
    images = epochs * sum(len(job.ids) for job in jobs)
    return dict(chosen=CANDIDATES[best][0], candidates=candidates, validation_size=len(held_out),
                proxy_epochs=epochs, proxy_images=images, stage1_training_images=stage1_images,
                proxy_cost_share=images / max(stage1_images, 1), budget=config.auto_budget,
                seconds=time.perf_counter() - tick)


def _plot(run: RunDir, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in report["candidates"]]
    accuracy = [c["validation_accuracy"] for c in report["candidates"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = ["tab:orange" if name == report["chosen"] else "tab:blue" for name in names]
    ax.bar(names, accuracy, color=colors)
    ax.set_ylim(max(0.0, min(accuracy) - 0.05), min(1.0, max(accuracy) + 0.03))
    ax.set_ylabel(f"proxy accuracy on {report['validation_size']} held-out samples")
    ax.set_title(f"--selection auto chose {report['chosen']} "
                 f"(proxies: {100 * report['proxy_cost_share']:.0f}% of stage-1 training)")
    fig.tight_layout()
    save_figure(fig, run / "auto_selection.png")
    plt.close(fig)
