"""``--selection auto``: choose the selection strategy of a run by validation.

Which strategy beats a random subset depends on the regime (Sorscher et al.
2022; Zheng et al. 2023): hard-first wins when the final training budget is
large next to the data kept, easy or stratified selection when data is
scarce. A run cannot know its regime in advance, so it measures: a
stratified validation split is held out, each candidate strategy picks a
coreset from the rest with the stage-1 scores, a proxy
fine-tunes one stage-1 fold model on each (judged on the validation samples
that model never saw, by the mean probability it gives their true labels),
and the candidate whose proxy does best is used for every stage, provided
it beats Random by more than twice the noise of that comparison (the spread
of proxies on independent random coresets with the paired sampling noise of
the split); otherwise Random is used. The chosen strategy then selects
the coreset from every sample, the split included (the pipeline; unless
``auto_keep_split``). Proxies
start from a trained model because short proxies from scratch measure what
a model learns first (easy images) and ranked hard-first last even where
it wins (docs/RESULTS.md). The proxies' cost is bounded by ``auto_budget``
x the stage-1 training cost (images processed) and reported.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

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

# (name, strategy, parameters): at most a handful, each a different regime. Not easy-first: it lost to
# Random in every final training measured (docs/RESULTS.md), yet every proxy design tried ranked it first
# (a short training learns most from easy images), so as a candidate it could only mislead. Not ccs, for
# the same reason: its proxy led in 41 of the 54 cells measured with the fourth design and passed the
# margin in 13, whose final trainings averaged -0.39 points against Random (docs/RESULTS.md, 10k and 45k).
CANDIDATES = (
    ("hard", "global", {}),                     # the paper: the hardest M
    ("mix", "mix", dict(mix_alpha=0.5)),         # half hardest per class, half by strata
    ("random", "random", {}),                   # the baseline every coreset must beat
)
# Random is measured on this many independent random coresets (other seeds): their spread is the run's own
# proxy noise (training seed + subset + split), which a strategy must beat before it replaces Random. Three,
# not two: two replicas give the spread one degree of freedom, so they can agree by chance.
RANDOM_REPLICAS = 3
MARGIN_SD = 2.0      # a strategy is kept only when it beats Random's mean by this many sds of the difference
assert CANDIDATES[-1][0] == "random", "the proxies' bookkeeping (_measure) expects random last"
# A proxy learns from optimizer steps, not images: within its image budget it takes at least this many
# steps (smaller batches, down to PROXY_MIN_BATCH) instead of ~20 steps of the final training's batch.
PROXY_MIN_STEPS, PROXY_MIN_BATCH = 100, 32
# Where a proxy starts. "fold": from a stage-1 fold model, fine-tuned on each candidate and judged on the
# validation samples that model never saw, so candidates are compared late in training (where hard
# samples help) rather than in a model's first epoch (where easy ones do). "scratch": the fast network
# from random weights (also the fallback when no fold model exists: framework fitting or proxy).
PROXY_START = "fold"
PROXY_FOLDS = 1  # fine-tune this many fold models per candidate (the budget split among them)
PROXY_FINETUNE_LR = 1.0  # a fine-tuning proxy's peak learning rate, as a share of the training's (0.5 measured)
VALIDATION_SHARE, VALIDATION_MAX, VALIDATION_MIN = 0.1, 10_000, 50
# What the proxies are compared by: the mean probability they give the true label of the split's samples.
# Continuous, so its paired sampling noise is far below accuracy's 0/1 one, and bounded, so unlike the
# log-likelihood a few confidently wrong samples cannot dominate it (docs/RESULTS.md measured all three).
DECISION_METRIC = "label_probability"
REPORT = "auto_selection.json"
# A report measured under another rule is measured again on resume, not reused.
RULE = dict(candidates=[name for name, _, _ in CANDIDATES], random_replicas=RANDOM_REPLICAS, margin_sd=MARGIN_SD,
            metric=DECISION_METRIC)


@dataclass
class WarmStart:
    """A stage-1 fold model the proxies may start from."""

    model_dir: str          # its train() output folder
    trained_on: np.ndarray  # (N,) bool: the samples it trained on (never used to judge a proxy)
    arch: str               # its architecture (the proxies' then)


def validation_size(n: int, coreset_size: int, excluded: int = 0) -> int:
    """min(10% of N, 10,000, half the samples neither kept nor excluded),
    refused below VALIDATION_MIN with what limits it."""
    room = (n - coreset_size - excluded) // 2
    size = min(int(round(VALIDATION_SHARE * n)), VALIDATION_MAX, room)
    if size < VALIDATION_MIN:
        # the share of N first: no --prune-rate lifts it (the advice used to be "raise --prune-rate" on 25 images)
        smallest = next(m for m in itertools.count(n) if round(VALIDATION_SHARE * m) >= VALIDATION_MIN)
        limit = (f"10% of the {n} samples is {int(round(VALIDATION_SHARE * n))} (a dataset of at least "
                 f"{smallest} samples is needed)"
                 if round(VALIDATION_SHARE * n) < VALIDATION_MIN else
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
                      exclude: np.ndarray, replica: int = 0) -> np.ndarray:
    """The ``k`` ids ``strategy`` keeps; replica r > 0 draws with another
    seed (an independent random coreset)."""
    chosen = strategy_config(config, strategy, params)
    if replica:
        chosen = dataclasses.replace(chosen, seed=config.seed + 7919 * replica)
    return select(scores, k, labels, chosen, exclude=exclude, stage=1)


def proxy_plan(stage1_images: int, k: int, candidates: int, budget: float, epochs_cap: int) -> tuple[int, int]:
    """(epochs, samples per proxy) that spend at most ``budget`` x the
    stage-1 images over all candidates: whole epochs of the candidate
    coreset when they fit, else one epoch of a fixed share of it."""
    per_candidate = int(budget * stage1_images // candidates)
    epochs = min(per_candidate // max(k, 1), epochs_cap)
    if epochs >= 1:
        return epochs, k
    return 1, per_candidate


def proxy_train_config(train, epochs: int, samples: int, warm_start: WarmStart | None = None):
    """The final training's config for a proxy of ``epochs`` over
    ``samples``: the same schedule shape (warm-up share of the run, so a
    one-epoch proxy still anneals) and a batch small enough for
    PROXY_MIN_STEPS optimizer steps (learning rate scaled with it); the fast
    network from scratch, or the fold model's network fine-tuned at
    PROXY_FINETUNE_LR of the learning rate."""
    batch = min(train.batch_size, max(PROXY_MIN_BATCH, samples * epochs // PROXY_MIN_STEPS))
    warmup = epochs * min(1.0, train.warmup_epochs / train.epochs)
    share = PROXY_FINETUNE_LR if warm_start else 1.0
    return dataclasses.replace(train, arch=warm_start.arch if warm_start else "fastnet", epochs=epochs,
                               batch_size=batch, lr=share * train.lr * batch / train.batch_size,
                               warmup_epochs=warmup, record_dynamics=False, record_probabilities=False)


def decide(metric: dict[str, float], random_metric: list[float], sampling_sd: dict[str, float]) -> dict:
    """Random, unless the best strategy's proxy beats the random proxies'
    mean by MARGIN_SD sds of that difference. ``metric``: each proxy's mean
    probability of the true label on the split (DECISION_METRIC);
    ``random_metric``: the random replicas'. A proxy's noise sd combines the
    replicas' spread (training seed, subset; R - 1 degrees of freedom, so
    few replicas can agree by chance) with the split's sampling noise,
    ``sampling_sd`` per strategy: paired, as every proxy is judged on the
    same samples (sd of its per-sample differences from a random proxy /
    sqrt(2n)). The difference of one proxy and a mean of R replicas has
    sqrt(1 + 1/R) times that sd."""
    base = float(np.mean(random_metric))
    spread = float(np.std(random_metric, ddof=1)) if len(random_metric) > 1 else 0.0
    best = max((name for name in metric if name != "random"), key=lambda name: metric[name])
    noise = float(np.hypot(spread, sampling_sd[best]))
    margin = MARGIN_SD * noise * float(np.sqrt(1 + 1 / len(random_metric)))
    gain = metric[best] - base
    return dict(chosen=best if gain > margin else "random", best_strategy=best, gain_over_random=gain,
                random_value=base, noise_sd=noise, margin=margin)


def paired_sampling_sd(values: np.ndarray, strategies: int, samples: int) -> list[float]:
    """Per strategy row of ``values`` (proxies x judged samples, the random
    replicas after the strategies): the sampling sd of one proxy's mean in a
    paired comparison with a random proxy, sqrt(mean over replicas of the
    variance of the per-sample differences / 2n), n = distinct samples."""
    return [float(np.sqrt(np.mean([np.var(values[s] - replica, ddof=1) for replica in values[strategies:]])
                          / (2 * samples))) for s in range(strategies)]


def choose_selection(run: RunDir, config, index: ImageIndex, scores: np.ndarray, k: int, exclude: np.ndarray,
                     validation: np.ndarray, *, stage1_images: int, common: dict,
                     warm_starts: list[WarmStart] = ()):
    """The candidate strategy whose proxy beats Random on ``validation``
    (Random when none does beyond noise); returns ``config`` with that
    selection (its report in auto_selection.json). Proxies fine-tune the
    first PROXY_FOLDS of ``warm_starts`` when given (and PROXY_START is
    "fold"), else train the fast network from scratch."""
    starts = list(warm_starts)[:PROXY_FOLDS] if PROXY_START == "fold" else []
    start = (f"fine-tuned {starts[0].arch} x{len(starts)}" if len(starts) > 1 else
             f"fine-tuned {starts[0].arch}" if starts else "fastnet from scratch")
    report = read_json(run / REPORT) if (run / REPORT).exists() else None
    if report is not None and (report.get("proxy_start") != start or report.get("rule") != RULE):
        log.warning("auto selection: %s was written by an earlier version of the rule; measuring again", REPORT)
        report = None
        for stale in (run / "models").glob("proxy-*"):  # that rule's proxies: never resumed as this one's
            shutil.rmtree(stale)
    if report is None:
        report = _measure(run, config, index, scores, k, exclude, validation, stage1_images, common, starts)
        report.update(proxy_start=start, decision_metric=DECISION_METRIC, rule=RULE)
        write_json(run / REPORT, report)
        _plot(run, report)
    chosen = next(c for c in CANDIDATES if c[0] == report["chosen"])
    log.info("auto selection: %s (proxies' mean true-label probability %s; best strategy %s %+.4f over Random, "
             "needed %.4f; proxies cost %.0f%% of stage-1 training)", chosen[0],
             ", ".join(f"{c['name']} {c['validation_label_probability']:.4f}" for c in report["candidates"]),
             report["best_strategy"], report["gain_over_random"], report["margin"], 100 * report["proxy_cost_share"])
    return strategy_config(config, chosen[1], chosen[2]), chosen[0]


def proxy_jobs(run, config, scores, k, labels, excluded, samples: int, init_from: str | None = None,
               suffix: str = "") -> tuple[list, list]:
    """(TrainJob per proxy, candidate coreset sizes): every candidate, the
    random one RANDOM_REPLICAS times."""
    rng = np.random.Generator(np.random.PCG64([config.seed, 6]))
    plan = [(name, strategy, params, 0) for name, strategy, params in CANDIDATES if name != "random"]
    plan += [("random", "random", {}, r) for r in range(RANDOM_REPLICAS)]
    jobs, sizes = [], []
    for number, (name, strategy, params, replica) in enumerate(plan):
        ids = candidate_coreset(config, strategy, params, scores, k, labels, excluded, replica)
        sizes.append(len(ids))
        if samples < len(ids):  # the budget allows less than one epoch: a fixed share of each candidate
            ids = np.sort(rng.choice(ids, size=samples, replace=False))
        label = (name if name != "random" else f"random-{replica}") + suffix
        jobs.append(TrainJob(f"proxy-{label}", ids, str(run / "models" / f"proxy-{label}"),
                             seed=config.seed + 2000 + number, init_from=init_from))
    return jobs, sizes


def _measure(run, config, index, scores, k, exclude, validation, stage1_images, common, starts) -> dict:
    tick = time.perf_counter()
    proxies = (len(CANDIDATES) - 1 + RANDOM_REPLICAS) * max(1, len(starts))
    epochs, samples = proxy_plan(stage1_images, k, proxies, config.auto_budget, config.train.epochs)
    proxy_config = proxy_train_config(config.train, epochs, min(samples, k), starts[0] if starts else None)
    if samples < proxy_config.batch_size:
        raise UserError(f"--auto-budget {config.auto_budget} gives each of the {proxies} proxies {samples} "
                        f"training images, less than one batch of {proxy_config.batch_size}; raise it")
    factory = common["model_factory"] if starts else None  # a fine-tuned user model stays the user's
    correct, probability, jobs = [], [], []
    judged = np.zeros(len(validation), dtype=bool)  # split samples judged by some proxy (noise counts them once)
    for warm in starts or [None]:  # one set of proxies per starting model
        start_jobs, sizes = proxy_jobs(run, config, scores, k, index.labels, exclude | validation, samples,
                                       init_from=warm.model_dir if warm else None,
                                       suffix="-" + (Path(warm.model_dir).name if warm else "scratch"))
        # judged only on validation samples the starting model never trained on
        held_out = np.flatnonzero(validation & ~warm.trained_on) if warm else np.flatnonzero(validation)
        judged[held_out] = True
        log.info("auto selection: %d proxies (%s, %d epoch(s) on %d samples each, batch %d), validation %d "
                 "samples", len(start_jobs), proxy_config.arch + (" fine-tuned" if warm else ""), epochs,
                 min(samples, k), proxy_config.batch_size, len(held_out))
        train_many(start_jobs, proxy_config, index, **dict(common, model_factory=factory))
        models = [load_model(job.out_dir, index.num_classes, device=common["device"], model_factory=factory)
                  for job in start_jobs]
        judgement = score_samples(models, index, held_out, proxy_config, "entropy", device=common["device"],
                                  loader_kwargs=common.get("loader_kwargs"))
        correct.append(judgement.correct)
        probability.append(judgement.label_probability)
        jobs += start_jobs
    # (proxies per start, judgements over all starts)
    correct, probability = np.concatenate(correct, axis=1), np.concatenate(probability, axis=1).astype(np.float64)
    distinct = int(judged.sum())
    strategies = len(CANDIDATES) - 1
    names = [name for name, _, _ in CANDIDATES[:-1]]
    accuracy, metric = ([float(a) for a in np.mean(values, axis=1)] for values in (correct, probability))
    sampling = dict(zip(names, paired_sampling_sd(probability, strategies, distinct)))
    candidates = [dict(name=name, selection=strategy, params=params, coreset_size=size,
                       proxy_trained_on=len(job.ids), validation_accuracy=accuracy[number],
                       validation_label_probability=metric[number], paired_sampling_sd=sampling.get(name))
                  for number, ((name, strategy, params), size, job) in enumerate(zip(CANDIDATES, sizes, jobs))]
    # the random candidate stands for its replicas: their mean, and each one
    candidates[-1].update(validation_accuracy=float(np.mean(accuracy[strategies:])),
                          validation_label_probability=float(np.mean(metric[strategies:])),
                          replica_accuracy=accuracy[strategies:], replica_label_probability=metric[strategies:])
    images = epochs * sum(len(job.ids) for job in jobs)
    return dict(**decide(dict(zip(names, metric)), metric[strategies:], sampling), candidates=candidates,
                validation_size=distinct, proxy_starts=len(starts),
                proxy_epochs=epochs, proxy_batch_size=proxy_config.batch_size, proxy_images=images,
                stage1_training_images=stage1_images, proxy_cost_share=images / max(stage1_images, 1),
                budget=config.auto_budget, seconds=time.perf_counter() - tick)


def _plot(run: RunDir, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in report["candidates"]]
    values = [c["validation_label_probability"] for c in report["candidates"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = ["tab:orange" if name == report["chosen"] else "tab:blue" for name in names]
    ax.bar(names, values, color=colors)
    needed = report["random_value"] + report["margin"]
    ax.axhline(needed, color="tab:red", linestyle="--", linewidth=1, label="needed to replace random")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values + [needed]) + 0.03))
    ax.set_ylabel(f"mean true-label probability\non {report['validation_size']} held-out samples")
    ax.set_title(f"--selection auto chose {report['chosen']} "
                 f"(proxies: {100 * report['proxy_cost_share']:.0f}% of stage-1 training)")
    fig.tight_layout()
    save_figure(fig, run / "auto_selection.png")
    plt.close(fig)
