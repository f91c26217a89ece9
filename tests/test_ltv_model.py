"""The LTV model (trainers/ltv.py) and the comparison's pure pieces (trainers/evaluate.py).

The model is fitted on the real tiny synthetic population (its profiles and labels); nothing is
mocked. The end-to-end comparison through Feast runs in tests/test_cli.py (the tiny demo).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from scaletot_features.config import LTVTarget
from scaletot_features.data.io import read_table
from scaletot_features.encoder.featurizer import Featurizer
from scaletot_features.ltv.metrics import normalized_gini
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
from trainers.evaluate import (
    aggregate,
    best_profile_only,
    low_activity_mask,
    split_test,
)
from trainers.eval_features import EvaluationError, one_hot_states, reasoning_order
from trainers.ltv import LTVModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = [LTVTarget(name="revenue_30", kind="ziln"),
           LTVTarget(name="lt30", kind="hurdle_count", max=30)]


def _labels(rev: np.ndarray, act: np.ndarray) -> dict[str, np.ndarray]:
    return {"revenue_30": rev, "lt30": act}


@pytest.fixture(scope="module")
def frame(tiny_population):
    profiles = read_table(tiny_population / "profiles")
    labels = read_table(tiny_population / "labels")
    assert profiles.column("user_id").equals(labels.column("user_id"))
    return profiles, labels.column("revenue_30").to_numpy(), labels.column("lt30").to_numpy()


def _fit(frame, seed=0, dense=None, epochs=8):
    profiles, rev, act = frame
    n = profiles.num_rows
    train = np.arange(n) % 4 != 0
    idx = np.flatnonzero(train)
    model = LTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, epochs=epochs, seed=seed,
                     batch_size=256)
    fitted = model.fit(profiles.take(pa.array(idx)), _labels(rev[idx], act[idx]),
                       None if dense is None else dense[idx])
    test = np.flatnonzero(~train)
    return fitted, model.predict(profiles.take(pa.array(test)),
                                 None if dense is None else dense[test]), test


def test_fit_returns_self_and_predictions_are_in_range(frame):
    model, pred, test = _fit(frame)
    assert isinstance(model, LTVModel) and model.best_epoch_ >= 1 and model.history_
    assert set(model.history_[0]) == {"epoch", "revenue_30_loss", "lt30_loss"}
    revenue, active = pred["revenue_30"], pred["lt30"]
    assert np.all(revenue.value >= 0) and np.all((revenue.score >= 0) & (revenue.score <= 1))
    assert np.all((active.value >= 0) & (active.value <= 30))
    assert np.all((active.score >= 0) & (active.score <= 1))
    # the profile carries signal (first-day sessions, channel): the model ranks better than chance
    _, rev, act = frame
    assert normalized_gini(act[test], active.value) > 0.3
    assert normalized_gini(rev[test], revenue.value) > 0.1


def test_same_seed_same_model_and_another_seed_differs(frame):
    _, a, _ = _fit(frame, seed=3, epochs=3)
    _, b, _ = _fit(frame, seed=3, epochs=3)
    _, c, _ = _fit(frame, seed=4, epochs=3)
    np.testing.assert_array_equal(a["revenue_30"].value, b["revenue_30"].value)
    assert not np.allclose(a["revenue_30"].value, c["revenue_30"].value)


def test_a_lognormal_target_gets_a_two_logit_head_and_no_auc_score(frame):
    # income-like: a positive value the profile explains (first-day sessions), tiny fit
    profiles, _, _ = frame
    sessions = np.nan_to_num(profiles.column("first_day_sessions").to_numpy(zero_copy_only=False))
    rng = np.random.default_rng(0)
    income = np.exp(10.0 + 0.3 * np.minimum(sessions, 5) + 0.3 * rng.normal(size=len(sessions)))
    target = LTVTarget(name="annual_income", kind="lognormal")
    model = LTVModel(DEFAULT_PROFILE_SCHEMA, targets=[target], epochs=6, batch_size=256,
                     learning_rate=1e-2).fit(profiles, {"annual_income": income})
    assert [h.out_features for h in model.net_.heads] == [2]
    pred = model.predict(profiles)["annual_income"]
    assert pred.score is None and np.isfinite(pred.value).all() and (pred.value > 0).all()
    assert normalized_gini(income, pred.value) > 0.2
    with pytest.raises(ValueError, match="annual_income"):
        model.fit(profiles, {"annual_income": np.zeros(len(income))})


def test_dense_features_are_used_and_checked(frame):
    profiles, rev, act = frame
    # a dense column that IS the outcome: the model must exploit it
    leak = np.stack([np.log1p(rev), act.astype(float)], axis=1)
    _, pred, test = _fit(frame, dense=leak)
    assert normalized_gini(act[test], pred["lt30"].value) > 0.9
    model = LTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS, epochs=1).fit(
        profiles, _labels(rev, act), leak)
    with pytest.raises(ValueError, match="shape"):
        model.predict(profiles, leak[:, :1])
    # standardised dense inputs are clipped to +-5: one extreme user cannot blow up the ZILN mean
    far = leak.copy()
    far[0] = 1e6
    z = model._dense(far, len(far))
    assert float(z.abs().max()) == pytest.approx(5.0)
    assert np.isfinite(model.predict(profiles, far)["revenue_30"].value).all()
    bad = leak.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict(profiles, bad)
    with pytest.raises(ValueError, match="one value per profile row"):
        LTVModel(DEFAULT_PROFILE_SCHEMA, targets=TARGETS).fit(profiles, _labels(rev[:-1], act))


def test_features_take_equals_transforming_the_rows(frame):
    profiles, _, _ = frame
    fz = Featurizer.fit(profiles, DEFAULT_PROFILE_SCHEMA)
    idx = np.array([5, 0, 17, 17, 1999, 3])
    a = fz.transform(profiles).take(idx)
    b = fz.transform(profiles.take(pa.array(idx)))
    assert torch.equal(a.categorical, b.categorical) and torch.equal(a.numeric, b.numeric)
    for x, y in zip(a.bag_ids + a.bag_offsets + a.bag_empty, b.bag_ids + b.bag_offsets + b.bag_empty):
        assert torch.equal(x, y)


def test_split_never_tests_a_covered_user_and_is_order_free():
    ids = np.arange(1000, 3000)
    covered = ids[::7]
    test = split_test(ids, covered, 0.3, 0)
    assert not test[np.isin(ids, covered)].any()
    assert 0.2 < test.mean() < 0.3
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(split_test(ids[perm], covered, 0.3, 0), test[perm])


def test_reasoning_order_puts_covered_first_and_nests():
    ids = np.arange(500)
    covered = np.array([7, 300, 42])
    order = reasoning_order(ids, covered, 0)
    assert set(order[:3]) == set(covered) and sorted(order) == list(ids)
    np.testing.assert_array_equal(reasoning_order(ids[::-1], covered, 0), order)


def test_low_activity_predicate_and_its_error():
    t = pa.table({"first_day_sessions": [0.0, 2.0, None], "age": [20.0, None, 40.0]})
    np.testing.assert_array_equal(low_activity_mask(t, "first_day_sessions = 0"),
                                  [True, False, False])
    with pytest.raises(EvaluationError, match="ltv.low_activity 'no_such_field = 1'"):
        low_activity_mask(t, "no_such_field = 1")


def test_the_default_slice_is_left_out_where_its_column_is_missing_and_yours_must_evaluate():
    from rich.console import Console

    from scaletot_features.config import DEFAULT_LOW_ACTIVITY
    from scaletot_features.profile import FieldKind, ProfileField, ProfileSchema
    from trainers.evaluate import low_activity_predicate

    console = Console(record=True, width=200)
    theirs = ProfileSchema(fields=(ProfileField(name="emp_title", kind=FieldKind.text, label="emp_title"),
                                   ProfileField(name="emp_length", kind=FieldKind.numeric, label="emp_length")))
    assert low_activity_predicate(theirs, DEFAULT_LOW_ACTIVITY, console) is None
    said = console.export_text()
    assert "ltv.low_activity" in said and "emp_title" in said and "emp_length" in said
    assert low_activity_predicate(theirs, "emp_length < 1", console) == "emp_length < 1"
    assert low_activity_predicate(theirs, None, console) is None
    with pytest.raises(EvaluationError, match=r"ltv.low_activity 'tenure < 1'.*emp_title"):
        low_activity_predicate(theirs, "tenure < 1", console)
    assert low_activity_predicate(DEFAULT_PROFILE_SCHEMA, DEFAULT_LOW_ACTIVITY, console) == \
        DEFAULT_LOW_ACTIVITY


def test_evaluate_refuses_a_predicate_it_cannot_use_before_any_work(population_copy):
    from scaletot_features.config import build_settings
    from scaletot_features.dataset import DatasetLayout
    from trainers.evaluate import evaluate

    s = build_settings("tiny")
    s.ltv.low_activity = "no_such_column > 1"
    with pytest.raises(EvaluationError, match="ltv.low_activity 'no_such_column > 1'"):
        evaluate(population_copy, s, progress=False)  # no Feast repository yet: not reached
    assert not any(DatasetLayout(population_copy).eval.root.glob("frame*"))


def test_b_embeds_each_distinct_text_and_tag_string_once(tmp_path):
    from rich.console import Console

    from scaletot_features.profile import FieldKind, ProfileField, ProfileSchema
    from trainers.eval_features import profile_text_matrix, text_fields

    schema = ProfileSchema(fields=(
        ProfileField(name="age", kind=FieldKind.numeric, label="age"),
        ProfileField(name="occupation", kind=FieldKind.text, label="occupation"),
        ProfileField(name="interests", kind=FieldKind.tags, label="interests")))
    assert text_fields(schema) == ["occupation", "interests"]
    table = pa.table({"user_id": pa.array(range(5), pa.int64()),
                      "age": [20.0, 30.0, 40.0, None, 50.0],
                      "occupation": ["nurse", "nurse", "welder", None, "nurse"],
                      "interests": [["golf"], None, ["golf", "opera"], ["golf"], ["golf"]]})
    (tmp_path / "data").mkdir()
    matrix, seconds, distinct = profile_text_matrix(tmp_path / "data", table, schema,
                                                    Console(quiet=True), progress=False)
    assert matrix.shape == (5, 2 * 384) and seconds >= 0
    assert distinct == 2 + 2  # nurse, welder; "golf", "golf, opera"
    occupation, interests = matrix[:, :384], matrix[:, 384:]
    np.testing.assert_array_equal(occupation[0], occupation[1])  # same string, same vector
    assert not np.allclose(occupation[0], occupation[2])
    assert not occupation[3].any() and not interests[1].any()  # missing: zeros
    np.testing.assert_array_equal(interests[0], interests[3])
    assert np.linalg.norm(occupation[0]) == pytest.approx(1.0, rel=1e-3)  # MiniLM normalises


def test_one_hot_states_unknown_and_missing_are_zero():
    from scaletot_features.taxonomy import DEFAULT_TAXONOMY

    first = DEFAULT_TAXONOMY.types[0]
    cols = {t.name: [t.value_names[0], None, "not-a-value"] for t in DEFAULT_TAXONOMY.types}
    m = one_hot_states(pa.table(cols), DEFAULT_TAXONOMY)
    assert m.shape == (3, sum(len(t.value_names) for t in DEFAULT_TAXONOMY.types))
    assert m[0].sum() == len(DEFAULT_TAXONOMY.types) and m[1].sum() == 0 and m[2].sum() == 0
    assert m[0, 0] == 1 and first.value_names[0] == cols[first.name][0]


def _run(set_key, seed, gini, val_gini=None, block="main"):
    def one(g):
        return {t: {"n": 10, "positive_rate": 0.1, "gini": g, "spearman": 0.0, "auc": 0.5,
                    "decile_mape": 0.1} for t in ("revenue", "active")}

    run = {"block": block, "set": set_key, "label": set_key, "seed": seed, "train_users": 7,
           "metrics": {s: one(gini) for s in ("all", "low_activity")}}
    if val_gini is not None:
        run["validation"] = one(val_gini)
    return run


def test_aggregate_mean_std_and_paired_uplift():
    runs = [_run("A", 0, 0.40), _run("A", 1, 0.50), _run("C", 0, 0.45), _run("C", 1, 0.53)]
    rows = {r["set"]: r for r in aggregate(runs)}
    assert rows["A"]["all.revenue.gini"] == pytest.approx(0.45)
    assert rows["A"]["all.revenue.gini.std"] == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert rows["C"]["all.revenue.gini.uplift"] == pytest.approx(0.04)
    assert rows["C"]["all.revenue.gini.uplift_std"] == pytest.approx(np.std([0.05, 0.03], ddof=1))
    assert rows["A"]["all.revenue.gini.uplift"] == pytest.approx(0.0)


def test_uplift_is_over_the_best_profile_only_row_chosen_on_validation_users():
    # A-gbdt is better on the validation users, A on the test users: the base is A-gbdt (the
    # choice never looks at test metrics), and every other row's uplift is paired with it
    runs = [_run("A", 0, 0.50, val_gini=0.30), _run("A", 1, 0.52, val_gini=0.32),
            _run("A-gbdt", 0, 0.44, val_gini=0.40), _run("A-gbdt", 1, 0.46, val_gini=0.42),
            _run("C", 0, 0.47), _run("C", 1, 0.49),
            _run("C@12", 0, 0.45, block="sweep"), _run("C@12", 1, 0.47, block="sweep")]
    assert best_profile_only(runs, "revenue") == "A-gbdt"
    rows = {(r["block"], r["set"]): r for r in aggregate(runs)}
    c, a, g = rows[("main", "C")], rows[("main", "A")], rows[("main", "A-gbdt")]
    assert c["uplift_base"] == {"revenue": "A-gbdt", "active": "A-gbdt"}
    assert c["all.revenue.gini.uplift"] == pytest.approx(0.03)  # over A-gbdt, not -0.03 over A
    assert c["low_activity.revenue.gini.uplift"] == pytest.approx(0.03)
    assert a["all.revenue.gini.uplift"] == pytest.approx(0.06)  # A against the chosen base
    assert g["all.revenue.gini.uplift"] == pytest.approx(0.0)
    assert a["validation.revenue.gini"] == pytest.approx(0.31) and a["profile_only"]
    assert not c["profile_only"] and np.isnan(c["validation.revenue.gini"])
    # the sweep has no profile-only row of its own: it reads against the main block's choice
    assert rows[("sweep", "C@12")]["all.revenue.gini.uplift"] == pytest.approx(0.01)


def test_best_profile_only_falls_back_to_a_and_keeps_a_on_a_tie():
    no_val = [_run("A", 0, 0.5), _run("A-gbdt", 0, 0.6)]
    assert best_profile_only(no_val, "revenue") == "A"  # test metrics are never used
    tie = [_run("A", 0, 0.5, val_gini=0.4), _run("A-gbdt", 0, 0.6, val_gini=0.4)]
    assert best_profile_only(tie, "active") == "A"
    nan = [_run("A", 0, 0.5, val_gini=float("nan")), _run("A-gbdt", 0, 0.6, val_gini=0.1)]
    assert best_profile_only(nan, "revenue") == "A-gbdt"
    assert best_profile_only([_run("C", 0, 0.5)], "revenue") is None
