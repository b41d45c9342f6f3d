"""--selection auto: the validation split, the proxy budget, the choice and
its report, and what the chosen strategy then selects from."""
import dataclasses
import json

import numpy as np
import pytest

from unseen_fast import ImageIndex, PruneConfig, TrainConfig, prune
from unseen_fast import auto_selection
from unseen_fast.auto_selection import CANDIDATES, RANDOM_REPLICAS, decide, proxy_plan, proxy_train_config, validation_mask
from unseen_fast.errors import UserError

FAST = dict(image_size=8, threads=1)


def test_validation_split_is_stratified_and_leaves_room():
    labels = np.repeat(np.arange(4), [100, 300, 500, 100])
    exclude = np.zeros(len(labels), dtype=bool)
    exclude[:10] = True
    mask = validation_mask(labels, coreset_size=600, seed=0, exclude=exclude)
    assert mask.sum() == 100 and not (mask & exclude).any()  # 10% of 1,000 < (1,000 - 600 - 10) / 2
    # in proportion to the eligible counts 90, 300, 500, 100 (largest remainders)
    assert np.bincount(labels[mask], minlength=4).tolist() == [9, 30, 51, 10]
    assert mask.sum() == validation_mask(labels, 600, 0, exclude).sum()
    assert np.array_equal(mask, validation_mask(labels, 600, 0, exclude))  # seeded
    assert validation_mask(labels, 900, 0, np.zeros_like(exclude)).sum() == 50  # half the 100 pruned
    with pytest.raises(UserError, match=r"half the 90 samples neither kept nor excluded is 45; raise --prune-rate"):
        validation_mask(labels, 910, 0, np.zeros_like(exclude))
    # a small dataset: 10% of N is the limit, and a higher prune rate would not help
    with pytest.raises(UserError, match=r"10% of the 480 samples is 48 \(a dataset of at least 495 samples is "
                                        r"needed\); or choose another --selection"):
        validation_mask(np.arange(480) % 4, 48, 0, np.zeros(480, dtype=bool))
    # ... even where half the pruned samples is the smaller figure (25 images: the advice was a higher prune rate)
    with pytest.raises(UserError, match=r"10% of the 25 samples is 2 \(a dataset of at least 495"):
        validation_mask(np.arange(25) % 2, 17, 0, np.zeros(25, dtype=bool))


def test_auto_refuses_before_training_when_it_cannot_validate_or_train_proxies(tmp_path):
    config = PruneConfig(prune_rate=0.3, selection="auto", train=TrainConfig(**FAST))
    with pytest.raises(UserError, match="10% of the 400 samples is 40"):
        prune(ImageIndex.digits().subset(np.arange(400)), out=tmp_path / "small", config=config)
    assert not (tmp_path / "small").exists()
    tiny = PruneConfig(prune_rate=0.3, selection="auto", auto_budget=0.001, train=TrainConfig(**FAST))
    with pytest.raises(UserError, match=r"--auto-budget 0.001 gives each of the 5 proxies \d+ training images, "
                                        r"less than one batch of 32; raise it"):
        prune(ImageIndex.digits(), out=tmp_path / "tiny", config=tiny)


def test_proxy_plan_stays_within_the_budget():
    # stage 1: 10 epochs x 10,000 images; 5 candidates of 7,000 at budget 0.25
    epochs, samples = proxy_plan(100_000, 7_000, 5, 0.25, epochs_cap=10)
    assert (epochs, samples) == (1, 5_000) and 5 * epochs * samples <= 25_000
    epochs, samples = proxy_plan(1_000_000, 3_000, 5, 0.25, epochs_cap=10)
    assert (epochs, samples) == (10, 3_000)  # capped at the stage-1 epochs
    epochs, samples = proxy_plan(1_000_000, 30_000, 5, 0.25, epochs_cap=10)
    assert (epochs, samples) == (1, 30_000) and 5 * epochs * samples <= 250_000


def test_auto_picks_the_best_proxy_then_selects_from_every_sample(tmp_path):
    config = PruneConfig(prune_rate=0.3, selection="auto", train=TrainConfig(**FAST))
    result = prune(ImageIndex.digits(), out=tmp_path / "run", config=config, share_dir=tmp_path / "share")
    report = json.loads((tmp_path / "run" / "auto_selection.json").read_text())
    assert [c["name"] for c in report["candidates"]] == [name for name, _, _ in CANDIDATES]
    accuracy = {c["name"]: c["validation_accuracy"] for c in report["candidates"]}
    metric = {c["name"]: c["validation_label_probability"] for c in report["candidates"]}
    replicas = report["candidates"][-1]["replica_label_probability"]
    assert len(replicas) == RANDOM_REPLICAS and metric["random"] == pytest.approx(np.mean(replicas))
    assert accuracy["random"] == pytest.approx(np.mean(report["candidates"][-1]["replica_accuracy"]))
    sampling = {c["name"]: c["paired_sampling_sd"] for c in report["candidates"][:-1]}
    assert all(0 < sd < 0.5 for sd in sampling.values())
    strategies = {name: value for name, value in metric.items() if name != "random"}
    assert report["chosen"] == decide(strategies, replicas, sampling)["chosen"]
    assert report["decision_metric"] == "label_probability"
    assert all(0 <= a <= 1 for a in accuracy.values()) and all(0 < m < 1 for m in metric.values())
    assert report["proxy_images"] <= 0.25 * report["stage1_training_images"]
    assert report["proxy_cost_share"] == pytest.approx(report["proxy_images"] / report["stage1_training_images"])
    validation = np.load(tmp_path / "run" / "validation.npy")
    assert validation.sum() == 180  # 10% of 1,797
    # proxies fine-tune fold model (seed % 4) = 0 and are judged only where it never trained
    fold = np.load(tmp_path / "run" / "folds.npy")
    assert report["proxy_start"] == "fine-tuned fastnet"
    assert report["validation_size"] == (validation & (fold != 0)).sum() and 100 < report["validation_size"] < 180
    assert len(result.coreset) == result["coreset_size"] == 1257
    # the split judged the proxies only: the coreset is the chosen strategy's own, split samples included
    chosen = next(c for c in CANDIDATES if c[0] == report["chosen"])
    plain = prune(ImageIndex.digits(), out=tmp_path / "plain", config=auto_selection.strategy_config(
        config, chosen[1], chosen[2]), share_dir=tmp_path / "share")
    assert np.array_equal(plain.coreset, result.coreset), report["chosen"]
    assert np.intersect1d(np.flatnonzero(validation), result.coreset).size > 0
    # --auto-keep-split: the split is never selected (the same choice: the proxies are the same)
    kept_out = prune(ImageIndex.digits(), out=tmp_path / "kept-out", share_dir=tmp_path / "share",
                     config=dataclasses.replace(config, auto_keep_split=True))
    assert kept_out["auto_selection"]["chosen"] == report["chosen"]
    assert not np.intersect1d(np.flatnonzero(validation), kept_out.coreset).size
    assert len(kept_out.coreset) == 1257
    assert result["auto_selection"] == report and (tmp_path / "run" / "auto_selection.png").exists()
    # resumed: the report is read back, not measured again, and the coreset is the same
    again = prune(ImageIndex.digits(), out=tmp_path / "run", config=config, resume=True)
    assert np.array_equal(again.coreset, result.coreset)
    assert again["auto_selection"]["seconds"] == report["seconds"]


def test_auto_with_random_scores_is_refused(tmp_path):
    with pytest.raises(UserError, match="--selection auto compares strategies over the scores"):
        PruneConfig(prune_rate=0.3, selection="auto", score="random", train=TrainConfig(**FAST))


def test_a_strategy_replaces_random_only_beyond_the_proxy_noise():
    # random replicas 0.40 and 0.42: spread 0.0141 and a paired sampling sd of 0.0049 give a noise sd of
    # 0.0150; the margin is 2 x 0.0150 x sqrt(1.5) = 0.0367 over the mean 0.41
    base = dict(hard=0.30, mix=0.35, ccs=0.44)
    sampling = dict(hard=0.0049, mix=0.0049, ccs=0.0049)
    verdict = decide(base, [0.40, 0.42], sampling)
    noise = np.hypot(0.02 / np.sqrt(2), 0.0049)
    assert verdict["best_strategy"] == "ccs" and verdict["chosen"] == "random"  # +0.03
    assert verdict["noise_sd"] == pytest.approx(noise) and verdict["margin"] == pytest.approx(2 * noise * np.sqrt(1.5))
    assert verdict["random_value"] == pytest.approx(0.41) and verdict["gain_over_random"] == pytest.approx(0.03)
    assert decide(dict(base, hard=0.45), [0.40, 0.42], sampling)["chosen"] == "hard"  # +0.04 > 0.0367
    # replicas that agree by chance: the split's sampling noise remains
    floor = decide(dict(base, ccs=0.30, mix=0.43), [0.41, 0.41], dict(sampling, mix=0.0156))
    assert floor["noise_sd"] == pytest.approx(0.0156) and floor["chosen"] == "random"
    assert decide(dict(base, ccs=0.30, mix=0.48), [0.41, 0.41], dict(sampling, mix=0.0156))["chosen"] == "mix"
    # the sampling noise of the best strategy counts, not of the others
    assert decide(dict(base, ccs=0.445), [0.41, 0.41], dict(sampling, ccs=0.02, hard=0.0))["chosen"] == "random"


def test_proxies_from_every_fold_model_share_the_budget_and_the_whole_split(tmp_path, monkeypatch):
    monkeypatch.setattr(auto_selection, "PROXY_FOLDS", 4)
    config = PruneConfig(prune_rate=0.3, selection="auto", train=TrainConfig(**FAST))
    report = prune(ImageIndex.digits(), out=tmp_path / "run", config=config)["auto_selection"]
    assert report["proxy_start"] == "fine-tuned fastnet x4" and report["proxy_starts"] == 4
    assert report["validation_size"] == 180  # every held-out sample lies outside 3 of the 4 folds
    assert report["proxy_images"] <= 0.25 * report["stage1_training_images"]
    folds = {path.name.rsplit("-", 1)[1] for path in (tmp_path / "run" / "models").glob("proxy-*")}
    assert folds == {"fold0", "fold1", "fold2", "fold3"}  # proxy folders named by the model they started from
    assert len(list((tmp_path / "run" / "models").glob("proxy-*"))) == 4 * (len(CANDIDATES) - 1 + RANDOM_REPLICAS)


def test_proxies_from_scratch_use_the_whole_split(tmp_path, monkeypatch):
    monkeypatch.setattr(auto_selection, "PROXY_START", "scratch")
    config = PruneConfig(prune_rate=0.3, selection="auto", train=TrainConfig(**FAST))
    report = prune(ImageIndex.digits(), out=tmp_path / "run", config=config)["auto_selection"]
    assert report["proxy_start"] == "fastnet from scratch" and report["validation_size"] == 180


def test_paired_sampling_sd_of_per_sample_differences():
    """A proxy that differs from the random proxies on few samples has a
    small paired sd: sqrt(mean over replicas of var(differences) / 2n)."""
    rng = np.random.default_rng(0)
    random_proxy = rng.uniform(0, 1, 1_000)
    close = random_proxy + rng.normal(0, 0.01, 1_000)   # a strategy that changes little
    far = rng.uniform(0, 1, 1_000)                      # one unrelated to the random proxies
    values = np.stack([close, far, random_proxy, random_proxy + 0.001])
    got = auto_selection.paired_sampling_sd(values, strategies=2, samples=1_000)
    want = [np.sqrt(np.mean([np.var(row - r, ddof=1) for r in values[2:]]) / 2_000) for row in values[:2]]
    assert got == pytest.approx(want) and got[0] < 0.001 < 0.008 < got[1]


def test_a_report_of_an_earlier_rule_is_measured_again(tmp_path):
    config = PruneConfig(prune_rate=0.3, selection="auto", train=TrainConfig(**FAST))
    prune(ImageIndex.digits(), out=tmp_path / "run", config=config)
    report = json.loads((tmp_path / "run" / "auto_selection.json").read_text())
    stale = dict(chosen="easy", candidates=report["candidates"])  # what the first version wrote
    (tmp_path / "run" / "auto_selection.json").write_text(json.dumps(stale))
    proxies = sorted((tmp_path / "run" / "models").glob("proxy-*"))
    assert proxies and all(path.name.endswith("-fold0") for path in proxies)
    old_proxy = tmp_path / "run" / "models" / "proxy-hard"  # an earlier rule's proxy, under its old name
    old_proxy.mkdir()
    written = {path: (path / "checkpoint.pt").stat().st_mtime_ns for path in proxies}
    again = prune(ImageIndex.digits(), out=tmp_path / "run", config=config, resume=True)
    assert not old_proxy.exists()  # stale proxies are removed, never resumed as the new rule's
    assert all((path / "checkpoint.pt").stat().st_mtime_ns != mtime for path, mtime in written.items())
    assert again["auto_selection"]["chosen"] in [name for name, _, _ in CANDIDATES] and "margin" in again["auto_selection"]
    # the second design's report (proxies judged by accuracy, no decision_metric) and the fourth's (ccs a
    # candidate, two random replicas, no rule): measured again too
    for old_key in ("decision_metric", "rule"):
        older = {key: value for key, value in again["auto_selection"].items() if key not in (old_key, "rule")}
        (tmp_path / "run" / "auto_selection.json").write_text(json.dumps(dict(older, chosen="random")))
        again = prune(ImageIndex.digits(), out=tmp_path / "run", config=config, resume=True)
        assert again["auto_selection"]["decision_metric"] == "label_probability"
        assert again["auto_selection"]["rule"] == auto_selection.RULE
        assert again["auto_selection"]["seconds"] != older["seconds"]


def test_proxies_anneal_and_take_enough_steps():
    final = TrainConfig(arch="resnet18", epochs=6, batch_size=128, lr=0.05, warmup_epochs=1.0)
    proxy = proxy_train_config(final, epochs=1, samples=3_000)
    # the final schedule's shape: one sixth warm-up, so a one-epoch proxy anneals instead of ending at the peak
    assert proxy.warmup_epochs == pytest.approx(1 / 6) and proxy.arch == "fastnet"
    assert proxy.batch_size == 32 and proxy.lr == pytest.approx(0.05 * 32 / 128)  # 93 steps, not 23
    assert not proxy.record_dynamics and not proxy.record_probabilities
    warm = proxy_train_config(final, epochs=1, samples=3_000, warm_start=auto_selection.WarmStart("f", None, "resnet18"))
    assert warm.arch == "resnet18" and warm.lr == pytest.approx(auto_selection.PROXY_FINETUNE_LR * 0.05 * 32 / 128)
    many = proxy_train_config(final, epochs=6, samples=50_000)
    assert many.batch_size == 128 and many.lr == 0.05 and many.warmup_epochs == pytest.approx(1.0)


def test_random_replicas_are_independent_coresets():
    labels = np.arange(1_000) % 4
    scores = np.random.default_rng(0).random(1_000).astype(np.float32)
    config = PruneConfig(prune_rate=0.5, selection="random")
    exclude = np.zeros(1_000, dtype=bool)
    first, second = (auto_selection.candidate_coreset(config, "random", {}, scores, 500, labels, exclude, replica)
                     for replica in (0, 1))
    assert len(first) == len(second) == 500 and 150 < np.intersect1d(first, second).size < 350
    again = auto_selection.candidate_coreset(config, "random", {}, scores, 500, labels, exclude, 0)
    assert np.array_equal(first, again)
