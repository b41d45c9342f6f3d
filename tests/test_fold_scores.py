"""Making the K-1 unseen scores comparable before averaging (fold bias)."""
import numpy as np
import pytest
from scipy.stats import norm as normal

from unseen_fast.fold_scores import SCORE_NORMS, combine_scores, kept_share_per_fold, model_report


def unseen_mask(fold, folds):
    return np.stack([fold != k for k in range(folds)])


def reference(per_model, use, how):
    """Sample by sample, in float64, straight from the definitions."""
    values = np.full(per_model.shape, np.nan)
    for k in range(len(per_model)):
        scored = per_model[k, use[k]].astype(np.float64)
        for i in np.flatnonzero(use[k]):
            x = float(per_model[k, i])
            if how == "rank":  # mid-rank: (below + (equal + 1) / 2 - 0.5) / n
                values[k, i] = ((scored < x).sum() + ((scored == x).sum() + 1) / 2 - 0.5) / len(scored)
            elif how == "zscore":
                values[k, i] = (x - scored.mean()) / scored.std()
            else:
                values[k, i] = x
    mean = np.array([values[use[:, i], i].mean() for i in range(per_model.shape[1])])
    return normal.cdf(mean) if how == "zscore" else mean


@pytest.mark.parametrize("how", SCORE_NORMS)
def test_combine_matches_the_definition(how):
    rng = np.random.default_rng()
    folds, n = 4, 301
    fold = rng.integers(0, folds, n)
    per_model = rng.gamma(2.0, 1.0, (folds, n)).astype(np.float32)
    per_model[:, :40] = np.ceil(per_model[:, :40])  # ties; ceil keeps them > 0 as real importances are
    use = unseen_mask(fold, folds)
    per_model[~use] = np.nan  # what a scoring pass leaves where a model did not score
    got = combine_scores(per_model, use, how)
    assert got.dtype == np.float32 and got.shape == (n,)
    assert np.allclose(got, reference(per_model, use, how), rtol=1e-5, atol=1e-6)
    assert (got > 0).all()  # importances stay positive for the normalization that follows


def test_one_model_keeps_the_raw_scores():
    scores = np.random.default_rng(1).random((1, 50)).astype(np.float32)
    use = np.ones((1, 50), dtype=bool)
    for how in SCORE_NORMS:
        assert np.array_equal(combine_scores(scores, use, how), scores[0])


def test_a_miscalibrated_model_biases_folds_unless_normalized():
    """Model 0 is more uncertain about everything (+1 on every score): the
    raw mean then favours the folds model 0 scored; rank and z-score
    normalization keep every fold's share within sampling noise."""
    rng = np.random.default_rng(7)
    folds, n, keep = 4, 4000, 0.5
    fold = rng.permutation(np.arange(n) % folds)
    difficulty = rng.random(n)
    per_model = difficulty + 0.3 * rng.standard_normal((folds, n))
    per_model[0] += 1.0
    use = unseen_mask(fold, folds)
    noise = 3 * np.sqrt(keep * (1 - keep) / (n / folds))
    for how, biased in (("none", True), ("rank", False), ("zscore", False)):
        scores = combine_scores(per_model, use, how)
        kept = np.zeros(n, dtype=bool)
        kept[np.argsort(-scores, kind="stable")[:int(n * keep)]] = True
        shares = np.array(kept_share_per_fold(fold, kept, folds))
        assert (np.abs(shares - keep).max() > noise) == biased, (how, shares)
        # and the difficulty still decides: kept samples are the harder ones
        assert difficulty[kept].mean() > difficulty[~kept].mean() + 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown score normalization 'minmax'"):
        combine_scores(np.zeros((2, 3)), np.ones((2, 3), dtype=bool), "minmax")
    with pytest.raises(ValueError, match="differ in shape"):
        combine_scores(np.zeros((2, 3)), np.ones((3, 2), dtype=bool), "rank")


def test_model_report_counts_only_scored_samples():
    correct = np.array([1, 0, np.nan, 1, np.nan], dtype=np.float32)
    report = model_report("fold1", 10, correct, "never seen")
    assert report == dict(model="fold1", trained_on=10, scored=3, scored_samples="never seen",
                          accuracy=pytest.approx(2 / 3))
