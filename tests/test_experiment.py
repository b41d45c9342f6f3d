"""`unseen-fast experiment` and `unseen-fast analyze` on a tiny digits grid:
cells, budgets, table, resume cell by cell, refused changes, cross-arch,
and the analyses against direct numpy/scipy computations."""
import csv
import json
import math

import numpy as np
import pytest
import yaml
from scipy.stats import pearsonr, spearmanr

from unseen_fast.analyze import analyze, class_ranks
from unseen_fast.cli import main
from unseen_fast.data import DataError
from unseen_fast.experiment import Grid, run_experiment
from unseen_fast.train import steps_per_epoch_for

GRID = dict(data="builtin:digits", val_fraction=0.2, prune_rates=[0.5], seeds=[0, 1],
            prune_train=dict(epochs=1, batch_size=128, threads=1), final_train=dict(epochs=2),
            budgets=["epochs", "iterations"],
            methods=dict(unseen=dict(score="entropy", framework="unseen", folds=2, stages=2),
                         fitting=dict(score="entropy", framework="fitting", stages=1),
                         random=dict(score="random", stages=1)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    path = out / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    assert main(["experiment", str(path), "--out", str(out / "run"), "--quiet"]) == 0
    return out / "run", path


def test_every_cell_is_run_and_tabulated(finished):
    out, _ = finished
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 + 3 * 2 * 2  # full per seed + methods x seeds x budgets
    split = np.load(out / "split.npz")
    assert len(split["val"]) == round(0.2 * 1797) and len(np.intersect1d(split["train"], split["val"])) == 0
    n = len(split["train"])
    for row in rows:
        assert 0 <= float(row["top1"]) <= 1
        if row["method"] == "full":
            assert int(row["train_samples"]) == n
            continue
        assert int(row["train_samples"]) == int(np.floor(n * 0.5 + 1e-9))
        coreset = np.load(out / "prune" / row["method"] / "p0.5" / f"seed{row['seed']}" / "coreset.npy")
        assert len(coreset) == int(row["train_samples"])
        if row["budget"] == "iterations":  # at least the full-data model's optimizer steps, within one epoch
            full_steps = 2 * steps_per_epoch_for(n, 128)
            assert int(row["steps"]) >= full_steps
            assert int(row["steps"]) - full_steps < steps_per_epoch_for(len(coreset), 128)
    table = (out / "table.md").read_text()
    assert "same epochs" in table and "same iterations" in table
    assert table.count("| unseen |") == 2 and "(n=2)" in table
    assert (out / "accuracy_vs_prune_rate.png").stat().st_size > 1000
    # the cell seed reaches the prune run (fold split)
    assert np.load(out / "prune" / "unseen" / "p0.5" / "seed0" / "folds.npy").tolist() != \
        np.load(out / "prune" / "unseen" / "p0.5" / "seed1" / "folds.npy").tolist()


def test_table_reports_mean_std_and_difference_to_random(finished):
    out, path = finished
    grid = Grid.from_yaml(path)
    rows = [json.loads(p.read_text()) for p in out.glob("final/**/result.json")]
    fitting = [100 * r["top1"] for r in rows if r["method"] == "fitting" and r["budget"] == "epochs"]
    random = [100 * r["top1"] for r in rows if r["method"] == "random" and r["budget"] == "epochs"]
    line = [l for l in (out / "table.md").read_text().splitlines() if l.startswith("| fitting |")][0]
    expected = f"{np.mean(fitting):.2f} ± {np.std(fitting, ddof=1):.2f} (n=2) " \
               f"({np.mean(fitting) - np.mean(random):+.2f})"
    assert expected in line
    assert grid.methods["random"]["score"] == "random"


def test_resume_runs_only_the_missing_cells(finished, tmp_path):
    out, path = finished
    cell = out / "final" / "fitting" / "p0.5" / "seed1" / "epochs"
    before = json.loads((cell / "result.json").read_text())
    others = {p: p.stat().st_mtime_ns for p in out.glob("final/**/result.json") if p.parent != cell}
    (cell / "result.json").unlink()  # as if killed during this cell's final training
    (cell / "checkpoint.pt").unlink()
    rows = run_experiment(Grid.from_yaml(path), out)
    after = json.loads((cell / "result.json").read_text())
    assert after["top1"] == before["top1"]  # same seed, same threads: the same model
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())  # nothing else was redone
    assert len(rows) == 14


def test_changed_configuration_is_refused(finished, tmp_path):
    out, _ = finished
    changed = dict(GRID, final_train=dict(epochs=3))
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    grid_before = (out / "grid.json").read_bytes()
    with pytest.raises(DataError, match="holds a result of a different configuration"):
        run_experiment(Grid.from_yaml(path), out)
    assert (out / "grid.json").read_bytes() == grid_before  # it said epochs 3 for results of 2 (a trial finding)
    changed = dict(GRID, val_fraction=0.3)
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(DataError, match="different train/validation split"):
        run_experiment(Grid.from_yaml(path), out)
    assert (out / "grid.json").read_bytes() == grid_before  # a refused rerun leaves the grid that was run


@pytest.mark.parametrize("change, message", [
    (dict(unknown_key=1), "unknown grid key"),
    (dict(prune_rates=[1.2]), "prune rate 1.2 is not in"),
    (dict(budgets=["hours"]), "budgets must be"),
    (dict(methods=dict(m=dict(score="entropy", lr=0.1))), "unknown option"),
    (dict(final_train=dict(amp="fp8")), "final_train: amp must be"),
    (dict(methods=dict(m=dict(score="entropy", prune_train=dict(arch="resnet18", width=2)))),
     "method 'm': TrainConfig.__init__() got an unexpected keyword argument 'width'"),
    (dict(methods=dict(m=dict(score="entropy", prune_train=dict(epochs=0)))), "method 'm': need epochs >= 1"),
    (dict(methods=dict(m=dict(score="gradnorm"))), "method 'm': unknown score 'gradnorm'"),
    (dict(methods=dict(m=dict(score="aum", baseline=dict(ccs_beta=2)))), "method 'm': score 'aum' comes from one"),
    (dict(prune_rates=["abc"]), "prune rate 'abc' is not in (0, 1)"),
    (dict(prune_rates=[]), "prune_rates and seeds need at least one value each"),
    (dict(seeds=[]), "prune_rates and seeds need at least one value each"),
    (dict(seeds=["x"]), "each of seeds and split_seed must be a whole number from 0 to 2147483647, got 'x'"),
    (dict(seeds=[-1]), "each of seeds and split_seed must be a whole number from 0 to 2147483647, got -1"),
    (dict(split_seed=-3), "each of seeds and split_seed must be a whole number from 0 to 2147483647, got -3"),
    (dict(prune_rates=[0.5, 0.5]), "prune_rates lists a value twice"),
    (dict(full_data="maybe"), "full_data must be true or false, got 'maybe'"),
])
def test_bad_grids(tmp_path, change, message, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(dict(GRID, **change)))
    assert main(["experiment", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_a_backend_the_data_cannot_use_is_refused_before_the_folder_exists(tmp_path, capsys):
    """--backend dali on PNGs (or without DALI) stopped the first prune cell,
    after the experiment folder was made; final_train's backend counts too."""
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "data" / name / f"{i}.png")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(dict(GRID, data=str(tmp_path / "data"), final_train=dict(backend="dali"))))
    assert main(["experiment", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "backend 'dali'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cross_architecture_final_models(tmp_path):
    grid = Grid(**dict(GRID, seeds=[0], budgets=["epochs"], full_data=False,
                       methods=dict(fitting=GRID["methods"]["fitting"]),
                       final_train=dict(arch="resnet18", epochs=1)))
    [row] = run_experiment(grid, tmp_path / "out")
    assert row["arch"] == "resnet18"
    prune_config = json.loads((tmp_path / "out" / "prune" / "fitting" / "p0.5" / "seed0" /
                               "config.json").read_text())["config"]
    assert prune_config["train"]["arch"] == "fastnet"


def test_auto_cells_decisions_are_tabulated(tmp_path, finished):
    grid = Grid(**dict(GRID, seeds=[0, 1], budgets=["epochs"], full_data=False,
                       methods=dict(auto=dict(score="entropy", stages=1, selection="auto"),
                                    random=GRID["methods"]["random"])))
    run_experiment(grid, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "auto_decisions.csv")))
    assert [(row["method"], float(row["prune_rate"]), int(row["seed"])) for row in rows] == [("auto", 0.5, 0),
                                                                                              ("auto", 0.5, 1)]
    for row in rows:
        report = json.loads((tmp_path / "out" / "prune" / "auto" / "p0.5" / f"seed{row['seed']}" /
                             "auto_selection.json").read_text())
        assert row["chosen"] == report["chosen"] and float(row["margin"]) == pytest.approx(report["margin"])
        for candidate in report["candidates"]:
            assert float(row[f"{candidate['name']}_label_probability"]) == pytest.approx(
                candidate["validation_label_probability"])
        replicas = [float(value) for value in row["random_replicas_label_probability"].split()]
        assert replicas == pytest.approx(report["candidates"][-1]["replica_label_probability"], abs=1e-5)
        # a fallback to Random keeps Random's coreset: the Random cell (run after auto) is not trained again
        result = json.loads((tmp_path / "out" / "final" / "random" / "p0.5" / f"seed{row['seed']}" / "epochs" /
                             "result.json").read_text())
        assert (result.get("reused_from") == f"final/auto/p0.5/seed{row['seed']}/epochs") == \
            (row["chosen"] == "random")
    assert not (finished[0] / "auto_decisions.csv").exists()  # a grid without auto cells writes none


def test_a_final_training_already_done_is_reused(tmp_path, monkeypatch):
    # two methods with the same coreset and final config: the second takes the first's result, trains nothing
    grid = Grid(**dict(GRID, seeds=[0], budgets=["epochs"], full_data=False,
                       methods=dict(random=GRID["methods"]["random"], again=GRID["methods"]["random"],
                                    fitting=GRID["methods"]["fitting"])))
    import unseen_fast.experiment as experiment

    trainings = []
    real = experiment.train_many
    monkeypatch.setattr(experiment, "train_many", lambda jobs, *a, **k: trainings.append(jobs[0].out_dir) or
                        real(jobs, *a, **k))
    rows = {row["method"]: row for row in run_experiment(grid, tmp_path / "out")}
    assert len(trainings) == 2  # random and fitting; `again` reused random's
    assert rows["again"]["reused_from"] == "final/random/p0.5/seed0/epochs" and rows["again"]["final_train_s"] == 0
    assert "reused_from" not in rows["random"] and "reused_from" not in rows["fitting"]
    for name in experiment.TRAINING_OUTCOME:
        assert rows["again"][name] == rows["random"][name]
    assert rows["again"]["key"] != rows["random"]["key"] and rows["again"]["method"] == "again"
    csv_rows = {row["method"]: row for row in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert csv_rows["again"]["reused_from"] == "final/random/p0.5/seed0/epochs"
    # a later run (resume) finds the finished trainings on disk: nothing is trained again
    (tmp_path / "out" / "final" / "again" / "p0.5" / "seed0" / "epochs" / "result.json").unlink()
    trainings.clear()
    run_experiment(grid, tmp_path / "out")
    assert trainings == [] and json.loads((tmp_path / "out" / "final" / "again" / "p0.5" / "seed0" / "epochs" /
                                           "result.json").read_text())["reused_from"].startswith("final/random")


def test_a_method_can_prune_with_another_architecture(tmp_path):
    # the same final model, pruning models of two architectures: one grid
    grid = Grid(**dict(GRID, seeds=[0], budgets=["epochs"], full_data=False,
                       methods=dict(fast=dict(score="entropy", stages=1),
                                    resnet=dict(score="entropy", stages=1, prune_train=dict(arch="resnet18")))))
    rows = run_experiment(grid, tmp_path / "out")
    assert {row["arch"] for row in rows} == {"fastnet"}  # the final models
    for method, arch in (("fast", "fastnet"), ("resnet", "resnet18")):
        config = json.loads((tmp_path / "out" / "prune" / method / "p0.5" / "seed0" / "config.json").read_text())
        assert config["config"]["train"]["arch"] == arch
        assert config["config"]["train"]["batch_size"] == 128  # the grid's prune_train, overridden field by field


def test_analyze_an_experiment(finished, tmp_path, capsys):
    out, _ = finished
    assert main(["analyze", str(out), "--out", str(tmp_path / "an")]) == 0
    report = json.loads((tmp_path / "an" / "analysis.json").read_text())
    for name in ("score_histograms", "seed_correlation", "class_rank_shift", "class_variance_vs_prune_rate"):
        assert (tmp_path / "an" / f"{name}.png").stat().st_size > 1000
    runs = {}
    for framework in ("unseen", "fitting"):
        a, b = (np.load(out / "prune" / framework / "p0.5" / f"seed{s}" / "scores_stage1.npy") for s in (0, 1))
        got = report["seed_correlation"][f"entropy ({framework})"]
        assert math.isclose(got["mean_pearson"], pearsonr(a, b)[0], rel_tol=1e-9)
        assert math.isclose(got["mean_spearman"], spearmanr(a, b)[0], rel_tol=1e-9)
        runs[framework] = a
    assert "random (unseen)" not in report["seed_correlation"]  # random scores are not a ranking
    shift = report["class_rank_shift"]["entropy seed 0"]
    labels = np.load(out / "split.npz")["train"]
    from unseen_fast.data import ImageIndex

    index = ImageIndex.load(out / "prune" / "unseen" / "p0.5" / "seed0")
    assert shift["rank_unseen"] == class_ranks(runs["unseen"].astype(np.float64), index.labels, 10).tolist()
    assert len(shift["hardest_and_easiest_under_fitting"]) == 6 and len(labels) == len(index)
    variance = report["class_variance_vs_prune_rate"]
    assert set(variance) == {"unseen", "fitting", "random", "full"}
    assert "seed-to-seed correlation of entropy (unseen)" in capsys.readouterr().out


def test_analyze_pairs_plain_prune_runs_that_differ_in_seed(tmp_path):
    """prune --seed N also sets the training seed, which kept two CLI runs in
    different settings: no seed correlation was ever found among them."""
    argv = ["prune", "--data", "builtin:digits", "--prune-rate", "0.5", "--epochs", "1", "--folds", "2",
            "--stages", "1", "--quiet"]
    for seed in (0, 1):
        assert main(argv + ["--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    assert main(["analyze", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "an")]) == 0
    report = json.loads((tmp_path / "an" / "analysis.json").read_text())
    a, b = (np.load(tmp_path / f"s{seed}" / "scores_stage1.npy") for seed in (0, 1))
    got = report["seed_correlation"]["entropy (unseen)"]
    assert [sorted(pair["seeds"]) for pair in got["pairs"]] == [[0, 1]]
    assert math.isclose(got["mean_pearson"], pearsonr(a, b)[0], rel_tol=1e-9)


def test_class_ranks_and_analyze_errors(tmp_path):
    scores = np.array([0.1, 0.2, 5.0, 4.0, 1.0, 1.2])
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert class_ranks(scores, labels, 3).tolist() == [3, 1, 2]
    with pytest.raises(DataError, match="neither a prune run"):
        analyze([tmp_path], tmp_path / "an")
    assert not (tmp_path / "an").exists()  # it was made, empty (a trial finding)
    from unseen_fast.analyze import format_summary

    # one seed, one framework: the summary says why two plots are missing instead of staying silent
    text = format_summary(dict(runs=["r"], seed_correlation={}, class_rank_shift={}, class_variance_vs_prune_rate={}))
    assert "no setting was run with 2 or more seeds (none plotted)" in text
    assert "no score was run under both fitting and unseen with one seed (none plotted)" in text
