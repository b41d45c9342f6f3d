"""`unseen-fast experiment GRID.yaml --out EXP`: methods x prune rates x seeds.

Every cell prunes the training split with one method (through ``prune``,
stage-1 models shared between cells that only differ in prune rate or
score), trains the final model on the coreset and evaluates it on the
validation split. Cells are resumable one by one: a finished cell keeps its
``result.json`` and is skipped; an unfinished one resumes its prune run and
its training checkpoint. After every cell the table (Markdown + CSV) and the
plot are rewritten, so a long grid can be read while it runs.

EXP layout::

    grid.json, split.npz             the grid as run, the train/validation ids
    shared/                          stage-1 models and scores, decoded caches
    prune/<method>/p<rate>/seed<s>/  prune run directories
    final/<method>/p<rate>/seed<s>/<budget>/   final model + result.json
    final/full/seed<s>/epochs/       the full-data model + result.json
                                     (a cell whose final training is the same as a finished
                                     cell's, e.g. an auto cell that fell back to Random's
                                     coreset, takes that result instead of training it again:
                                     its result.json says ``reused_from``)
    results.csv, table.md, accuracy_vs_prune_rate.png
    auto_decisions.csv               every --selection auto cell's choice and candidates
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from unseen_fast.data import DataError, ImageIndex, check_backend, open_index
from unseen_fast.errors import UserError
from unseen_fast.evaluate import accuracy_report, predict_logits
from unseen_fast.models import default_image_size
from unseen_fast.parallel import TrainJob, train_many, training_device
from unseen_fast.grid import Grid, prune_config
from unseen_fast.pipeline import prune
from unseen_fast.rundir import atomic_path, make_folder, save_figure, save_npz, write_json, write_text
from unseen_fast.splits import stratified_holdout
from unseen_fast.train import TrainConfig, config_identity, load_model, steps_per_epoch_for

log = logging.getLogger("unseen_fast.experiment")
def run_experiment(grid: Grid, out, *, device="auto", nproc=None, gpus=None, progress=False) -> list[dict]:
    """Run (or resume) every cell of ``grid`` in ``out``; returns the result rows."""
    out = Path(out)
    device = training_device(device, gpus, nproc)  # "auto": the GPU when one is visible
    index = open_index(grid.data, file_list=grid.file_list)
    for train in (grid.prune_train, {**grid.prune_train, **grid.final_train}):  # refused before the folder exists
        check_backend(train.get("backend", "auto"), index)
    make_folder(out)
    train_index, val_index, val_ids = _split(grid, index, out)
    if not (out / "grid.json").exists():  # a rerun's grid is written once its cells ran: a refused one keeps the old
        write_json(out / "grid.json", dataclasses.asdict(grid))
    image_size = grid.prune_train.get("image_size") or default_image_size(index)
    shared = out / "shared"
    common = dict(device=device, nproc=nproc, gpus=gpus, progress=progress)
    finished = dict(out=out, trained=_trained_cells(out))  # what _final_cell may reuse
    for seed in grid.seeds:
        if grid.full_data:
            final = _final_config(grid, seed, image_size)
            _final_cell(out / "final" / "full" / f"seed{seed}" / "epochs", dict(method="full", prune_rate=0.0,
                        seed=seed, budget="epochs"), final, train_index, np.arange(len(train_index)), val_index,
                        val_ids, shared, prune_s=0.0, **common, **finished)
            _report(grid, out)
        for rate in grid.prune_rates:
            for method, spec in grid.methods.items():
                config = prune_config(spec, rate, seed, grid.prune_train, image_size)
                run = out / "prune" / method / f"p{rate}" / f"seed{seed}"
                tick = time.perf_counter()
                summary = prune(train_index, out=run, config=config, resume=(run / "config.json").exists(),
                                share_dir=shared, **common)
                prune_s = time.perf_counter() - tick
                coreset = np.load(run / "coreset.npy")
                for budget in grid.budgets:
                    if budget == "iterations" and grid.iterations_at is not None and \
                            not any(math.isclose(rate, r) for r in grid.iterations_at):
                        continue
                    final = _final_config(grid, seed, image_size)
                    if budget == "iterations":  # as many optimizer steps as the full-data model
                        steps = final.epochs * steps_per_epoch_for(len(train_index), final.batch_size)
                        per_epoch = steps_per_epoch_for(len(coreset), final.batch_size)
                        final = dataclasses.replace(final, epochs=-(-steps // per_epoch))
                    _final_cell(out / "final" / method / f"p{rate}" / f"seed{seed}" / budget,
                                dict(method=method, prune_rate=rate, seed=seed, budget=budget,
                                     score=config.score, framework=config.framework, stages=config.stages,
                                     selection=config.selection, coreset_size=int(summary["coreset_size"])),
                                final, train_index, coreset, val_index, val_ids, shared, prune_s=prune_s,
                                **common, **finished)
                _report(grid, out)
    write_json(out / "grid.json", dataclasses.asdict(grid))
    return _report(grid, out)


def _split(grid: Grid, index: ImageIndex, out: Path):
    """(train index, validation index, validation ids), fixed by split_seed
    and checked against the ids saved by an earlier run of this experiment."""
    if grid.val_data:
        val_index = open_index(grid.val_data)
        if val_index.classes != index.classes:
            raise DataError(f"val_data classes {val_index.classes[:5]}... differ from data's {index.classes[:5]}...")
        train_ids, val_ids = np.arange(len(index)), np.arange(len(val_index))
    else:
        train_ids, held = stratified_holdout(np.arange(len(index)), index.labels, grid.val_fraction,
                                             seed=grid.split_seed)
        val_index, val_ids = index.subset(held), np.arange(len(held))  # its own (small) decoded cache
    if grid.train_samples is not None and grid.train_samples != len(train_ids):  # smaller, stratified
        if not 0 < grid.train_samples <= len(train_ids):
            raise UserError(f"train_samples {grid.train_samples} not in [1, {len(train_ids)}]")
        _, train_ids = stratified_holdout(train_ids, index.labels, grid.train_samples / len(train_ids),
                                          seed=grid.split_seed + 1)
    path = out / "split.npz"
    if grid.val_data:
        held = val_ids
    if path.exists():
        saved = np.load(path)
        if not (np.array_equal(saved["train"], train_ids) and np.array_equal(saved["val"], held)):
            raise DataError(f"{path} holds a different train/validation split (data or split settings "
                            f"changed); use a new --out folder")
    else:
        save_npz(path, train=train_ids, val=held)
    return index.subset(train_ids), val_index, val_ids


def _final_config(grid: Grid, seed: int, image_size: int) -> TrainConfig:
    fields = {"image_size": image_size, **grid.prune_train, **grid.final_train, "seed": int(seed)}
    fields.pop("record_dynamics", None)
    fields.pop("record_probabilities", None)
    return TrainConfig(**fields)


def _final_cell(cell: Path, row: dict, config: TrainConfig, train_index, ids, val_index, val_ids, shared,
                *, prune_s, device, nproc, gpus, progress, out: Path, trained: dict) -> dict:
    """Train the final model of one cell and evaluate it (skipped when done;
    taken from ``trained``, train key -> finished cell, when that cell trained
    the same config on the same ids)."""
    result_path = cell / "result.json"
    training = dict(config=config_identity(config),
                    ids=hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest())
    key = hashlib.sha256(json.dumps(dict(row=row, **training), sort_keys=True).encode()).hexdigest()[:16]
    train_key = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]
    if result_path.exists():
        saved = json.loads(result_path.read_text())
        if saved["key"] != key:
            raise DataError(f"{cell} holds a result of a different configuration; use a new --out folder "
                            f"or delete that cell")
        return saved
    source = trained.get(train_key)
    if source is not None and (source / "result.json").exists():
        result = _reused_result(source.relative_to(out), out,
                                dict(row, key=key, train_key=train_key, prune_s=prune_s))
        cell.mkdir(parents=True, exist_ok=True)
        write_json(result_path, result)
        log.info("cell %s: the same training as %s, top1 %.4f taken from it", cell, source, result["top1"])
        return result
    log.info("cell %s: training on %d samples for %d epochs", cell, len(ids), config.epochs)
    tick = time.perf_counter()
    train_many([TrainJob("final", ids, str(cell), seed=config.seed)], config, train_index, device=device,
               nproc=nproc, gpus=gpus, loader_kwargs=dict(cache_dir=shared / "cache"), progress=progress)
    train_s = time.perf_counter() - tick
    model = load_model(cell, train_index.num_classes, device=device)
    logits = predict_logits(model, val_index, val_ids, image_size=config.image_size, device=device, amp=config.amp,
                            cache_dir=shared / "cache")
    report = accuracy_report(logits, torch.from_numpy(val_index.labels[val_ids]).to(logits.device),
                             val_index.classes)
    result = dict(row, key=key, top1=report["top1"], class_accuracy_variance=report["class_accuracy_variance"],
                  per_class=report["per_class"], train_samples=len(ids), epochs=config.epochs,
                  steps=config.epochs * steps_per_epoch_for(len(ids), config.batch_size), arch=config.arch,
                  final_train_s=train_s, prune_s=prune_s, train_key=train_key)
    write_json(result_path, result)
    trained[train_key] = cell
    log.info("cell %s: top1 %.4f", cell, result["top1"])
    return result


# what a cell's final training decides; a reused cell copies these and trains nothing
TRAINING_OUTCOME = ("top1", "class_accuracy_variance", "per_class", "train_samples", "epochs", "steps", "arch")


def _reused_result(source: Path, out: Path, row: dict) -> dict:
    """A cell's result (``row``) with the training outcome of the finished
    cell ``out / source``."""
    saved = json.loads((out / source / "result.json").read_text())
    return dict(row, **{name: saved[name] for name in TRAINING_OUTCOME}, final_train_s=0.0,
                reused_from=source.as_posix())


def _trained_cells(out: Path) -> dict:
    """train key -> cell folder of every finished final training in ``out``
    (results written before train keys existed are not reused)."""
    return {row["train_key"]: path.parent for path, row in
            ((p, json.loads(p.read_text())) for p in sorted(out.glob("final/**/result.json")))
            if "train_key" in row and "reused_from" not in row}


def load_results(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("final/**/result.json"))]


def _report(grid: Grid, out: Path) -> list[dict]:
    rows = load_results(out)
    if not rows:
        return rows
    columns = ["method", "prune_rate", "budget", "seed", "top1", "class_accuracy_variance", "train_samples",
               "epochs", "steps", "arch", "score", "framework", "stages", "selection", "prune_s", "final_train_s",
               "reused_from"]
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "table.md", results_table(grid, rows))
    _plot(grid, rows, out / "accuracy_vs_prune_rate.png")
    _auto_decisions(out)
    return rows


def _auto_decisions(out: Path) -> None:
    """auto_decisions.csv: each --selection auto cell's choice and every
    candidate proxy's figures, so a rule can be judged against the final
    trainings (results.csv) without rerunning it."""
    decisions = []
    for path in sorted(out.glob("prune/*/p*/seed*/auto_selection.json")):
        report = json.loads(path.read_text())
        seed_dir, rate_dir, method_dir = path.parent, path.parent.parent, path.parent.parent.parent
        row = dict(method=method_dir.name, prune_rate=float(rate_dir.name[1:]), seed=int(seed_dir.name[4:]),
                   chosen=report["chosen"], best_strategy=report["best_strategy"],
                   gain_over_random=report["gain_over_random"], margin=report["margin"], noise_sd=report["noise_sd"],
                   proxy_seconds=report["seconds"], proxy_cost_share=report["proxy_cost_share"])
        for candidate in report["candidates"]:
            row[f"{candidate['name']}_label_probability"] = candidate["validation_label_probability"]
            row[f"{candidate['name']}_accuracy"] = candidate["validation_accuracy"]
        row["random_replicas_label_probability"] = " ".join(
            f"{value:.5f}" for value in report["candidates"][-1]["replica_label_probability"])
        decisions.append(row)
    if not decisions:
        return
    columns = list(dict.fromkeys(key for row in decisions for key in row))
    with atomic_path(out / "auto_decisions.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(decisions)


def _cells(rows, method, rate, budget):
    return [r["top1"] for r in rows if r["method"] == method and r["budget"] == budget
            and math.isclose(r["prune_rate"], rate)]


def results_table(grid: Grid, rows: list[dict]) -> str:
    """Table 1 style: mean ± std top-1 (%) per method and prune rate, the
    difference to Random, and the full-data accuracy."""
    random_methods = [m for m, spec in grid.methods.items() if spec.get("score") == "random"]
    full = [r["top1"] for r in rows if r["method"] == "full"]
    lines = []
    for budget in grid.budgets:
        rates = [r for r in grid.prune_rates if budget == "epochs" or grid.iterations_at is None
                 or any(math.isclose(r, x) for x in grid.iterations_at)]
        lines += [f"### Final training budget: same {budget} as the full-data model", "",
                  "| method | " + " | ".join(f"{100 * r:g}% pruned" for r in rates) + " |",
                  "|---|" + "---|" * len(rates)]
        if full:
            lines.append(f"| full data ({len(full)} seeds) | " +
                         " | ".join(_mean_std(full) for _ in rates) + " |")
        for method in grid.methods:
            cells = []
            for rate in rates:
                values = _cells(rows, method, rate, budget)
                text = _mean_std(values)
                if random_methods and method not in random_methods and values:
                    base = _cells(rows, random_methods[0], rate, budget)
                    if base:
                        text += f" ({100 * (np.mean(values) - np.mean(base)):+.2f})"
                cells.append(text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Top-1 validation accuracy (%), mean ± std over seeds (n = seeds finished); in brackets the "
                 "difference to the Random row at the same prune rate and budget.")
    return "\n".join(lines) + "\n"


def _mean_std(values) -> str:
    if not values:
        return "–"
    values = 100 * np.asarray(values)
    return f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2f} (n={len(values)})"


def _plot(grid: Grid, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grid.budgets), figsize=(6 * len(grid.budgets), 4), squeeze=False)
    full = [r["top1"] for r in rows if r["method"] == "full"]
    for ax, budget in zip(axes[0], grid.budgets):
        for i, method in enumerate(grid.methods):
            points = [(rate, _cells(rows, method, rate, budget)) for rate in grid.prune_rates]
            points = [(rate, values) for rate, values in points if values]
            dodge = 0.6 * (i - (len(grid.methods) - 1) / 2)  # equal results (auto = Random) stay visible side by side
            if points:
                ax.errorbar([100 * r + dodge for r, _ in points], [100 * np.mean(v) for _, v in points],
                            yerr=[100 * np.std(v) for _, v in points], marker="o", capsize=3, label=method)
        if full:
            ax.axhline(100 * np.mean(full), color="k", ls="--", lw=0.8, label="full data")
        ax.set_xlabel("prune rate (%)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(f"final training: same {budget}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
