"""Row A-gbdt (trainers/ltv_gbdt.py): boosted trees on the profile, real scikit-learn, no mocks.

The expectation test draws its own zero-inflated lognormal population over a three-field
schema (so the truth is known); the rest fit the tiny synthetic population's profiles.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scaletot_features.data.io import read_table
from scaletot_features.ltv.metrics import normalized_gini
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA, FieldKind, ProfileField, ProfileSchema
from trainers.ltv import LTVModel, validation_split
from trainers.ltv_gbdt import GBDTLTVModel, smearing_factor, tree_matrix

SCHEMA = ProfileSchema(fields=(
    ProfileField(name="x0", kind=FieldKind.numeric, label="x0"),
    ProfileField(name="x1", kind=FieldKind.numeric, label="x1"),
    ProfileField(name="c", kind=FieldKind.categorical, label="c", domain=("a", "b")),
))


def _zero_inflated(n: int, seed: int, sigma: float) -> tuple[pa.Table, np.ndarray]:
    """value > 0 with p = sigmoid(x0 - 0.3), then lognormal(0.5 x1 + 0.4 [c = b], sigma)."""
    rng = np.random.default_rng(seed)
    x0, x1 = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["a", "b"], size=n)
    pay = rng.random(n) < 1 / (1 + np.exp(-(x0 - 0.3)))
    value = np.exp(0.5 * x1 + 0.4 * (c == "b") + sigma * rng.normal(size=n))
    ids = np.arange(n, dtype=np.int64) + seed * n  # the validation split is by user id
    return pa.table({"user_id": ids, "x0": x0, "x1": x1, "c": c}), np.where(pay, value, 0.0)


def test_zero_inflated_revenue_predicts_the_expectation_not_the_median():
    sigma = 1.0
    fit_x, fit_v = _zero_inflated(20_000, 0, sigma)
    test_x, test_v = _zero_inflated(10_000, 1, sigma)
    model = GBDTLTVModel(SCHEMA, max_iter=200, learning_rate=0.1, seed=0)
    assert model.fit(fit_x, fit_v, (fit_v > 0).astype(float)) is model
    assert model.smearing_rows_ == "validation"
    pred = model.predict(test_x)
    # tolerance from the two sampling errors: the test sample's mean, and the smearing factor's
    # (a mean of exp(e) over the validation payers; e ~ N(0, sigma^2) has relative sd
    # sqrt(exp(sigma^2) - 1)); the fitted p and log-mean add less than either
    val_payers = int((fit_v[model.validation_index_] > 0).sum())
    mean = test_v.mean()
    se = np.sqrt(test_v.var(ddof=1) / len(test_v)
                 + (mean * np.sqrt(np.exp(sigma ** 2) - 1) / np.sqrt(val_payers)) ** 2)
    assert abs(pred.revenue.mean() - mean) <= 3 * se, (pred.revenue.mean(), mean, se)
    # the median (no smearing) is exp(-sigma^2 / 2) = 0.61 of the mean: the test sees the difference
    assert abs(pred.revenue.mean() / model.smearing_ - mean) > 3 * se
    assert model.smearing_ == pytest.approx(np.exp(sigma ** 2 / 2), rel=0.15)
    payers = (test_v > 0).mean()
    assert abs(pred.payer_prob.mean() - payers) <= 3 * np.sqrt(payers * (1 - payers) / len(test_v))
    # and it ranks: the truth depends on x0 (who pays) and x1 (how much)
    assert normalized_gini(test_v, pred.revenue) > 0.2


def test_smearing_factor_is_the_mean_of_exp_residuals():
    assert smearing_factor(np.log([1.0, 2.0, 3.0])) == pytest.approx(2.0)
    assert smearing_factor(np.zeros(0)) == 1.0


@pytest.fixture(scope="module")
def frame(tiny_population):
    profiles = read_table(tiny_population / "profiles")
    labels = read_table(tiny_population / "labels")
    return profiles, labels.column("revenue_30").to_numpy(), labels.column("lt30").to_numpy()


def test_fit_on_the_profile_ranks_and_stays_in_range(frame):
    profiles, rev, act = frame
    train = np.arange(profiles.num_rows) % 4 != 0
    idx, test = np.flatnonzero(train), np.flatnonzero(~train)
    model = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, seed=1).fit(profiles.take(pa.array(idx)),
                                                              rev[idx], act[idx])
    pred = model.predict(profiles.take(pa.array(test)))
    assert np.all(pred.revenue >= 0) and np.all((pred.payer_prob >= 0) & (pred.payer_prob <= 1))
    assert np.all((pred.active >= 0) & (pred.active <= 30))
    assert np.all((pred.retained_prob >= 0) & (pred.retained_prob <= 1))
    assert normalized_gini(act[test], pred.active) > 0.3
    # the MLP's validation users, for the same seed and rows (so validation scores compare)
    np.testing.assert_array_equal(model.validation_index_, validation_split(profiles.take(pa.array(idx)), 0.1, 1)[1])
    mlp = LTVModel(DEFAULT_PROFILE_SCHEMA, epochs=1, seed=1).fit(profiles.take(pa.array(idx)),
                                                                 rev[idx], act[idx])
    np.testing.assert_array_equal(model.validation_index_, mlp.validation_index_)
    s = model.summary()
    assert s["categorical_features"] == 3 and s["fit_seconds"] > 0
    assert all(1 <= n <= model.max_iter for n in s["iterations"].values())
    again = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, seed=1).fit(profiles.take(pa.array(idx)),
                                                              rev[idx], act[idx])
    np.testing.assert_array_equal(again.predict(profiles.take(pa.array(test))).revenue,
                                  pred.revenue)
    with pytest.raises(ValueError, match="profile-only"):
        model.predict(profiles, np.ones((profiles.num_rows, 2)))


def test_tree_matrix_counts_frequent_tokens_and_marks_missing(frame):
    profiles, rev, act = frame
    model = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, max_tokens=4, max_iter=2).fit(
        profiles.slice(0, 300), rev[:300], act[:300])
    head = profiles.slice(0, 300)
    x, cat, names = tree_matrix(model.featurizer_, model.featurizer_.transform(head), 4)
    assert x.shape == (300, len(names)) and cat.sum() == 3
    age = names.index("age")
    np.testing.assert_array_equal(np.isnan(x[:, age]), _is_null(head.column("age")))
    tags = [i for i, n in enumerate(names) if n.startswith("interests=")]
    assert len(tags) == 4 and (x[:, tags] >= 0).all() and x[:, tags].sum() > 0
    assert (x[:, names.index("interests#tokens")] >= x[:, tags].sum(axis=1)).all()
    missing = x[:, names.index("interests#missing")] == 1
    assert missing.any() and (x[missing][:, tags] == 0).all()
    assert (x[missing, names.index("interests#tokens")] == 0).all()


def _is_null(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def test_no_payer_and_one_class_are_constant_not_a_crash(frame):
    profiles, _, _ = frame
    n = 200
    model = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, max_iter=5).fit(
        profiles.slice(0, n), np.zeros(n), np.zeros(n))
    pred = model.predict(profiles.slice(0, n))
    assert (pred.revenue == 0).all() and (pred.payer_prob == 0).all()
    assert (pred.active == 0).all() and (pred.retained_prob == 0).all()
    assert model.summary()["iterations"] == {"payer": 0, "value": 0, "active": 0, "retained": 0}
    with pytest.raises(ValueError, match="one value per profile row"):
        GBDTLTVModel(DEFAULT_PROFILE_SCHEMA).fit(profiles.slice(0, n), np.zeros(n - 1), np.zeros(n))
