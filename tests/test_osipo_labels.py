"""OSIPO on a labels file's own outcomes: buckets read off the training users' quantiles.

A dataset ingested with ``--labels`` (an ``annual_income`` column, some cells empty, some users
without a row) whose taxonomy keys ``outcome_types`` by that column runs SFT then OSIPO with the
tiny random model; its buckets are the quantile cut points of the training users' known incomes
(``reasoning/demonstrations.outcome_cuts``), held-out users' incomes never move them, an
event-derived dataset keeps the fixed defaults, and a bad ``student.outcome`` is refused before
any model loads. Real ingest, real teacher and student stages; nothing mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from scaletot_features.config import build_settings
from scaletot_features.data.ingest import ingest
from scaletot_features.data.io import read_table
from scaletot_features.dataset import DatasetLayout, student_manifest
from scaletot_features.reasoning.demonstrations import outcome_bins
from trainers.osipo_reward import DEFAULT_OUTCOME_BUCKETS, outcome_reward
from trainers.student_stage import (
    OutcomePlan,
    osipo_config,
    osipo_records,
    outcome_buckets,
    resolve_osipo_outcome,
    student_paths,
    train_student,
)
from trainers.teach import teach

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OUTCOME_TYPES = {"annual_income": ["spending_power", "life_stage"]}


def _taxonomy_file(d: Path) -> Path:
    """The packaged taxonomy with ``outcome_types`` keyed by the labels file's column."""
    from importlib import resources

    raw = yaml.safe_load(resources.files("scaletot_features.resources")
                         .joinpath("taxonomy.yaml").read_text())
    raw["outcome_types"] = OUTCOME_TYPES
    path = d / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _settings(taxonomy: Path, **student):
    return build_settings("tiny", {"teacher": {"model": "tiny-random"},
                                   "taxonomy_path": str(taxonomy), "student": student})


@pytest.fixture(scope="module")
def labelled(tiny_population, tmp_path_factory):
    """The tiny population's profiles with an income of their own from a labels file: 1 in 5
    cells empty, 1 in 10 users without a row; taught by the tiny random teacher."""
    d = tmp_path_factory.mktemp("osipo_labels")
    profiles = read_table(DatasetLayout(tiny_population).profiles)
    pq.write_table(profiles, d / "profiles.parquet")
    ids = np.sort(profiles.column("user_id").to_numpy())
    rng = np.random.default_rng(0)
    keep = ids[rng.random(len(ids)) > 0.1]
    income = np.round(np.exp(10 + 0.6 * rng.normal(size=len(keep))), 2)
    cells = [f"{v}" if rng.random() > 0.2 else "" for v in income]
    (d / "labels.csv").write_text("user_id,annual_income\n" + "".join(
        f"{u},{c}\n" for u, c in zip(keep, cells)))
    data = d / "data"
    m = ingest(d / "profiles.parquet", None, data, labels=d / "labels.csv")
    assert m["label_source"] == "file" and m["label_names"] == ["annual_income"]
    tax = _taxonomy_file(d)
    s = _settings(tax)
    teach(data, s, progress=False)
    return data, tax


def _train_incomes(data: Path) -> np.ndarray:
    """The known incomes of the student's training users, from the split and the labels."""
    split = pq.read_table(DatasetLayout(data).student.split).to_pylist()
    train = [r["user_id"] for r in split if r["split"] == "train"]
    labels = {r["user_id"]: r["annual_income"] for r in read_table(DatasetLayout(data).labels)
              .to_pylist()}
    return np.array([labels[u] for u in train if labels.get(u) is not None], dtype=np.float64)


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    data, tax = labelled
    run = tmp_path_factory.mktemp("osipo_labels_run") / "data"
    shutil.copytree(data, run)
    s = _settings(tax)
    assert s.student.outcome == "auto"
    report = train_student(run, s, progress=False)
    return run, s, report


def test_a_labels_file_dataset_runs_osipo_on_quantile_buckets_of_its_training_users(trained):
    data, s, report = trained
    paths = student_paths(data)
    assert paths["osipo"].exists() and paths["chains"].exists()
    assert report["osipo"]["steps"] == s.student.osipo_max_steps == 2
    manifest = json.loads(student_manifest(paths["osipo"]).read_text())
    assert manifest["outcome"] == "labels"
    y = _train_incomes(data)
    split = pq.read_table(DatasetLayout(data).student.split).to_pylist()
    n_train = sum(r["split"] == "train" for r in split)
    assert 0 < len(y) < n_train  # some training users have no known income: no reward there
    tax = s.taxonomy()
    recorded = {b["type"]: b for b in manifest["outcome_buckets"]}
    assert list(recorded) == [t for t in tax.type_names if t in OUTCOME_TYPES["annual_income"]]
    for t, b in recorded.items():
        k = len(tax[t].value_names)
        assert b["label"] == "annual_income" and b["values"] == tax[t].value_names
        assert b["source"] == "training users' quantiles" and b["known_users"] == len(y)
        assert np.allclose(b["edges"], np.quantile(y, np.arange(1, k) / k), rtol=0, atol=1e-9)
    # the segment emphasis follows the outcome-bearing types
    w = manifest["segment_weights"]
    assert w["spending_power"] == w["life_stage"] == s.student.outcome_segment_weight
    assert w["retention_outlook"] == 1.0


def test_the_reward_reads_the_derived_buckets_and_skips_unknown_incomes(trained):
    data, s, _ = trained
    plan = resolve_osipo_outcome(data, s)
    assert plan == OutcomePlan("labels", {"spending_power": "annual_income",
                                          "life_stage": "annual_income"})
    rows = osipo_records(data, s, plan)
    buckets = outcome_buckets(s, plan, rows)
    args = osipo_config(s, plan=plan, buckets=buckets)
    assert args.outcome_labels == ("annual_income",) and args.active_buckets() == buckets
    tax = s.taxonomy()
    known = [r for r in rows if r["annual_income"] is not None]
    y = np.array([r["annual_income"] for r in known])
    for b in buckets:  # each training user falls in its quantile bin (outcome_bins' tie rule)
        bins = outcome_bins(y, len(b.values))
        assert [b.bucket(v) for v in y] == [b.values[i] for i in bins]
    low = {t.name: t.value_names[0] for t in tax.types}
    high = {**low, **{b.type: b.values[-1] for b in buckets}}
    top = max(known, key=lambda r: r["annual_income"])
    assert outcome_reward(high, top, tax, buckets) == 1.0
    assert outcome_reward(low, top, tax, buckets) == 0.0
    unknown = next(r for r in rows if r["annual_income"] is None)
    assert outcome_reward(high, unknown, tax, buckets) == 0.5  # no node informed: a tie
    assert outcome_reward(low, unknown, tax, buckets) == 0.5


def test_held_out_users_never_move_the_edges(trained, tmp_path):
    data, s, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    split = pq.read_table(DatasetLayout(copy).student.split).to_pylist()
    held = pa.array([r["user_id"] for r in split if r["split"] == "holdout"], pa.int64())
    train = [r["user_id"] for r in split if r["split"] == "train"]
    assert len(held) > 0

    def rewrite(user_ids: pa.Array, factor: float) -> None:
        for part in sorted(DatasetLayout(copy).labels.rglob("*.parquet")):
            t = pq.read_table(part)
            hit = pc.is_in(t.column("user_id"), value_set=user_ids)
            col = pc.if_else(hit, pc.multiply(t.column("annual_income"), factor),
                             t.column("annual_income"))
            pq.write_table(t.set_column(t.schema.get_field_index("annual_income"),
                                        "annual_income", col), part)

    plan = resolve_osipo_outcome(copy, s)
    before = outcome_buckets(s, plan, osipo_records(copy, s, plan))
    rewrite(held, 1000.0)  # the held-out users' incomes, far off the scale
    assert outcome_buckets(s, plan, osipo_records(copy, s, plan)) == before
    rewrite(pa.array(train, pa.int64()), 1000.0)  # the training users' do move them
    after = outcome_buckets(s, plan, osipo_records(copy, s, plan))
    assert [b.edges for b in after] != [b.edges for b in before]


def test_an_event_derived_dataset_keeps_the_default_buckets(tiny_population):
    s = build_settings("tiny")
    assert s.student.outcome == "auto"
    plan = resolve_osipo_outcome(tiny_population, s)
    assert plan == OutcomePlan("both", {})
    assert outcome_buckets(s, plan, []) == DEFAULT_OUTCOME_BUCKETS
    for args in (osipo_config(s), osipo_config(s, plan=plan, buckets=DEFAULT_OUTCOME_BUCKETS)):
        assert args.outcome == "both" and args.active_buckets() == DEFAULT_OUTCOME_BUCKETS
    for choice in ("lt30", "revenue_30"):
        s = build_settings("tiny", {"student": {"outcome": choice}})
        assert resolve_osipo_outcome(tiny_population, s) == OutcomePlan(choice, {})


@pytest.mark.parametrize("outcome, needles", [
    ("income", ["student.outcome 'income'", "['annual_income']"]),
    ("both", ["student.outcome 'both'", "['lt30', 'revenue_30']", "['annual_income']",
              "label_source: file"]),
    ("auto:default-taxonomy", ["student.outcome 'auto'", "outcome_types", "['annual_income']",
                               "student.osipo_max_steps: 0"]),
])
def test_a_bad_outcome_is_refused_before_any_model_loads(labelled, tmp_path, outcome, needles):
    data, tax = labelled
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    if outcome == "auto:default-taxonomy":  # no outcome_types key names annual_income
        s = build_settings("tiny", {"teacher": {"model": "tiny-random"}})
    else:
        s = _settings(tax, outcome=outcome)
    with pytest.raises(ValueError) as e:
        train_student(copy, s, progress=False)
    said = str(e.value)
    for needle in needles:
        assert needle in said, (needle, said)
    student = DatasetLayout(copy).student
    assert not student.split.exists() and not student.sft.exists()  # nothing trained
