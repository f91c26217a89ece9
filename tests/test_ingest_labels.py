"""Labels you already have: ``ingest --labels`` on hand-written CSV files, its refusals through the
command line (exit 2, the column or key named, nothing written), the Feast label view it feeds,
and ``evaluate`` on a tiny dataset whose only target is a lognormal income. Real DuckDB, real
Feast, real models; nothing mocked."""

from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from scaletot_features.config import LTVTarget, build_settings
from scaletot_features.data.ingest import IngestError, IngestWarning, ingest
from scaletot_features.data.io import read_json, read_table
from scaletot_features.dataset import DatasetLayout, file_label_schema
from test_cli import scaletot

UTC = timezone.utc

PROFILES_CSV = """\
user_id,event_timestamp,acquisition_channel,first_day_sessions,age
1,2026-01-01T00:00:00,referral,3,34
2,2026-01-05 12:00,app_store,0,
3,2026-01-10,paid_social,1,19
"""
LABELS_CSV = """\
user_id,label_timestamp,annual_income,visits_12m,note
3,2026-06-10T08:00:00Z,31000.5,0,
1,2026-06-01,52000,40,vip
"""
TARGETS = [LTVTarget(name="annual_income", kind="lognormal"),
           LTVTarget(name="visits_12m", kind="hurdle_count", max=365)]
TARGETS_YAML = ("ltv: {targets: [{name: annual_income, kind: lognormal}, "
                "{name: visits_12m, kind: hurdle_count, max: 365}]}\n")


def _write(d: Path, name: str, text: str) -> Path:
    path = d / name
    path.write_text(text)
    return path


def test_a_labels_file_becomes_the_labels_and_feast_serves_its_columns(tmp_path):
    from scaletot_features.store.repo import apply_repo, get_store
    from scaletot_features.store.retrieval import historical_features

    out = tmp_path / "mine"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = ingest(_write(tmp_path, "profiles.csv", PROFILES_CSV), None, out,
                   labels=_write(tmp_path, "labels.csv", LABELS_CSV), targets=TARGETS)
    assert any(isinstance(w.message, IngestWarning) and "note" in str(w.message) for w in caught)
    assert m["label_source"] == "file" and m["label_names"] == ["annual_income", "visits_12m"]
    assert m["events"] == 0 and m["ignored_columns"]["labels"] == ["note"]
    assert m["labels"] == {"users": 2, "label_timestamp": "file (empty cells: event_timestamp "
                                                          "+ 30 days)",
                           "unknown_values": {"annual_income": 0, "visits_12m": 0}}
    layout = DatasetLayout(out)
    assert not layout.events.exists()  # no events given: none written, none needed
    labels = read_table(layout.labels)
    assert labels.schema.equals(file_label_schema(["annual_income", "visits_12m"]))
    assert labels.to_pylist() == [  # sorted by user; user 2 has no label row
        {"user_id": 1, "label_timestamp": datetime(2026, 6, 1, tzinfo=UTC),
         "annual_income": 52000.0, "visits_12m": 40.0},
        {"user_id": 3, "label_timestamp": datetime(2026, 6, 10, 8, tzinfo=UTC),
         "annual_income": 31000.5, "visits_12m": 0.0}]

    # the gate passes it (its optional fields without a column are all missing, tags included)
    from validation.gate import validate_dataset

    settings = build_settings("tiny", {"ltv": {"targets": [t.model_dump() for t in TARGETS]}})
    assert [(r.suite, r.success) for r in validate_dataset(out, settings)] == [
        ("sparse_profile", True), ("labels", True)]

    # the Feast label view declares exactly the manifest's label columns, with their types
    apply_repo(out, settings)
    view = get_store(out).get_feature_view("ltv_labels")
    assert [(f.name, str(f.dtype)) for f in view.features] == [
        ("annual_income", "Float64"), ("visits_12m", "Float64")]
    just_before = pd.Timestamp("2026-06-01", tz="UTC") - pd.Timedelta(microseconds=1)
    entity = pd.DataFrame({"user_id": [1, 1, 3],
                           "event_timestamp": [just_before, pd.Timestamp("2026-06-01", tz="UTC"),
                                               pd.Timestamp("2026-07-01", tz="UTC")]})
    got = pd.read_parquet(historical_features(out, entity, "ltv_profile_only",
                                              tmp_path / "frame.parquet", with_labels=True))
    assert math.isnan(got["annual_income"][0])  # not known yet: point-in-time
    assert list(got["annual_income"][1:]) == [52000.0, 31000.5]
    assert list(got["acquisition_channel"]) == ["referral", "referral", "paid_social"]


def test_without_a_label_time_the_horizon_counts_from_the_profile(tmp_path):
    events = _write(tmp_path, "events.csv", "user_id,timestamp,value\n2,2026-01-06,3\n")
    profiles = _write(tmp_path, "profiles.csv", PROFILES_CSV)
    m = ingest(profiles, events, tmp_path / "mine", horizon_days=90,
               labels=_write(tmp_path, "labels.csv", "user_id,annual_income\n2,18000\n1,\n"))
    assert m["label_names"] == ["annual_income"] and m["events"] == 1  # events kept beside
    assert m["labels"]["label_timestamp"] == "event_timestamp + 90 days"
    assert m["labels"]["unknown_values"] == {"annual_income": 1}  # an empty cell: unknown
    rows = {r["user_id"]: r for r in read_table(tmp_path / "mine" / "labels").to_pylist()}
    assert rows[2]["label_timestamp"] == datetime(2026, 1, 5, 12, tzinfo=UTC) + timedelta(days=90)
    assert rows[2]["annual_income"] == 18000.0 and rows[1]["annual_income"] is None
    # an empty label_timestamp cell takes the same default; a filled one is kept
    m = ingest(profiles, None, tmp_path / "again", horizon_days=90,
               labels=_write(tmp_path, "labels2.csv", "user_id,label_timestamp,annual_income\n"
                                                      "2,,18000\n1,2026-03-01,20000\n"))
    assert m["labels"]["label_timestamp"] == "file (empty cells: event_timestamp + 90 days)"
    rows = {r["user_id"]: r for r in read_table(tmp_path / "again" / "labels").to_pylist()}
    assert rows[2]["label_timestamp"] == datetime(2026, 1, 5, 12, tzinfo=UTC) + timedelta(days=90)
    assert rows[1]["label_timestamp"] == datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize("labels, config, needles", [
    ("uid,annual_income\n1,5\n", "", ["missing required column(s) ['user_id']", "'uid'"]),
    ("user_id,annual_income\n1,lots\n", "", ["column 'annual_income'", "is not a number",
                                             "'lots'"]),
    ("user_id,annual_income\n1,5\n3,6\n1,7\n", "", ["column 'user_id'", "duplicate user ids",
                                                    "user_id 1 appears 2 times"]),
    ("user_id,annual_income\n1,5\n99,6\n", "", ["labels for user ids not in the profiles file",
                                                "user_id 99"]),
    ("user_id,annual_income,visits\n1,5,2\n",
     "ltv: {targets: [{name: annual_income, kind: lognormal}, {name: ltv_365, kind: ziln}]}\n",
     ["ltv.targets[1].name: 'ltv_365' is not a column of the labels file",
      "['user_id', 'annual_income', 'visits']"]),
    ("user_id,annual_income\n1,0\n", "ltv: {targets: [{name: annual_income, kind: lognormal}]}\n",
     ["column 'annual_income'", "lognormal targets are values > 0", "ltv.targets"]),
    ("user_id,label_timestamp,annual_income\n1,2025-12-01,5\n", "",
     ["column 'label_timestamp'", "is before the user's profile event_timestamp", "user_id 1"]),
    ("user_id,age\n1,5\n", "", ["column 'age'", "named like a profile field"]),
])
def test_a_bad_labels_file_is_refused_by_the_cli_naming_the_column(tmp_path, labels, config,
                                                                     needles):
    cfg = _write(tmp_path, "c.yaml", "preset: tiny\n" + config)
    out = tmp_path / "mine"
    r = scaletot("ingest", "--profiles", str(_write(tmp_path, "profiles.csv", PROFILES_CSV)),
                 "--labels", str(_write(tmp_path, "labels.csv", labels)), "--out", str(out),
                 "--config", str(cfg))
    assert r.returncode == 2, r.stderr
    said = " ".join(r.stderr.split())  # rich wraps long lines
    for needle in needles:
        assert needle in said, (needle, said)
    assert not out.exists() and not list(tmp_path.glob(".mine*"))  # nothing written


def test_the_labels_columns_are_checked_before_anything_else_is_read(tmp_path):
    # the profiles file does not even exist: the labels file's missing target is said first
    with pytest.raises(IngestError, match=r"ltv.targets\[0\].name: 'ltv_365'"):
        ingest(tmp_path / "no_such_profiles.parquet", None, tmp_path / "mine",
               labels=_write(tmp_path, "labels.csv", "user_id,annual_income\n1,5\n"),
               targets=[LTVTarget(name="ltv_365", kind="ziln")])
    with pytest.raises(IngestError, match="events table .* or a labels file"):
        ingest(tmp_path / "p.csv", None, tmp_path / "mine")


# --------------------------------------------------------------------------- evaluate


def _income_dataset(d: Path, n: int = 320) -> tuple[Path, Path]:
    """Profiles with two fields of one's own, and an income the plan and the seats explain."""
    rng = np.random.default_rng(0)
    plan = rng.choice(["free", "basic", "pro"], size=n, p=[0.5, 0.3, 0.2])
    seats = rng.integers(1, 50, size=n)
    income = np.exp(10.0 + 0.8 * (plan == "pro") + 0.3 * (plan == "basic")
                    + 0.01 * seats + 0.25 * rng.normal(size=n))
    start = datetime(2026, 1, 1)
    pd.DataFrame({"user_id": np.arange(1, n + 1),
                  "event_timestamp": [(start + timedelta(hours=int(h))).isoformat()
                                      for h in rng.integers(0, 24 * 30, size=n)],
                  "plan": plan, "seats": seats}).to_csv(d / "profiles.csv", index=False)
    pd.DataFrame({"user_id": np.arange(1, n + 1), "annual_income": income.round(2)}).to_csv(
        d / "labels.csv", index=False)
    cfg = d / "c.yaml"
    cfg.write_text(
        "preset: tiny\n"
        "data:\n  horizon_days: 365\n  profile_fields:\n"
        "    - {name: plan, kind: categorical, label: plan, required: true,"
        " domain: [free, basic, pro]}\n"
        "    - {name: seats, kind: numeric, label: seats, integer: true, min_value: 1}\n"
        "ltv:\n  targets: [{name: annual_income, kind: lognormal}]\n  low_activity: null\n")
    return cfg, d / "labels.csv"


def test_evaluate_models_a_lognormal_target_and_the_report_names_it(tmp_path):
    cfg, labels = _income_dataset(tmp_path)
    data = tmp_path / "mine"
    r = scaletot("ingest", "--profiles", str(tmp_path / "profiles.csv"), "--labels", str(labels),
                 "--out", str(data), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "labels ['annual_income'] from the labels file" in " ".join(r.stderr.split())
    assert scaletot("validate", str(data), "--config", str(cfg)).returncode == 0

    # without ltv.targets, an income has no default kind: refused before any work
    bare = _write(tmp_path, "bare.yaml", cfg.read_text().replace(
        "  targets: [{name: annual_income, kind: lognormal}]\n", ""))
    r = scaletot("evaluate", str(data), "--config", str(bare))
    assert r.returncode == 2 and "ltv.targets" in r.stderr and "annual_income" in r.stderr
    assert not (data / "eval" / "frame.parquet").exists()
    # OSIPO has no outcome on these labels: the student stage says so before training
    r = scaletot("train-student", str(data), "--config", str(cfg))
    assert r.returncode == 2 and "student.outcome" in r.stderr
    assert "student.osipo_max_steps: 0" in " ".join(r.stderr.split())

    r = scaletot("evaluate", str(data), "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((data / "eval" / "results.json").read_text())
    assert results["targets"] == [{"name": "annual_income", "kind": "lognormal", "max": None,
                                   "auc": None, "retained_threshold": None}]
    rows = {r["set"]: r for r in results["summary"]}
    assert set(rows) == {"A", "A-gbdt"}  # no text field: no B; no reasoning: no C, D
    for key in ("A", "A-gbdt"):
        assert rows[key]["all.annual_income.gini"] > 0.2  # the plan explains the income
        assert rows[key]["all.annual_income.spearman"] > 0.3
        assert "all.annual_income.auc" not in rows[key]  # a positive value has no AUC
    assert results["uplift_base"]["main"] == {"annual_income": rows["A"]["uplift_base"][
        "annual_income"]}
    md = (data / "eval" / "report.md").read_text()
    assert "annual_income Gini (all)" in md and "annual_income Spearman" in md
    for stale in ("lt30", "lt365", "revenue", "payer", "retained"):
        assert stale not in md, stale
    assert "annual_income Gini" in r.stdout
    pred = read_table(data / "eval" / "predictions.parquet")
    assert {"annual_income_pred", "annual_income_true"} <= set(pred.column_names)
    truth = pred.column("annual_income_true").to_numpy()
    guess = pred.column("annual_income_pred").to_numpy()
    # calibrated in level, not just in rank: the mean prediction is near the mean income
    assert abs(guess.mean() - truth.mean()) < 0.15 * truth.mean()
    assert read_json(data / "manifest.json")["label_source"] == "file"
    assert pa.types.is_float64(read_table(data / "labels").schema.field("annual_income").type)
