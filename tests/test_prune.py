"""unseen-fast prune end to end on CPU: sizes, bookkeeping, frameworks,
resume after interruptions, refused reuse, bad arguments."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from unseen_fast.cli import main
from unseen_fast.data import DataError, ImageIndex
from unseen_fast.errors import UserError
from unseen_fast.pipeline import PruneConfig, prune
from unseen_fast.selection import stage_sizes
from unseen_fast.splits import fold_assignment
from unseen_fast.train import TrainConfig

FAST = dict(epochs=2, batch_size=128, image_size=8, threads=1)


def config(**kw):
    train = TrainConfig(**(FAST | kw.pop("train", {})))
    return PruneConfig(**({"prune_rate": 0.3, "train": train} | kw))


@pytest.fixture(scope="module")
def digits():
    return ImageIndex.digits()


def check_invariants(run, index, cfg, summary):
    n = len(index)
    coreset = np.load(run / "coreset.npy")
    sizes = stage_sizes(n, cfg.prune_rate, cfg.stages, cfg.stage_size)
    assert len(coreset) == int(np.floor(n * (1 - cfg.prune_rate))) == sum(sizes) == summary["coreset_size"]
    assert np.array_equal(coreset, np.unique(coreset))  # sorted, no duplicates
    added = np.load(run / "added_stage.npy")
    assert [int((added == j).sum()) for j in range(1, cfg.stages + 1)] == sizes
    lines = (run / "coreset.txt").read_text().splitlines()
    assert lines == [f"{index.paths[i]} {index.labels[i]}" for i in coreset]
    assert sum(summary["kept_per_class"].values()) == len(coreset)
    for stage in range(2, cfg.stages + 1):  # stage j scored exactly the samples not yet selected
        scores = np.load(run / f"scores_stage{stage}.npy")
        assert np.array_equal(np.isfinite(scores), (added == 0) | (added >= stage))
        assert np.isnan(scores[(added > 0) & (added < stage)]).all()
    assert (run / "score_distribution.png").stat().st_size > 1000 and (run / "kept_per_class.png").exists()
    return coreset


@pytest.mark.parametrize("framework, expected_count", [("unseen", 3), ("fitting", 1), ("proxy", 1)])
@pytest.mark.parametrize("selection", ["global", "balanced"])
def test_frameworks_and_selections(digits, tmp_path, framework, expected_count, selection):
    cfg = config(framework=framework, selection=selection)
    summary = prune(digits, out=tmp_path / "run", config=cfg)
    check_invariants(tmp_path / "run", digits, cfg, summary)
    counts = np.load(tmp_path / "run" / "score_counts_stage1.npy")
    assert (counts == expected_count).all()  # unseen: K-1 = 3 models per sample
    if selection == "balanced":
        kept = np.array(list(summary["kept_per_class"].values()))
        total = np.array(list(summary["total_per_class"].values()))
        stage1 = np.bincount(digits.labels[np.load(tmp_path / "run" / "added_stage.npy") == 1], minlength=10)
        assert np.abs(stage1 - total * summary["stage_sizes"][0] / len(digits)).max() <= 1
        assert kept.sum() == summary["coreset_size"]


def test_unseen_scores_come_from_models_that_never_saw_the_sample(digits, tmp_path):
    cfg = config(stages=1)
    prune(digits, out=tmp_path / "run", config=cfg)
    run = tmp_path / "run"
    fold = np.load(run / "folds.npy")
    from unseen_fast.evaluate import score_samples
    from unseen_fast.train import load_model
    from unseen_fast.parallel import TrainJob

    jobs = [TrainJob(f"fold{k}", np.flatnonzero(fold == k), str(run / "models" / f"fold{k}")) for k in range(4)]
    models = [load_model(job.out_dir, 10) for job in jobs]
    per_model = score_samples(models, digits, np.arange(len(digits)), cfg.train, cfg.score,
                              loader_kwargs=dict(cache_dir=run / "cache")).scores
    expected = np.array([per_model[np.arange(4) != fold[i], i].mean() for i in range(len(digits))], dtype=np.float32)
    assert np.allclose(np.load(run / "scores_stage1.npy"), expected, rtol=1e-6)
    for k in range(4):  # and fold model k trained only on fold k
        state = torch.load(run / "models" / f"fold{k}" / "checkpoint.pt", weights_only=False)
        assert state["epochs_done"] == FAST["epochs"]


def test_cifar_subset_end_to_end(tmp_path, small_folder):
    index = ImageIndex.from_folder(small_folder)
    cfg = config(prune_rate=0.5, folds=2, stage_size=10, split="stratified", selection="balanced",
                 train=dict(image_size=32, batch_size=32))
    summary = prune(index, out=tmp_path / "run", config=cfg)
    check_invariants(tmp_path / "run", index, cfg, summary)
    assert summary["stage_sizes"] == [55, 10]


def test_package_level_api_stays_callable(tmp_path):
    """unseen_fast.prune is the function, before and after the pipeline module
    is imported and called (a submodule of that name used to replace it)."""
    import unseen_fast
    from unseen_fast import ImageIndex as PackageIndex, PruneConfig as PackageConfig, TrainConfig as PackageTrain

    assert (PackageIndex, PackageConfig, PackageTrain) == (ImageIndex, PruneConfig, TrainConfig)
    cfg = PackageConfig(prune_rate=0.5, score="random", train=PackageTrain(**FAST))
    first = unseen_fast.prune("builtin:digits", out=tmp_path / "a", config=cfg)
    second = unseen_fast.prune(PackageIndex.digits(), out=tmp_path / "b", config=cfg)
    assert first["coreset_size"] == second["coreset_size"] == len(ImageIndex.digits()) // 2
    assert callable(unseen_fast.prune)
    with pytest.raises(AttributeError, match="no attribute 'Prune'"):
        unseen_fast.Prune


def test_random_score_needs_no_training(digits, tmp_path):
    summary = prune(digits, out=tmp_path / "run", config=config(score="random"))
    assert not (tmp_path / "run" / "models").exists() or not any((tmp_path / "run" / "models").iterdir())
    assert summary["coreset_size"] == 1257


def test_selection_random_draws_what_score_random_draws(digits, tmp_path):
    """The two ways to ask for a random subset keep the same samples for a
    seed at every stage, so --selection auto falling back to Random returns
    the Random baseline's coreset."""
    coresets = {}
    for seed in (0, 3):
        for name, kw in (("score", dict(score="random")), ("selection", dict(selection="random"))):
            run = tmp_path / f"{name}-{seed}"
            prune(digits, out=run, config=config(seed=seed, **kw))  # two stages
            coresets[name, seed] = np.load(run / "added_stage.npy")
        assert np.array_equal(coresets["score", seed], coresets["selection", seed])
        assert set(np.unique(coresets["score", seed])) == {0, 1, 2}
    assert not np.array_equal(coresets["score", 0], coresets["score", 3])


def test_resume_after_interruptions_gives_the_same_coreset(digits, tmp_path, monkeypatch):
    cfg = config(stages=3, stage_size=0.05)
    prune(digits, out=tmp_path / "straight", config=cfg)
    expected = np.load(tmp_path / "straight" / "coreset.npy")

    from unseen_fast import train as train_module

    real_save = train_module._save_checkpoint
    calls = {"n": 0}

    def crash_every_third_checkpoint(*args):
        real_save(*args)
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(train_module, "_save_checkpoint", crash_every_third_checkpoint)
    interruptions = 0
    while True:
        try:
            prune(digits, out=tmp_path / "resumed", config=cfg, resume=True)
            break
        except KeyboardInterrupt:
            interruptions += 1
    assert interruptions >= 3  # in fold training, between phases and in the stage trainings
    assert np.array_equal(np.load(tmp_path / "resumed" / "coreset.npy"), expected)
    straight, resumed = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("straight", "resumed"))
    # every phase reported, also those finished by an earlier invocation than the one that wrote summary.json
    assert resumed["images_processed"] == straight["images_processed"]
    assert set(resumed["wall_time_s"]) == set(straight["wall_time_s"])


def test_sigkill_then_resume(digits, tmp_path):
    """A real SIGKILL in the middle of fold training, then --resume."""
    out = tmp_path / "run"
    args = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "3", "--out", str(out),
            "--quiet", "--seed", "3"]
    code = ("import os, signal, sys\n"
            "from unseen_fast import train as t\n"
            "real = t._save_checkpoint\n"
            "def save(*a):\n"
            "    real(*a)\n"
            "    if a[-1] == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
            "t._save_checkpoint = save\n"
            "from unseen_fast.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert killed.returncode == -9
    # Resume and the reference run in fresh processes too: CPU results are
    # bitwise only at equal thread counts, and other tests set this process's.
    cli = [sys.executable, "-m", "unseen_fast.cli"]
    assert subprocess.run(cli + args + ["--resume"], capture_output=True).returncode == 0
    straight = args[:-5] + ["--out", str(tmp_path / "straight"), "--quiet", "--seed", "3"]
    assert subprocess.run(cli + straight, capture_output=True).returncode == 0
    assert np.array_equal(np.load(out / "coreset.npy"), np.load(tmp_path / "straight" / "coreset.npy"))


def test_changed_config_or_data_is_refused(digits, tmp_path):
    prune(digits, out=tmp_path / "run", config=config(stages=1))
    before = (tmp_path / "run" / "coreset.npy").read_bytes()
    with pytest.raises(UserError, match=r"different configuration \(prune_rate: saved 0.3, now 0.5\)"):
        prune(digits, out=tmp_path / "run", config=config(stages=1, prune_rate=0.5), resume=True)
    with pytest.raises(UserError, match="pass --resume"):
        prune(digits, out=tmp_path / "run", config=config(stages=1))
    other = ImageIndex(root=None, paths=digits.paths[:-1], labels=digits.labels[:-1], classes=digits.classes,
                       source="digits", images=digits.images[:-1])
    with pytest.raises(DataError, match="the dataset changed"):
        prune(other, out=tmp_path / "run", config=config(stages=1), resume=True)
    assert (tmp_path / "run" / "coreset.npy").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no unseen-fast run"):
        prune(digits, out=tmp_path / "other", config=config(stages=1))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text('{"lr": 0.1}')
    with pytest.raises(UserError, match="config.json was not written by unseen-fast"):
        prune(digits, out=tmp_path / "foreign", config=config(stages=1), resume=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        prune(digits, out=tmp_path / "afile", config=config(stages=1))


def test_a_folder_from_before_auto_keep_split_resumes_as_it_ran(digits, tmp_path):
    """A folder written before the option existed has no auto_keep_split:
    a global run resumes whatever the option says; an auto run kept its
    split out, so it resumes with --auto-keep-split and is refused (naming
    the option) without it."""
    import dataclasses
    import json
    import shutil

    from unseen_fast.pipeline import _claim
    from unseen_fast.rundir import RunDir

    def old_folder(name, cfg):
        claimed = _claim(RunDir(tmp_path / name), cfg, digits, resume=False)
        claimed.unlock()
        saved = json.loads((tmp_path / name / "config.json").read_text())
        saved["config"].pop("auto_keep_split", None)  # as an earlier version wrote it
        (tmp_path / name / "config.json").write_text(json.dumps(saved))

    old_folder("global", config(stages=1))
    named = json.loads((tmp_path / "global" / "config.json").read_text())
    named["config"]["auto_keep_split"] = False  # as a folder that names it for a global run
    shutil.copytree(tmp_path / "global", tmp_path / "named")
    (tmp_path / "named" / "config.json").write_text(json.dumps(named))
    _claim(RunDir(tmp_path / "named"), config(stages=1), digits, resume=True).unlock()
    for keep in (False, True):
        _claim(RunDir(tmp_path / "global"), dataclasses.replace(config(stages=1), auto_keep_split=keep), digits,
               resume=True).unlock()
    auto = config(stages=1, selection="auto")
    old_folder("auto", dataclasses.replace(auto, auto_keep_split=True))
    _claim(RunDir(tmp_path / "auto"), dataclasses.replace(auto, auto_keep_split=True), digits, resume=True).unlock()
    with pytest.raises(UserError, match=r"auto_keep_split: saved True, now False"):
        _claim(RunDir(tmp_path / "auto"), auto, digits, resume=True)


def test_a_run_folder_in_use_is_refused(digits, tmp_path):
    """A second process resuming the same folder stops at once instead of
    racing the first one (the lock is an flock, freed when a process dies)."""
    from unseen_fast.rundir import RunDir

    cfg = config(stages=1)
    prune(digits, out=tmp_path / "run", config=cfg)
    holder = RunDir(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(UserError, match="in use by another unseen-fast process"):
            prune(digits, out=tmp_path / "run", config=cfg, resume=True)
    finally:
        holder.unlock()
    assert prune(digits, out=tmp_path / "run", config=cfg, resume=True)["coreset_size"] == 1257


@pytest.mark.parametrize("kw, message", [
    (dict(prune_rate=1.0), r"prune rate must be in \(0, 1\), got 1.0"),
    (dict(prune_rate=0.0), r"prune rate must be in \(0, 1\), got 0.0"),
    (dict(folds=1), "need at least 2 folds, got 1"),
    (dict(folds=200, split="stratified"), "stratified split into 200 folds needs >= 200 samples per class; class '8' has 174"),
    (dict(stages=2000, stage_size=1, prune_rate=0.5), "2000 stages cannot split a coreset of 898 samples"),
    (dict(score="gradnorm"), "unknown score 'gradnorm'"),
    (dict(stage_size=0.0001), "less than one sample"),
])
def test_bad_arguments(digits, tmp_path, kw, message):
    """A value wrong in itself fails where the config is made; one wrong for
    this data fails in prune, before the run folder is written."""
    with pytest.raises(UserError, match=message):
        prune(digits, out=tmp_path / "run", config=config(**kw))
    assert not (tmp_path / "run").exists()


def test_cli_prune_and_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["prune", "--data", "builtin:digits", "--prune-rate", "0.5", "--epochs", "1", "--folds", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert "kept 898 of 1,797 samples (prune rate 0.5" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["folds"] == 2 and summary["iterations_per_epoch"]["stage1"] == 6  # 2 x (898 // 256)
    assert main(["prune", "--data", "builtin:digits", "--prune-rate", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "prune rate must be in (0, 1), got 1.5" in capsys.readouterr().err


def test_stage_sizes():
    assert stage_sizes(1797, 0.3, 2, 0.1) == [1078, 179]
    assert stage_sizes(1000, 0.5, 3, 50) == [400, 50, 50]
    assert stage_sizes(1000, 0.5, 1, 0.1) == [500]
    assert stage_sizes(1797, 0.3, 3, 0.5) == [419, 419, 419]  # no room for stage 1: split evenly


def test_fold_assignment():
    labels = np.repeat(np.arange(3), [10, 7, 5])
    for split in ("random", "stratified"):
        fold = fold_assignment(labels, 4, split, seed=1)
        assert np.bincount(fold).max() - np.bincount(fold).min() <= 1
        assert np.array_equal(fold, fold_assignment(labels, 4, split, seed=1))
    strat = fold_assignment(labels, 4, "stratified", seed=1)
    for cls in range(3):
        counts = np.bincount(strat[labels == cls], minlength=4)
        assert counts.max() - counts.min() <= 1


def assert_folds_fair(summary, folds: int, chance: float, min_accuracy: float):
    """Every fold model predicts the samples it never saw far above chance, and
    selection keeps each fold's share within sampling noise (3 binomial
    standard deviations) of the overall share: it follows difficulty, not
    fold membership."""
    fold_models = [m for m in summary["scoring_models"] if m["model"].startswith("fold")]
    assert [m["model"] for m in fold_models] == [f"fold{k}" for k in range(folds)]
    n = summary["num_samples"]
    for m in fold_models:
        assert m["scored_samples"].startswith("never seen") and m["scored"] == n - m["trained_on"]
        assert m["accuracy"] > max(min_accuracy, 2 * chance), fold_models
    sizes = [m["trained_on"] for m in fold_models]
    shares = summary["kept_share_per_fold"]
    for key, overall in (("stage1", summary["stage_sizes"][0] / n), ("coreset", summary["coreset_size"] / n)):
        for share, size in zip(shares[key], sizes):
            assert abs(share - overall) <= 3 * np.sqrt(overall * (1 - overall) / size), (key, shares[key])


def test_a_stage_size_without_room_is_warned_about_once_and_resume_says_it_starts(digits, tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = config(prune_rate=0.5, stages=3, stage_size=0.3)  # 3 x 539 > M = 898: M split evenly
    summary = prune(digits, out=tmp_path / "run", config=cfg, resume=True)
    assert summary["stage_sizes"] == [300, 299, 299]
    assert caplog.text.count("leaves no room for stage 1") == 1
    assert "--resume: no run in" in caplog.text and "starting one" in caplog.text


def test_fold_models_near_chance_are_warned_about(digits, tmp_path, caplog):
    """Models that learned nothing (a learning rate of 1e-7) score noise: the
    run says so instead of returning a coreset that only looks chosen."""
    summary = prune(digits, out=tmp_path / "run", config=config(train=dict(epochs=1, lr=1e-7)))
    warned = [r.getMessage() for r in caplog.records if "near chance" in r.getMessage()]
    near = [m["model"] for m in summary["scoring_models"] if m["accuracy"] < 0.15]
    assert near and [w.split()[1] for w in warned] == near, (warned, summary["scoring_models"])
    caplog.clear()
    prune(digits, out=tmp_path / "trained", config=config(train=dict(epochs=10, batch_size=64)))
    assert not [r for r in caplog.records if "near chance" in r.getMessage()]


def test_fold_models_score_unseen_samples_well_and_folds_are_kept_alike_digits(digits, tmp_path):
    cfg = config(train=dict(epochs=10, batch_size=64))
    summary = prune(digits, out=tmp_path / "run", config=cfg)
    assert_folds_fair(summary, 4, chance=0.1, min_accuracy=0.6)
    assert [m["model"] for m in summary["scoring_models"]][-1] == "stage2"
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["kept_share_per_fold"] == summary["kept_share_per_fold"]
    # the selection ranked normalized scores; scores_stage1.npy keeps the score's own units
    per_model = np.load(tmp_path / "run" / "scores_per_model_stage1.npy")
    fold = np.load(tmp_path / "run" / "folds.npy")
    raw = np.load(tmp_path / "run" / "scores_stage1.npy")
    assert np.allclose(raw, [np.nanmean(per_model[:, i]) for i in range(len(fold))], rtol=1e-5)
    assert np.isnan(per_model[fold, np.arange(len(fold))]).all()  # never scored by its own fold model
    ranks = np.load(tmp_path / "run" / "selection_scores_stage1.npy")
    assert 0 < ranks.min() and ranks.max() < 1


def test_fold_models_score_unseen_samples_well_and_folds_are_kept_alike_cifar(tmp_path):
    from data_fixtures import copy_subset

    index = ImageIndex.from_folder(copy_subset(tmp_path / "cifar", per_class=200))
    cfg = PruneConfig(prune_rate=0.3, train=TrainConfig(epochs=8, batch_size=64, threads=2))
    summary = prune(index, out=tmp_path / "run", config=cfg)
    assert_folds_fair(summary, 4, chance=0.1, min_accuracy=0.2)


@pytest.mark.parametrize("norm", ["zscore", "none"])
def test_score_normalizations_run_end_to_end(digits, tmp_path, norm):
    summary = prune(digits, out=tmp_path / "run", config=config(score_norm=norm, stages=1))
    check_invariants(tmp_path / "run", digits, config(score_norm=norm, stages=1), summary)
    assert summary["config"]["score_norm"] == norm
    with pytest.raises(ValueError, match="unknown score normalization 'minmax'"):
        prune(digits, out=tmp_path / "bad", config=config(score_norm="minmax"))


def test_easy_and_mix_selections():
    """easy: the lowest scores of each class in proportion; mix: the hardest
    alpha * k per class, then CCS strata over the rest."""
    from types import SimpleNamespace

    from unseen_fast.baselines import BaselineParams
    from unseen_fast.selection import select

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 250)
    scores = rng.random(1000).astype(np.float32)
    cfg = SimpleNamespace(seed=0, selection="easy", baseline=BaselineParams(mix_alpha=0.5, ccs_strata=10))
    easy = select(scores, 200, labels, cfg, exclude=None, stage=1)
    assert len(easy) == 200 and (np.bincount(labels[easy], minlength=4) == 50).all()
    for c in range(4):  # the 50 lowest of every class
        members = np.flatnonzero(labels == c)
        assert set(easy[labels[easy] == c]) == set(members[np.argsort(scores[members])[:50]])
    cfg.selection = "mix"
    mix = select(scores, 200, labels, cfg, exclude=None, stage=1)
    assert len(mix) == 200 == len(set(mix.tolist()))
    for c in range(4):  # the 25 hardest of every class are in
        members = np.flatnonzero(labels == c)
        assert set(members[np.argsort(-scores[members])[:25]]) <= set(mix.tolist())
    rest = np.setdiff1d(mix, [m for c in range(4) for m in np.flatnonzero(labels == c)[
        np.argsort(-scores[labels == c])[:25]]])
    assert np.histogram(scores[rest], bins=5, range=(0, 1))[0].min() > 0  # spread over the score range
    exclude = np.zeros(1000, dtype=bool)
    exclude[:500] = True
    assert (select(scores, 100, labels, cfg, exclude=exclude, stage=2) >= 500).all()


@pytest.mark.parametrize("selection", ["easy", "mix"])
def test_easy_and_mix_run_end_to_end(digits, tmp_path, selection):
    cfg = config(selection=selection)
    summary = prune(digits, out=tmp_path / "run", config=cfg)
    check_invariants(tmp_path / "run", digits, cfg, summary)


def test_shared_models_and_cache_follow_the_images_contents(tmp_path, small_folder):
    """--share-models used to key on names and labels only: a replaced image
    (same name, same label) reused stale stage-1 scores and pixels."""
    import os
    import shutil

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    cfg = config(prune_rate=0.5, folds=2, stages=1, train=dict(image_size=32, batch_size=32, epochs=1))
    share = tmp_path / "share"
    first = prune(ImageIndex.from_folder(root), out=tmp_path / "one", config=cfg, share_dir=share)
    again = prune(ImageIndex.from_folder(root), out=tmp_path / "two", config=cfg, share_dir=share)
    assert "stage1_reused_from" not in first["wall_time_s"] and "stage1_reused_from" in again["wall_time_s"]
    image = root / ImageIndex.from_folder(root).paths[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image, format="JPEG")
    os.utime(image, ns=(1, 1))  # a different modification time, whatever the clock
    changed = prune(ImageIndex.from_folder(root), out=tmp_path / "three", config=cfg, share_dir=share)
    assert "stage1_reused_from" not in changed["wall_time_s"]
    assert len(list(share.glob("cache/decoded-*.u8"))) == 2  # the pixels were decoded again


def test_unreadable_images_stop_the_run_before_anything_is_written_or_are_skipped(tmp_path, small_folder,
                                                                                  monkeypatch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    paths = ImageIndex.from_folder(root).paths
    (root / paths[3]).write_bytes(b"")                      # empty
    (root / paths[40]).write_bytes(b"this is not a jpeg")   # not an image
    cfg = config(prune_rate=0.5, folds=2, stages=1, train=dict(image_size=32, batch_size=32, epochs=1))
    with pytest.raises(UserError, match=r"2 unreadable image\(s\): .*" + paths[3].replace("/", ".") +
                                        r".*pass --skip-bad to leave them out"):
        prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg)
    assert not (tmp_path / "run").exists()
    result = prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg, skip_bad=True)
    skipped = (tmp_path / "run" / "skipped_images.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in skipped] == [paths[3], paths[40]]
    assert result["num_samples"] == len(paths) - 2 and result["skipped_unreadable_images"] == 2
    assert not {paths[3], paths[40]} & set(line.split()[0] for line in result.file_list.read_text().splitlines())
    # --resume reads the first pass's verdict back instead of opening every file again
    import unseen_fast.usable_images as usable_images

    def no_second_pass(index, **kwargs):
        raise AssertionError("header pass run again on --resume")
    monkeypatch.setattr(usable_images, "unreadable_headers", no_second_pass)
    again = prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg, resume=True, skip_bad=True)
    assert np.array_equal(again.coreset, result.coreset)
    assert (tmp_path / "run" / "skipped_images.txt").read_text().splitlines() == skipped
    # ... but runs it when the folder's verdict does not account for the data (here: without --skip-bad)
    with pytest.raises(AssertionError, match="header pass run again"):
        prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg, resume=True)
    extra = root / (paths[5].rsplit(".", 1)[0] + "_new.jpg")  # or a file the first pass never saw
    shutil.copy(root / paths[5], extra)
    with pytest.raises(AssertionError, match="header pass run again"):
        prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg, resume=True, skip_bad=True)
    extra.unlink()
    monkeypatch.undo()
    # the user deletes the bad files: the same run resumes (its index never held them)
    (root / paths[3]).unlink()
    (root / paths[40]).unlink()
    again = prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg, resume=True, skip_bad=True)
    assert np.array_equal(again.coreset, result.coreset)


def test_sigkill_at_a_dozen_random_moments_then_resume(tmp_path):
    """kill -9 at 12 seeded random moments (import, split, fold training,
    checkpoint writes, scoring, stage 2, outputs: wherever it lands), then
    --resume to the end: the coreset of an uninterrupted run."""
    import random
    import signal
    import time

    cli = [sys.executable, "-m", "unseen_fast.cli"]
    args = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "12", "--quiet", "--seed", "5"]
    out = tmp_path / "killed"
    rng = random.Random(20261123)
    kills = 0
    for _ in range(12):
        process = subprocess.Popen(cli + args + ["--out", str(out), "--resume"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, 3.5))
        if process.poll() is not None:  # it finished: nothing left to interrupt
            assert process.returncode == 0, process.stderr.read().decode()[-2000:]
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills >= 10, f"only {kills} kills landed before the run finished"
    finish = subprocess.run(cli + args + ["--out", str(out), "--resume"], capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr[-2000:]
    straight = subprocess.run(cli + args + ["--out", str(tmp_path / "straight")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert np.array_equal(np.load(out / "coreset.npy"), np.load(tmp_path / "straight" / "coreset.npy"))
    assert (out / "coreset.txt").read_bytes() == (tmp_path / "straight" / "coreset.txt").read_bytes()


def test_an_image_cut_short_after_its_header_stops_before_training_or_is_left_out(tmp_path, small_folder):
    """The header pass cannot see it; the decoded cache does, before any training."""
    import io
    import shutil

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    paths = ImageIndex.from_folder(root).paths
    buffer = io.BytesIO()
    Image.open(root / paths[7]).convert("RGB").save(buffer, format="JPEG", quality=95)
    (root / paths[7]).write_bytes(buffer.getvalue()[:int(len(buffer.getvalue()) * 0.9)])  # header intact
    cfg = config(prune_rate=0.5, folds=2, stages=2, stage_size=10,
                 train=dict(image_size=32, batch_size=32, epochs=1, backend="cache"))
    with pytest.raises(UserError, match=r"1 image\(s\) could not be decoded: .*" + paths[7].split("/")[1] +
                                        r".*--resume with --skip-bad"):
        prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg)
    assert not (tmp_path / "run" / "models").exists()  # stopped before any training
    result = prune(ImageIndex.from_folder(root), out=tmp_path / "run", config=cfg, resume=True, skip_bad=True)
    assert 7 not in result.coreset.tolist() and len(result.coreset) == result["coreset_size"]
    assert result["coreset_size"] == int((len(paths) - 1) * 0.5)  # the prune rate of the usable samples
    assert result["num_samples"] == len(paths) and result["usable_samples"] == len(paths) - 1  # ids kept stable
    assert repr(result).startswith(f"PruneResult: kept {result['coreset_size']} of {len(paths) - 1} samples "
                                   f"(1 undecodable image(s) left out: skipped_images.txt)")  # said "of all"
    assert (tmp_path / "run" / "skipped_images.txt").read_text().startswith(paths[7] + "\t")
    assert np.isnan(np.load(tmp_path / "run" / "scores_per_model_stage1.npy")[:, 7]).all()
    assert not np.load(tmp_path / "run" / "label_issues.npy")[7]


def test_resume_refuses_other_images_under_the_same_names(tmp_path, small_folder):
    """A trial: --resume with another folder holding the same file names (or
    after replacing an image) went on, scoring new pixels with models trained
    on the old ones. Refused once the run trained; before that (a run stopped
    on an undecodable image that was then replaced) the new images are taken."""
    import shutil

    cfg = config(prune_rate=0.5, folds=2, stages=1, train=dict(image_size=32, batch_size=32, epochs=1))
    shutil.copytree(small_folder, tmp_path / "data")
    prune(ImageIndex.from_folder(tmp_path / "data"), out=tmp_path / "run", config=cfg)
    shutil.copytree(small_folder, tmp_path / "other")
    victim = tmp_path / "other" / "cat" / "0001.jpg"
    victim.write_bytes((tmp_path / "other" / "cat" / "0002.jpg").read_bytes())  # same names, one image differs
    with pytest.raises(UserError, match="are not the ones the run in .*run started from"):
        prune(ImageIndex.from_folder(tmp_path / "other"), out=tmp_path / "run", config=cfg, resume=True)
    again = prune(ImageIndex.from_folder(tmp_path / "data"), out=tmp_path / "run", config=cfg, resume=True)
    assert again["coreset_size"] > 0


def test_a_file_list_with_label_gaps_prunes_and_coreset_txt_keeps_its_numbers(tmp_path, small_folder):
    """Labels 3, 7 and 9 (a subset of a bigger list): three classes, and
    coreset.txt reads back with the list's own numbers."""
    folder = ImageIndex.from_folder(small_folder)
    keep = np.flatnonzero(np.isin(folder.labels, [3, 7, 9]))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder.paths[i]} {folder.labels[i]}\n" for i in keep))
    index = ImageIndex.from_file_list(listing, root=small_folder)
    assert index.classes == ["3", "7", "9"]
    result = prune(index, out=tmp_path / "run", config=config(prune_rate=0.5, folds=2, stages=1,
                                                              train=dict(image_size=32, batch_size=16)))
    back = ImageIndex.from_file_list(result.file_list, root=small_folder)
    assert set(back.classes) <= {"3", "7", "9"}
    wanted = {folder.paths[i]: str(folder.labels[i]) for i in keep}
    assert all(wanted[p] == back.classes[l] for p, l in zip(back.paths, back.labels.tolist()))


@pytest.mark.parametrize("seed", [-1, 2**31, 10**20, 1.5, True])
def test_a_seed_outside_what_the_run_derives_seeds_from_is_refused_where_the_config_is_made(seed):
    """Runs derive seeds (seed + 1000 x stage, seed + job) that torch and
    numpy must take: a bad one fails in PruneConfig, not mid-run after
    config.json was written."""
    with pytest.raises(UserError, match="seed must be a whole number from 0 to 2147483647"):
        PruneConfig(prune_rate=0.3, seed=seed)
    assert PruneConfig(prune_rate=0.3, seed=2**31 - 1).seed == 2**31 - 1


@pytest.fixture(scope="module")
def finished_digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "1", "--folds", "2",
                 "--stages", "1", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("name", ["folds.npy", "index.json", "phase_costs.json", "scores_stage1.npy"])
def test_a_damaged_run_file_is_one_line_on_resume(finished_digits_run, tmp_path, capsys, name):
    """Writes are atomic, so only a full disk or a hand can cut a run file
    short; --resume then names it in one line (exit 2), not numpy's, json's
    or torch's traceback."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_digits_run, run)
    (run / name).write_bytes((run / name).read_bytes()[:40])
    capsys.readouterr()
    code = main(["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "1", "--folds", "2",
                 "--stages", "1", "--out", str(run), "--quiet", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{run / name} cannot be read" in err and "a damaged run file" in err, err
