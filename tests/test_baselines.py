"""Baselines: each dynamics score against a float64 loop written from its
paper / reference code, Moderate's band, CCS's strata, and every baseline
end to end through prune (shared stage-1 models, argument errors)."""
import warnings

import numpy as np
import pytest

from unseen_fast import baselines
from unseen_fast.baselines import BaselineParams, ccs_select, dynamics_importance, moderate_importance
from unseen_fast.data import ImageIndex
from unseen_fast.errors import UserError
from unseen_fast.pipeline import PruneConfig, prune
from unseen_fast.train import TrainConfig


def random_dynamics(rng, epochs=7, n=300, classes=5, missing=0.1):
    """Recorder-like arrays with NaN where a sample was not seen."""
    logits = rng.normal(size=(epochs, n, classes)) * 2
    labels = rng.integers(0, classes, n)
    probs = np.exp(logits - logits.max(2, keepdims=True))
    probs /= probs.sum(2, keepdims=True)
    p_true = np.take_along_axis(probs, np.broadcast_to(labels[None, :, None], (epochs, n, 1)), 2)[..., 0]
    true_logit = np.take_along_axis(logits, np.broadcast_to(labels[None, :, None], (epochs, n, 1)), 2)[..., 0]
    other = np.where(np.arange(classes) == labels[None, :, None], -np.inf, logits).max(2)
    onehot = np.eye(classes)[labels]
    arrays = dict(p_true=p_true, correct=(logits.argmax(2) == labels).astype(np.float64),
                  logit_margin=true_logit - other, el2n=np.linalg.norm(probs - onehot, axis=2), probs=probs)
    gone = rng.random((epochs, n)) < missing
    for name, array in arrays.items():
        array[gone] = np.nan
    arrays["correct"][:, :5] = 0  # a few never-learned samples
    arrays["correct"][:, 5] = np.nan  # and one never seen
    return {k: v.astype(np.float16 if k == "probs" else np.float32) for k, v in arrays.items()}


@pytest.fixture(autouse=True)
def quiet_nan_reductions():
    with warnings.catch_warnings():  # the float64 references reduce all-NaN columns on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def rank_equal(importance, expected):
    """Same order (importances are shifted to a minimum of 0)."""
    finite = np.isfinite(expected)
    shifted = expected[finite] - expected[finite].min()
    assert np.allclose(importance[finite], shifted, rtol=1e-5, atol=1e-6)


def test_forgetting_counts_flips_and_ranks_never_learned_first():
    rng = np.random.default_rng(0)
    dyn = random_dynamics(rng)
    got = dynamics_importance("forgetting", dyn, BaselineParams())
    correct = dyn["correct"].astype(np.float64)
    expected = np.empty(correct.shape[1])
    for i in range(correct.shape[1]):
        seq = [c for c in correct[:, i] if not np.isnan(c)]
        flips = sum(1 for a, b in zip(seq, seq[1:]) if a == 1 and b == 0)
        expected[i] = flips if 1 in seq else (correct.shape[0] if seq else np.nan)
    rank_equal(got, expected)
    assert (got[:5] == got.max()).all() and got[5] == got.max()  # never learned / never seen: kept first


def test_aum_el2n_early_dynunc_against_loops():
    rng = np.random.default_rng(1)
    dyn = random_dynamics(rng, epochs=8)
    margin = dyn["logit_margin"].astype(np.float64)
    rank_equal(dynamics_importance("aum", dyn, BaselineParams()), -np.nanmean(margin, 0))
    el2n = dyn["el2n"].astype(np.float64)
    rank_equal(dynamics_importance("el2n_early", dyn, BaselineParams(early_epochs=3)), np.nanmean(el2n[:3], 0))
    rank_equal(dynamics_importance("el2n_early", dyn, BaselineParams()), np.nanmean(el2n[:2], 0))  # 8 // 4
    p = dyn["p_true"].astype(np.float64)
    expected = np.array([np.mean([np.nanstd(p[s:s + 3, i]) for s in range(6)]) for i in range(p.shape[1])])
    rank_equal(dynamics_importance("dynunc", dyn, BaselineParams(window=3)), expected)


def test_tdds_matches_a_transcription_of_the_reference_code():
    rng = np.random.default_rng(2)
    dyn = random_dynamics(rng, epochs=6, missing=0.0)
    probs = dyn["probs"].astype(np.float64)
    window, decay, epochs = 4, 0.9, 6
    total = np.zeros(probs.shape[1])
    for k in range(epochs - window + 1):  # the reference's while loop over windows
        kd = [np.abs(probs[k + j + 1] * (np.log(probs[k + j + 1] + 1e-8) - np.log(probs[k + j] + 1e-8))).sum(1)
              for j in range(window - 1)]
        average = sum(kd) / (window - 1)
        norm = np.linalg.norm(np.array([d - average for d in kd]), axis=0)
        total += norm * decay * (1 - decay) ** (epochs - window - k)
    rank_equal(dynamics_importance("tdds", dyn, BaselineParams(window=window, tdds_decay=decay)), total)
    # in chunks of samples (a trajectory larger than memory): the same values
    for chunk_bytes in [1, 8 * epochs * 5 * 7, 1 << 40]:  # one sample, 7 samples (300 = 42 x 7 + 6), all
        assert np.allclose(baselines.tdds(dyn["probs"], window, decay, chunk_bytes=chunk_bytes), total,
                           rtol=1e-5, atol=1e-6)
    del dyn["probs"]
    with pytest.raises(ValueError, match="tdds needs the per-epoch probabilities"):
        dynamics_importance("tdds", dyn, BaselineParams())


def test_window_and_epoch_errors():
    dyn = random_dynamics(np.random.default_rng(3), epochs=4)
    with pytest.raises(ValueError, match="window 6 > the 4 recorded epochs"):
        dynamics_importance("dynunc", dyn, BaselineParams(window=6))
    with pytest.raises(ValueError, match="early_epochs 5 > the 4"):
        dynamics_importance("el2n_early", dyn, BaselineParams(early_epochs=5))
    for bad, message in [(dict(window=1), "window must be >= 2"), (dict(tdds_decay=1.0), "tdds_decay"),
                         (dict(ccs_beta=1.0), "ccs_beta"), (dict(ccs_strata=0), "ccs_strata")]:
        with pytest.raises(ValueError, match=message):
            BaselineParams(**bad).validate()


@pytest.mark.parametrize("n, budget", [(101, 40), (100, 41), (37, 36), (50, 1)])
def test_moderate_keeps_the_band_around_the_median_distance(n, budget):
    rng = np.random.default_rng(n + budget)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, 6))
    importance, distance = moderate_importance(features, labels)
    for cls in range(3):  # distance to the per-class median feature (float64 reference)
        members = labels == cls
        ref = np.linalg.norm(features[members] - np.median(features[members], 0), axis=1)
        assert np.allclose(distance[members], ref, rtol=1e-6)
    kept = set(np.argsort(-importance, kind="stable")[:budget].tolist())
    order = np.argsort(distance)
    low = (n - budget) // 2
    # the reference keeps sorted positions [low, low + budget) with low = round((n - budget) / 2)
    assert set(order[low:low + budget].tolist()) == kept or \
        set(order[low + 1:low + 1 + budget].tolist()) == kept


def test_ccs_fills_the_budget_smallest_stratum_first():
    rng = np.random.default_rng(4)
    scores = np.concatenate([rng.uniform(0, 1, 900), rng.uniform(9, 10, 100)])  # two dense regions
    picked = ccs_select(scores, 300, beta=0.1, strata=10, rng=np.random.default_rng(0))
    assert len(picked) == 300 and len(np.unique(picked)) == 300
    hardest = np.argsort(-scores)[:100]
    assert not set(picked.tolist()) & set(hardest.tolist())  # the hardest beta * n are gone
    # after the cut the 900 survivors span [0, 1): 10 strata of ~90, 30 taken from each
    kept = scores[picked]
    counts = np.histogram(kept, bins=np.linspace(scores[np.argsort(-scores)[100:]].min(),
                                                 scores[np.argsort(-scores)[100:]].max(), 11))[0]
    assert counts.min() >= 29 and counts.max() <= 31
    with pytest.raises(ValueError, match="budget 950 exceeds the 900 candidates"):
        ccs_select(scores, 950, beta=0.1, strata=10, rng=np.random.default_rng(0))
    small = ccs_select(np.r_[np.zeros(5), np.ones(95)], 20, beta=0.0, strata=2, rng=np.random.default_rng(0))
    assert (small < 5).sum() == 5  # the small stratum is taken whole, the rest from the big one


FAST = dict(epochs=3, batch_size=128, image_size=8, threads=1)


def fitting_config(score, **kw):
    return PruneConfig(prune_rate=0.4, stages=1, framework="fitting", score=score,
                       train=TrainConfig(**FAST), **kw)


@pytest.fixture(scope="module")
def digits():
    return ImageIndex.digits()


def test_every_baseline_through_prune_shares_one_full_data_model(digits, tmp_path):
    share = tmp_path / "share"
    coresets, stamps = {}, set()
    for score in baselines.DYNAMICS_SCORES + ("moderate", "entropy"):
        summary = prune(digits, out=tmp_path / score, config=fitting_config(score), share_dir=share)
        coreset = np.load(tmp_path / score / "coreset.npy")
        assert len(coreset) == summary["coreset_size"] == int(len(digits) * 0.6)
        assert np.isfinite(np.load(tmp_path / score / "scores_stage1.npy")).all()
        coresets[score] = coreset
        [checkpoint] = share.glob("stage1-fitting-*/fitting/checkpoint.pt")
        stamps.add(checkpoint.stat().st_mtime_ns)
    assert len(stamps) == 1  # trained by the first run, reused (not retrained) by every later one
    assert len({tuple(c) for c in coresets.values()}) == len(coresets)  # different scores, different coresets
    # a second run of the same score reuses the stored scores too
    summary = prune(digits, out=tmp_path / "again", config=fitting_config("aum"), share_dir=share)
    assert "stage1_reused_from" in summary["wall_time_s"]
    assert np.array_equal(np.load(tmp_path / "again" / "coreset.npy"), coresets["aum"])


def test_tdds_records_the_trajectory_whatever_its_size(digits, tmp_path, monkeypatch):
    from unseen_fast import stage1 as pipeline

    monkeypatch.setattr(pipeline, "PROBABILITY_RECORD_LIMIT", 0)  # as if digits were ImageNet
    prune(digits, out=tmp_path / "aum", config=fitting_config("aum"))
    assert not (tmp_path / "aum" / "models" / "fitting" / "dynamics" / "probs.f16").exists()  # not needed
    prune(digits, out=tmp_path / "tdds", config=fitting_config("tdds"))
    assert (tmp_path / "tdds" / "models" / "fitting" / "dynamics" / "probs.f16").exists()
    assert np.isfinite(np.load(tmp_path / "tdds" / "scores_stage1.npy")).all()


def test_tdds_says_when_the_disk_cannot_hold_the_trajectory(digits, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from unseen_fast import stage1 as pipeline

    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: SimpleNamespace(total=10 << 30, free=1000))
    with pytest.raises(ValueError, match=r"softmax trajectory .* does not fit in the 0.0 GiB free under"):
        prune(digits, out=tmp_path / "run", config=fitting_config("tdds"))
    assert not (tmp_path / "run" / "models" / "fitting" / "checkpoint.pt").exists()  # refused before training


def test_ccs_selection_through_prune(digits, tmp_path):
    cfg = fitting_config("aum", selection="ccs", baseline=BaselineParams(ccs_beta=0.1, ccs_strata=20))
    summary = prune(digits, out=tmp_path / "run", config=cfg)
    coreset = np.load(tmp_path / "run" / "coreset.npy")
    scores = np.load(tmp_path / "run" / "scores_stage1.npy")
    assert len(coreset) == summary["coreset_size"]
    # The hardest floor(0.1 n) are dropped; under ties at the cut (AUM saturates:
    # 2 tied there in a bf16 run) which of the tied go is the selection's tie-break.
    dropped = int(0.1 * len(digits))
    cut = np.sort(scores)[::-1][dropped - 1]
    kept = scores[coreset]
    assert (kept <= cut).all()
    above, tied = int((scores > cut).sum()), int((scores == cut).sum())
    assert (kept == cut).sum() <= tied - (dropped - above)


@pytest.mark.parametrize("kw, message", [
    (dict(score="forgetting"), "comes from one model trained on all samples"),
    (dict(score="moderate", framework="fitting", stages=2), "use framework 'fitting' and 1 stage"),
    (dict(selection="kcenter"), "unknown selection 'kcenter'"),
    (dict(score="aum", framework="fitting", stages=1, baseline=BaselineParams(ccs_beta=2)), "ccs_beta"),
])
def test_baseline_argument_errors(kw, message):  # where the config is made, before any data is read
    with pytest.raises(UserError, match=message):
        PruneConfig(prune_rate=0.3, train=TrainConfig(**FAST), **kw)
