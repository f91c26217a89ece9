"""The teacher audit on the real tiny population, with chains built by hand so the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from scaletot_features.config import build_settings
from scaletot_features.data.io import read_table
from trainers.audit import audit_lines, audit_path, outcome_column, profile_matrix, teacher_audit

SETTINGS = build_settings("tiny")
TAX = SETTINGS.taxonomy()


def _chains(labels: pa.Table, probs_for) -> pa.Table:
    """One chain row per labelled user; every state's distribution comes from ``probs_for``."""
    cols: dict = {"user_id": labels.column("user_id")}
    for t in TAX.types:
        dists = [probs_for(t, row) for row in labels.to_pylist()]
        cols[f"{t.name}_probs"] = pa.array(dists, pa.list_(pa.float64()))
    return pa.table(cols)


def _by_outcome(t, row) -> list[float]:
    """States that read the outcome exactly: the expected index is monotone in it."""
    n = len(t.values)
    value = row["lt30"] if t.name in TAX.outcome_types["lt30"] else row["revenue_30"]
    top = min(int(value), n - 1) if t.name in TAX.outcome_types["lt30"] else (n - 1 if value > 0 else 0)
    p = np.full(n, 0.02)
    p[top] = 1 - 0.02 * (n - 1)
    return p.tolist()


def test_a_state_that_reads_the_outcome_ranks_it_and_the_report_is_written(population_copy) -> None:
    labels = read_table(population_copy / "labels").slice(0, 300)
    report = teacher_audit(population_copy, SETTINGS, _chains(labels, _by_outcome))
    assert report["available"] and report["users"] == 300
    assert json.loads(audit_path(population_copy).read_text()) == report
    lt = report["outcomes"]["lt30"]
    for t in TAX.outcome_types["lt30"]:
        assert lt["states"][t]["spearman_expected"] > 0.8 and lt["states"][t]["spearman_cv"] > 0.8
    assert -1 <= lt["profile_ridge_cv"] <= 1
    text = "\n".join(audit_lines(report))
    assert "ridge on the profile" in text and "retention_outlook" in text


def test_a_blind_teacher_carries_no_signal(population_copy) -> None:
    labels = read_table(population_copy / "labels").slice(0, 300)
    uniform = teacher_audit(population_copy, SETTINGS,
                            _chains(labels, lambda t, _: [1 / len(t.values)] * len(t.values)))
    for entry in uniform["outcomes"].values():
        for m in entry["states"].values():  # a constant score has no rank correlation
            assert m["spearman_expected"] is None and m["spearman_cv"] is None


def test_nothing_to_audit_is_said_not_failed(population_copy) -> None:
    labels = read_table(population_copy / "labels").slice(0, 5)
    report = teacher_audit(population_copy, SETTINGS, _chains(labels, _by_outcome))
    assert not report["available"] and "only 5" in report["reason"]
    assert "skipped" in audit_lines(report)[0]


def test_outcome_names_follow_the_horizon() -> None:
    assert outcome_column("lt30", 30, ["lt30", "revenue_30"]) == "lt30"
    assert outcome_column("lt30", 90, ["lt90", "revenue_90"]) == "lt90"
    assert outcome_column("revenue_30", 90, ["lt90", "revenue_90"]) == "revenue_90"
    assert outcome_column("churn", 30, ["lt30", "revenue_30"]) is None


def test_profile_matrix_one_hot_numbers_with_missing_flags_and_words() -> None:
    schema = SETTINGS.profile_schema()
    rows = [{"acquisition_channel": "referral", "first_day_sessions": 2.0, "age": None,
             "occupation": "retired teacher", "interests": ["gardening"]},
            {"acquisition_channel": "app_store", "first_day_sessions": 0.0, "age": 30.0,
             "occupation": None, "interests": None}]
    x = profile_matrix(rows, schema)
    assert x.shape[0] == 2 and np.isfinite(x).all()
    channel = schema.field("acquisition_channel").domain
    assert x[0, :len(channel)].tolist() == [float(c == "referral") for c in channel]
    assert x[1, channel.index("app_store")] == 1 and not np.allclose(x[0], x[1])


@pytest.mark.parametrize("n", [10, 37])
def test_the_fold_ridge_recovers_a_linear_signal(n: int) -> None:
    from trainers.audit import _oof_ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.01 * rng.normal(size=n)
    pred = _oof_ridge(x, y)
    assert pred.shape == y.shape and np.corrcoef(pred, y)[0, 1] > 0.9


def test_a_labels_file_outcome_is_audited_by_name_or_the_skip_says_what_to_name(
        tiny_population, tmp_path) -> None:
    """A labels-file dataset has no lt30 / revenue_30: the audit reads the outcome the taxonomy's
    outcome_types names (its own label column), and with the default taxonomy it says so."""
    import pyarrow.parquet as pq
    import yaml

    from scaletot_features.data.ingest import ingest
    from scaletot_features.taxonomy import DEFAULT_TAXONOMY

    events_labels = read_table(tiny_population / "labels").slice(0, 300)
    income = pa.table({"user_id": events_labels.column("user_id"),
                       "annual_income": pa.compute.add(events_labels.column("revenue_30"), 1.0)})
    pq.write_table(income, tmp_path / "labels.parquet")
    data = tmp_path / "mine"
    ingest(tiny_population / "profiles", None, data, labels=tmp_path / "labels.parquet")
    chains = _chains(events_labels, _by_outcome)

    skipped = teacher_audit(data, SETTINGS, chains)
    assert not skipped["available"]
    assert "outcome_types" in skipped["reason"] and "['annual_income']" in skipped["reason"]

    own = DEFAULT_TAXONOMY.model_dump(mode="json")
    own["outcome_types"] = {"annual_income": ["monetization_propensity", "spending_power"]}
    (tmp_path / "taxonomy.yaml").write_text(yaml.safe_dump(own))
    settings = build_settings("tiny", {"taxonomy_path": str(tmp_path / "taxonomy.yaml")})
    report = teacher_audit(data, settings, chains)
    assert report["available"] and report["users"] == 300
    entry = report["outcomes"]["annual_income"]
    assert entry["label_column"] == "annual_income"
    # monetization_propensity's distribution was built from the revenue: it ranks the income
    assert entry["states"]["monetization_propensity"]["spearman_expected"] > 0.5


def test_a_labels_file_outcome_left_unknown_for_some_users_audits_the_others(
        tiny_population, tmp_path) -> None:
    """An empty cell in a labels file is an unknown outcome (ingest keeps it null): the audit
    ranks the states over the covered users whose outcome is known, instead of failing the whole
    `teach` at its end on NaN (as it did on the Lending Club loans, whose 0 incomes were unknown)."""
    import pyarrow.parquet as pq
    import yaml

    from scaletot_features.data.ingest import ingest
    from scaletot_features.taxonomy import DEFAULT_TAXONOMY

    events_labels = read_table(tiny_population / "labels").slice(0, 300)
    income = pa.compute.add(events_labels.column("revenue_30"), 1.0).to_pylist()
    unknown = set(range(0, 300, 7))  # 43 users without a known income
    income = [None if i in unknown else v for i, v in enumerate(income)]
    pq.write_table(pa.table({"user_id": events_labels.column("user_id"),
                             "annual_income": pa.array(income, pa.float64())}),
                   tmp_path / "labels.parquet")
    data = tmp_path / "mine"
    ingest(tiny_population / "profiles", None, data, labels=tmp_path / "labels.parquet")
    own = DEFAULT_TAXONOMY.model_dump(mode="json")
    own["outcome_types"] = {"annual_income": ["monetization_propensity", "spending_power"]}
    (tmp_path / "taxonomy.yaml").write_text(yaml.safe_dump(own))
    settings = build_settings("tiny", {"taxonomy_path": str(tmp_path / "taxonomy.yaml")})

    report = teacher_audit(data, settings, _chains(events_labels, _by_outcome))
    assert report["available"]
    entry = report["outcomes"]["annual_income"]
    assert entry["users"] == 300 - len(unknown)
    assert entry["profile_ridge_cv"] is None or -1 <= entry["profile_ridge_cv"] <= 1
    assert entry["states"]["monetization_propensity"]["spearman_expected"] > 0.5

    # every covered user's income unknown: said, not failed
    pq.write_table(pa.table({"user_id": events_labels.column("user_id"),
                             "annual_income": pa.nulls(300, pa.float64())}),
                   tmp_path / "none.parquet")
    ingest(tiny_population / "profiles", None, tmp_path / "none",
           labels=tmp_path / "none.parquet")
    report = teacher_audit(tmp_path / "none", settings, _chains(events_labels, _by_outcome))
    assert not report["available"]
    assert "only 0 covered users have a known annual_income" in \
        report["outcomes"]["annual_income"]["reason"]
