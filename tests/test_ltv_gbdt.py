"""Row A-gbdt (trainers/ltv_gbdt.py): boosted trees on the profile, real scikit-learn, no mocks.

The expectation test draws its own zero-inflated lognormal population over a three-field
schema (so the truth is known); the rest fit the tiny synthetic population's profiles.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scaletot_features.config import LTVTarget
from scaletot_features.data.io import read_table
from scaletot_features.ltv.metrics import normalized_gini
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA, FieldKind, ProfileField, ProfileSchema
from trainers.ltv import LTVModel, validation_split
from trainers.ltv_gbdt import GBDTLTVModel, smearing_factor, tree_matrix

REV, ACT = (LTVTarget(name="revenue_30", kind="ziln"),
            LTVTarget(name="lt30", kind="hurdle_count", max=30))
TARGETS = [REV, ACT]


def _labels(rev: np.ndarray, act: np.ndarray) -> dict[str, np.ndarray]:
    return {"revenue_30": rev, "lt30": act}


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
    model = GBDTLTVModel(SCHEMA, targets=[REV], max_iter=200, learning_rate=0.1, seed=0)
    assert model.fit(fit_x, {"revenue_30": fit_v}) is model
    assert model.smearing_rows_ == {"revenue_30": "validation"}
    pred = model.predict(test_x)["revenue_30"]
    smearing = model.smearing_["revenue_30"]
    # tolerance from the two sampling errors: the test sample's mean, and the smearing factor's
    # (a mean of exp(e) over the validation payers; e ~ N(0, sigma^2) has relative sd
    # sqrt(exp(sigma^2) - 1)); the fitted p and log-mean add less than either
    val_payers = int((fit_v[model.validation_index_] > 0).sum())
    mean = test_v.mean()
    se = np.sqrt(test_v.var(ddof=1) / len(test_v)
                 + (mean * np.sqrt(np.exp(sigma ** 2) - 1) / np.sqrt(val_payers)) ** 2)
    assert abs(pred.value.mean() - mean) <= 3 * se, (pred.value.mean(), mean, se)
    # the median (no smearing) is exp(-sigma^2 / 2) = 0.61 of the mean: the test sees the difference
    assert abs(pred.value.mean() / smearing - mean) > 3 * se
    assert smearing == pytest.approx(np.exp(sigma ** 2 / 2), rel=0.15)
    payers = (test_v > 0).mean()
    assert abs(pred.score.mean() - payers) <= 3 * np.sqrt(payers * (1 - payers) / len(test_v))
    # and it ranks: the truth depends on x0 (who pays) and x1 (how much)
    assert normalized_gini(test_v, pred.value) > 0.2


def test_a_lognormal_target_is_a_log_regressor_with_smearing():
    # income-like: always positive, lognormal(0.5 x1 + 0.4 [c = b], sigma); no gate, no AUC score
    sigma = 0.8
    fit_x, _ = _zero_inflated(8_000, 2, sigma)
    test_x, _ = _zero_inflated(4_000, 3, sigma)
    rng = np.random.default_rng(7)

    def income(t: pa.Table) -> np.ndarray:
        x1, c = t.column("x1").to_numpy(), np.asarray(t.column("c").to_pylist())
        return np.exp(0.5 * x1 + 0.4 * (c == "b") + sigma * rng.normal(size=t.num_rows))

    fit_y, test_y = income(fit_x), income(test_x)
    target = LTVTarget(name="annual_income", kind="lognormal")
    model = GBDTLTVModel(SCHEMA, targets=[target], max_iter=100, learning_rate=0.1).fit(
        fit_x, {"annual_income": fit_y})
    pred = model.predict(test_x)["annual_income"]
    assert pred.score is None and (pred.value > 0).all()
    se = test_y.std() / np.sqrt(len(test_y))
    assert abs(pred.value.mean() - test_y.mean()) <= 4 * se + 0.03 * test_y.mean()
    assert model.smearing_["annual_income"] == pytest.approx(np.exp(sigma ** 2 / 2), rel=0.15)
    assert set(model.summary()["iterations"]) == {"annual_income.value"}
    assert normalized_gini(test_y, pred.value) > 0.2
    with pytest.raises(ValueError, match="annual_income.*> 0"):
        model.fit(fit_x, {"annual_income": np.where(np.arange(len(fit_y)) == 0, 0.0, fit_y)})


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
    model = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, seed=1).fit(
        profiles.take(pa.array(idx)), _labels(rev[idx], act[idx]))
    out = model.predict(profiles.take(pa.array(test)))
    revenue, active = out["revenue_30"], out["lt30"]
    assert np.all(revenue.value >= 0) and np.all((revenue.score >= 0) & (revenue.score <= 1))
    assert np.all((active.value >= 0) & (active.value <= 30))
    assert np.all((active.score >= 0) & (active.score <= 1))
    assert normalized_gini(act[test], active.value) > 0.3
    # the MLP's validation users, for the same seed and rows (so validation scores compare)
    np.testing.assert_array_equal(model.validation_index_, validation_split(profiles.take(pa.array(idx)), 0.1, 1)[1])
    mlp = LTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, epochs=1, seed=1).fit(
        profiles.take(pa.array(idx)), _labels(rev[idx], act[idx]))
    np.testing.assert_array_equal(model.validation_index_, mlp.validation_index_)
    s = model.summary()
    assert s["categorical_features"] == 3 and s["fit_seconds"] > 0
    assert all(1 <= n <= model.max_iter for n in s["iterations"].values())
    again = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, seed=1).fit(
        profiles.take(pa.array(idx)), _labels(rev[idx], act[idx]))
    np.testing.assert_array_equal(again.predict(profiles.take(pa.array(test)))["revenue_30"].value,
                                  revenue.value)
    with pytest.raises(ValueError, match="profile-only"):
        model.predict(profiles, np.ones((profiles.num_rows, 2)))


def test_tree_matrix_counts_frequent_tokens_and_marks_missing(frame):
    profiles, rev, act = frame
    model = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, max_tokens=4, max_iter=2).fit(
        profiles.slice(0, 300), _labels(rev[:300], act[:300]))
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
    model = GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, max_iter=5).fit(
        profiles.slice(0, n), _labels(np.zeros(n), np.zeros(n)))
    pred = model.predict(profiles.slice(0, n))
    assert (pred["revenue_30"].value == 0).all() and (pred["revenue_30"].score == 0).all()
    assert (pred["lt30"].value == 0).all() and (pred["lt30"].score == 0).all()
    assert model.summary()["iterations"] == {"revenue_30.payer": 0, "revenue_30.value": 0,
                                             "lt30.count": 0, "lt30.retained": 0}
    with pytest.raises(ValueError, match="one value per profile row"):
        GBDTLTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS).fit(
            profiles.slice(0, n), _labels(np.zeros(n - 1), np.zeros(n)))
