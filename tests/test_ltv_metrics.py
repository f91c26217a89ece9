"""LTV metrics on tiny inputs whose answers are known by hand."""

import math

import numpy as np
import pytest

from scaletot_features.ltv.metrics import (
    auc,
    decile_mape,
    decile_table,
    gain_curve,
    normalized_gini,
    payer_labels,
    retained_labels,
    spearman,
    summarize,
)

Y = np.array([0.0, 0.0, 1.0, 3.0, 10.0, 0.5, 0.0, 7.0])


# ---------- normalised Gini and the gain curve ----------

def test_perfect_ranking_has_gini_one_in_any_row_order():
    assert normalized_gini(Y, Y) == pytest.approx(1.0)
    perm = np.random.default_rng(0).permutation(Y.size)
    assert normalized_gini(Y[perm], Y[perm] * 2 + 1) == pytest.approx(1.0)


def test_constant_prediction_has_gini_exactly_zero():
    assert normalized_gini(Y, np.full(Y.size, 3.0)) == 0.0


def test_reversed_ranking_is_minus_one():
    assert normalized_gini(Y, -Y) == pytest.approx(-1.0)


def test_hand_computed_gini():
    # Perfect order [3, 1, 0]: shares .75, 1, 1 -> area (1/3)(.375 + .875 + 1) = .75, raw .5.
    # Model order [1, 3, 0]: shares .25, 1, 1 -> area (1/3)(.125 + .625 + 1) = 7/12, raw 1/6.
    assert normalized_gini([1.0, 3.0, 0.0], [0.9, 0.2, 0.1]) == pytest.approx((1 / 6) / 0.5)


def test_tied_predictions_average_over_their_orders():
    # y = [3, 1, 0], the first two tied: mean of the perfect (1) and swapped (1/3) orders.
    g = normalized_gini([3.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    assert g == pytest.approx(2 / 3)
    # ... and the row order of the tie does not matter.
    assert normalized_gini([1.0, 3.0, 0.0], [1.0, 1.0, 0.0]) == pytest.approx(g)


def test_gini_is_invariant_to_monotone_transforms():
    rng = np.random.default_rng(1)
    y = rng.lognormal(size=200) * (rng.random(200) < 0.3)
    pred = np.round(y + rng.normal(scale=2.0, size=200), 1)  # rounding creates ties
    g = normalized_gini(y, pred)
    assert -1 < g < 1 and g != 0
    for f in (np.exp, lambda v: v ** 3 + 5.0, lambda v: 1 / (1 + np.exp(-v))):
        assert normalized_gini(y, f(pred)) == pytest.approx(g, abs=1e-12)


def test_gini_undefined_when_nothing_to_rank():
    assert math.isnan(normalized_gini(np.zeros(5), np.arange(5.0)))
    assert math.isnan(normalized_gini(np.full(5, 2.0), np.arange(5.0)))
    with pytest.raises(ValueError, match="non-negative"):
        normalized_gini([-1.0, 2.0], [0.0, 1.0])


def test_gain_curve_points_and_interpolation():
    x, y = gain_curve([3.0, 1.0, 0.0], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(x, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(y, [0, 0.5, 1, 1])
    gx, gy = gain_curve(Y, -Y, num_points=11)
    assert gx.shape == gy.shape == (11,)
    assert gy[0] == 0.0 and gy[-1] == 1.0 and np.all(np.diff(gy) >= 0)
    with pytest.raises(ValueError, match="sums to 0"):
        gain_curve(np.zeros(3), np.arange(3.0))


# ---------- Spearman ----------

def test_spearman_extremes_and_ties():
    assert spearman(Y, np.exp(Y)) == pytest.approx(1.0)
    assert spearman(Y, -Y) == pytest.approx(-1.0)
    assert math.isnan(spearman(Y, np.ones(Y.size)))
    stats = pytest.importorskip("scipy.stats")
    pred = np.array([1, 1, 2, 5, 5, 0, 3, 3], dtype=float)
    assert spearman(Y, pred) == pytest.approx(stats.spearmanr(Y, pred).statistic)


# ---------- AUC ----------

def test_auc_perfect_random_reversed():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert auc(labels, scores) == 1.0
    assert auc(labels, -scores) == 0.0
    assert auc(labels, np.full(6, 0.4)) == 0.5
    assert auc(labels.astype(bool), scores) == 1.0


def test_auc_hand_computed_tie():
    # (pos .8, neg .8) -> 1/2; (pos .8, neg .1) -> 1; (pos .3, neg .8) -> 0; (pos .3, neg .1) -> 1.
    assert auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(2.5 / 4)


def test_auc_matches_sklearn_with_ties():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    labels = rng.random(300) < 0.2
    scores = np.round(labels + rng.normal(size=300), 1)
    assert auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))


def test_auc_one_class_and_bad_labels():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="binary"):
        auc([0, 2, 1], [0.1, 0.2, 0.3])


def test_binary_label_helpers():
    assert payer_labels([0.0, 0.01, 3.0]).tolist() == [False, True, True]
    assert retained_labels([0, 6, 7, 30], threshold=7).tolist() == [False, False, True, True]


# ---------- decile MAPE ----------

def test_decile_mape_zero_when_predictions_equal_decile_means():
    rng = np.random.default_rng(3)
    y = rng.lognormal(size=100)
    assert decile_mape(y, y) == pytest.approx(0.0, abs=1e-12)
    # Predictions tied at each decile's actual mean: still one bucket per decile, error 0.
    order = np.argsort(y)
    pred = np.empty(100)
    for j in range(10):
        members = order[10 * j: 10 * (j + 1)]
        pred[members] = y[members].mean()
    table = decile_table(y, pred)
    assert table.bucket.tolist() == list(range(10)) and table.count.tolist() == [10] * 10
    assert decile_mape(y, pred) == pytest.approx(0.0, abs=1e-12)


def test_decile_mape_hand_computed():
    # 2 buckets: {1, 1} predicted {1, 2} -> |1.5 - 1| / 1 = .5; {2, 2} predicted {3, 5} -> 1.
    assert decile_mape([1.0, 1.0, 2.0, 2.0], [1.0, 2.0, 3.0, 5.0], buckets=2) == pytest.approx(0.75)


def test_decile_with_zero_actual_mean_is_excluded():
    y, pred = [0.0, 0.0, 2.0, 2.0], [0.1, 0.3, 1.0, 3.0]
    table = decile_table(y, pred, buckets=2)
    assert math.isnan(table.ape[0]) and table.ape[1] == 0.0
    assert decile_mape(y, pred, buckets=2) == 0.0
    assert math.isnan(decile_mape(np.zeros(4), [0.1, 0.2, 0.3, 0.4]))


def test_constant_prediction_is_one_bucket():
    table = decile_table(Y, np.ones(Y.size))
    assert table.count.tolist() == [Y.size]
    assert table.pred_mean[0] == 1.0 and table.true_mean[0] == pytest.approx(Y.mean())


# ---------- summarize and input errors ----------

def test_summarize_combines_the_metrics():
    pred = np.array([0.1, 0.2, 1.5, 2.0, 9.0, 0.4, 0.0, 8.0])
    s = summarize(Y, pred)
    assert s["n"] == 8 and s["positive_rate"] == pytest.approx(5 / 8)
    assert s["gini"] == pytest.approx(normalized_gini(Y, pred))
    assert s["spearman"] == pytest.approx(spearman(Y, pred))
    assert s["auc"] == pytest.approx(auc(Y > 0, pred))
    assert s["decile_mape"] == pytest.approx(decile_mape(Y, pred))
    assert s["deciles_zero_actual"] == 3  # the three zero-revenue rows rank lowest, one per bucket
    retained = summarize(Y, pred, auc_threshold=3.0, auc_scores=-pred)
    assert retained["positive_rate"] == pytest.approx(3 / 8) and retained["auc"] == 0.0
    # a positive value (a lognormal target) has no class to separate: no AUC at all
    plain = summarize(Y + 1.0, pred, with_auc=False)
    assert "auc" not in plain and plain["gini"] == pytest.approx(normalized_gini(Y + 1.0, pred))


@pytest.mark.parametrize("fn", [normalized_gini, spearman, auc, decile_mape, summarize, gain_curve])
def test_clear_errors_on_bad_input(fn):
    with pytest.raises(ValueError, match="differ in length"):
        fn([1.0, 0.0, 1.0], [0.5, 0.2])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="NaN"):
        fn([1.0, 0.0, 1.0], [0.5, float("nan"), 0.1])
