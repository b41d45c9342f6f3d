"""`unseen-fast analyze RUN [RUN ...] --out DIR`: the paper's analyses.

- score_histograms.png: stage-1 score distributions, fitting vs unseen (Figure 1a);
- seed_correlation.png: Pearson and Spearman correlation of per-sample
  stage-1 scores between runs that differ only in seed (Figure 1b);
- class_rank_shift.png: class difficulty ranks (mean score per class) under
  fitting vs unseen, same seed and score, with the shift of the hardest and
  easiest classes;
- class_variance_vs_prune_rate.png: variance of per-class validation accuracy
  against prune rate per method, from experiment results (Figure 9);
- analysis.json: every number behind the plots.

RUN is a prune run directory or an experiment directory (all its prune runs
and its results are used).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from unseen_fast.data import DataError, ImageIndex
from unseen_fast.rundir import make_folder, save_figure, write_json

# Configuration fields that do not change the stage-1 scores of a run.
NOT_STAGE1 = ("prune_rate", "stages", "stage_size", "selection", "auto_keep_split", "seed")


def collect_runs(paths) -> tuple[list[dict], list[dict]]:
    """(prune runs, experiment result rows) found under ``paths``."""
    from unseen_fast.experiment import load_results

    runs, results = [], []
    for path in map(Path, paths):
        if (path / "grid.json").exists():
            results += load_results(path)
            found = sorted(p.parent for p in path.glob("prune/**/config.json"))
        elif (path / "config.json").exists():
            found = [path]
        else:
            raise DataError(f"{path} is neither a prune run (no config.json) nor an experiment (no grid.json)")
        for run in found:
            if not (run / "scores_stage1.npy").exists():
                continue  # unfinished: nothing to analyze yet
            config = json.loads((run / "config.json").read_text())["config"]
            runs.append(dict(path=str(run), config=config, scores=np.load(run / "scores_stage1.npy"),
                             index=ImageIndex.load(run)))
    if not runs and not results:
        raise DataError(f"no finished prune runs or experiment results under {', '.join(map(str, paths))}")
    return runs, results


def analyze(paths, out) -> dict:
    created = not Path(out).exists()
    out = make_folder(out)  # first: a file in the way is named before the runs are read
    try:
        runs, results = collect_runs(paths)
    except DataError:
        if created:  # a mistyped run folder leaves no empty --out behind
            out.rmdir()
        raise
    report = dict(runs=[r["path"] for r in runs])
    distinct = _distinct_stage1(runs)
    report["score_distributions"] = _histograms(distinct, out / "score_histograms.png")
    report["seed_correlation"] = _seed_correlation(distinct, out / "seed_correlation.png")
    report["class_rank_shift"] = _class_rank_shift(distinct, out / "class_rank_shift.png")
    report["class_variance_vs_prune_rate"] = _class_variance(results, out / "class_variance_vs_prune_rate.png")
    write_json(out / "analysis.json", report)
    return report


def _stage1_key(config: dict, with_seed: bool) -> str:
    kept = {k: v for k, v in config.items() if k not in NOT_STAGE1 or (with_seed and k == "seed")}
    if not with_seed and isinstance(kept.get("train"), dict):  # prune --seed N sets the training seed too
        kept["train"] = {k: v for k, v in kept["train"].items() if k != "seed"}
    return json.dumps(kept, sort_keys=True)


def _distinct_stage1(runs: list[dict]) -> list[dict]:
    """One run per distinct stage-1 score vector (runs of a grid that differ
    only in prune rate share it)."""
    seen, distinct = set(), []
    for run in runs:
        key = _stage1_key(run["config"], with_seed=True) + run["index"].fingerprint
        if key not in seen:
            seen.add(key)
            distinct.append(run)
    return distinct


def _label(config: dict) -> str:
    return f"{config['score']} ({config['framework']})"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)
    _plt().close(fig)


def _histograms(runs: list[dict], path: Path) -> dict:
    """Score distribution per (score, framework), first seed of each."""
    groups = {}
    for run in runs:
        groups.setdefault(_label(run["config"]), run)
    stats = {}
    plt = _plt()
    scores_by_name = defaultdict(list)
    for label, run in groups.items():
        scores_by_name[run["config"]["score"]].append((label, run["scores"].astype(np.float64)))
    fig, axes = plt.subplots(1, max(1, len(scores_by_name)), figsize=(5.5 * max(1, len(scores_by_name)), 4),
                             squeeze=False)
    for ax, (score, items) in zip(axes[0], scores_by_name.items()):
        high = max(float(np.nanmax(s)) for _, s in items)
        bins = np.linspace(min(float(np.nanmin(s)) for _, s in items), high + 1e-12, 60)
        for label, scores in items:
            ax.hist(scores, bins=bins, alpha=0.55, density=True, label=label)
            q = np.nanquantile(scores, [0.1, 0.25, 0.5, 0.75, 0.9])
            stats[label] = dict(run=groups[label]["path"], mean=float(np.nanmean(scores)),
                                std=float(np.nanstd(scores)), quantiles_10_25_50_75_90=q.tolist(),
                                share_below_5pct_of_max=float(np.mean(scores < 0.05 * high)))
        ax.set_xlabel(f"stage-1 {score}")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    _save(fig, path)
    return stats


def _seed_correlation(runs: list[dict], path: Path) -> dict:
    """Pearson and Spearman between every pair of seeds of the same setting."""
    from scipy.stats import pearsonr, spearmanr

    groups = defaultdict(list)
    for run in runs:
        if run["config"]["score"] != "random":
            groups[_stage1_key(run["config"], with_seed=False) + run["index"].fingerprint].append(run)
    report, pairs_to_plot = {}, []
    for members in groups.values():
        if len(members) < 2:
            continue
        label = _label(members[0]["config"])
        pairs = []
        for a, b in combinations(members, 2):
            pairs.append(dict(seeds=[a["config"]["seed"], b["config"]["seed"]],
                              pearson=float(pearsonr(a["scores"], b["scores"])[0]),
                              spearman=float(spearmanr(a["scores"], b["scores"])[0])))
        report[label] = dict(pairs=pairs, mean_pearson=float(np.mean([p["pearson"] for p in pairs])),
                             mean_spearman=float(np.mean([p["spearman"] for p in pairs])))
        pairs_to_plot.append((label, members[0], members[1], report[label]))
    if pairs_to_plot:
        plt = _plt()
        fig, axes = plt.subplots(1, len(pairs_to_plot), figsize=(4.5 * len(pairs_to_plot), 4.2), squeeze=False)
        for ax, (label, a, b, numbers) in zip(axes[0], pairs_to_plot):
            ax.scatter(a["scores"], b["scores"], s=1, alpha=0.3)
            ax.set_title(f"{label}\nPearson {numbers['mean_pearson']:.2f}, Spearman {numbers['mean_spearman']:.2f}",
                         fontsize=9)
            ax.set_xlabel(f"seed {a['config']['seed']}")
            ax.set_ylabel(f"seed {b['config']['seed']}")
        _save(fig, path)
    return report


def class_ranks(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) difficulty rank of each class by its mean score: 1 = hardest."""
    means = np.bincount(labels, weights=scores, minlength=num_classes) / np.maximum(np.bincount(labels,
                                                                                                minlength=num_classes), 1)
    ranks = np.empty(num_classes, dtype=np.int64)
    ranks[np.argsort(-means, kind="stable")] = np.arange(1, num_classes + 1)
    return ranks


def _class_rank_shift(runs: list[dict], path: Path, extremes: int = 3) -> dict:
    """Fitting vs unseen with the same score, seed and data: class ranks."""
    by_key = {}
    for run in runs:
        c = run["config"]
        by_key[(c["score"], c["seed"], run["index"].fingerprint, c["framework"])] = run
    report, plotted = {}, None
    for (score, seed, data, framework), fitting in sorted(by_key.items(), key=lambda kv: str(kv[0])):
        unseen = by_key.get((score, seed, data, "unseen"))
        if framework != "fitting" or unseen is None or score == "random":
            continue
        index = fitting["index"]
        rank_fit = class_ranks(fitting["scores"].astype(np.float64), index.labels, index.num_classes)
        rank_uns = class_ranks(unseen["scores"].astype(np.float64), index.labels, index.num_classes)
        order = np.argsort(rank_fit)
        chosen = list(order[:extremes]) + list(order[-extremes:])
        report[f"{score} seed {seed}"] = dict(
            classes=index.classes, rank_fitting=rank_fit.tolist(), rank_unseen=rank_uns.tolist(),
            hardest_and_easiest_under_fitting={index.classes[c]: dict(fitting=int(rank_fit[c]), unseen=int(rank_uns[c]),
                                                                      shift=int(rank_uns[c] - rank_fit[c]))
                                               for c in chosen},
            mean_abs_shift=float(np.abs(rank_uns - rank_fit).mean()))
        plotted = plotted or (score, seed, index.classes, rank_fit, rank_uns)
    if plotted:
        score, seed, classes, rank_fit, rank_uns = plotted
        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes)), 4))
        x = np.arange(len(classes))
        ax.bar(x - 0.2, rank_fit, 0.4, label="fitting")
        ax.bar(x + 0.2, rank_uns, 0.4, label="unseen")
        if len(classes) <= 40:
            ax.set_xticks(x)
            ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("difficulty rank (1 = hardest)")
        ax.set_title(f"class ranks by mean {score}, seed {seed}")
        ax.legend()
        _save(fig, path)
    return report


def _class_variance(results: list[dict], path: Path) -> dict:
    """Mean (over seeds) variance of per-class accuracy per method and rate."""
    table = defaultdict(lambda: defaultdict(list))
    for row in results:
        if row["budget"] == "epochs":
            table[row["method"]][row["prune_rate"]].append(row["class_accuracy_variance"])
    report = {method: {str(rate): float(np.mean(v)) for rate, v in sorted(rates.items())}
              for method, rates in table.items()}
    if report:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4))
        full = report.pop("full", None)
        for method, rates in report.items():
            ax.plot([100 * float(r) for r in rates], list(rates.values()), marker="o", label=method)
        if full:
            ax.axhline(list(full.values())[0], color="k", ls="--", lw=0.8, label="full data")
            report["full"] = full
        ax.set_xlabel("prune rate (%)")
        ax.set_ylabel("variance of per-class accuracy")
        ax.legend(fontsize=7)
        _save(fig, path)
    return report


def format_summary(report: dict) -> str:
    lines = [f"analyzed {len(report['runs'])} prune run(s)"]
    for label, numbers in report["seed_correlation"].items():
        lines.append(f"seed-to-seed correlation of {label}: Pearson {numbers['mean_pearson']:.3f}, "
                     f"Spearman {numbers['mean_spearman']:.3f} ({len(numbers['pairs'])} pair(s))")
    if not report["seed_correlation"]:  # say why the plot is missing
        lines.append("seed-to-seed correlation: no setting was run with 2 or more seeds (none plotted)")
    for label, numbers in report["class_rank_shift"].items():
        lines.append(f"class rank shift fitting -> unseen ({label}): mean |shift| {numbers['mean_abs_shift']:.2f}")
    if not report["class_rank_shift"]:
        lines.append("class rank shift: no score was run under both fitting and unseen with one seed (none plotted)")
    for method, rates in report["class_variance_vs_prune_rate"].items():
        text = ", ".join(f"{100 * float(r):g}%: {v:.5f}" for r, v in rates.items() if not math.isnan(v))
        lines.append(f"class-accuracy variance {method}: {text}")
    return "\n".join(lines)
