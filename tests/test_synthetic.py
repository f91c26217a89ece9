"""The synthetic low-activity population (DESIGN.md 4.2): layout, determinism, sparsity, low
activity, long-tail vocabularies whose words carry the latent state, labels, atomicity."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scaletot_features.data import synthetic
from scaletot_features.data.io import parquet_files, read_table
from scaletot_features.dataset import SCHEMA_VERSION, DatasetLayout
from scaletot_features.data.labels import derive_labels, label_schema
from scaletot_features.data.synthetic import (
    PRESENCE,
    events_schema,
    generate_population,
    latent_marginals,
    latent_schema,
)
from scaletot_features.data.vocab import DEVICE_MODELS, INTEREST_TAGS, OCCUPATIONS
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
from scaletot_features.taxonomy import DEFAULT_TAXONOMY

USERS = 3_000
CHUNK = 1_000
TABLES = ("profiles", "events", "labels", "latent")


def _gen(out: Path, users: int = USERS, chunk_size: int = CHUNK, seed: int = 0, **kw) -> dict:
    return generate_population(out, users=users, seed=seed, chunk_size=chunk_size, progress=False, **kw)


@pytest.fixture(scope="module")
def pop(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    _gen(out)
    return out


@pytest.fixture(scope="module")
def frames(pop) -> dict[str, pd.DataFrame]:
    lay = DatasetLayout(pop)
    return {t: read_table(getattr(lay, t)).to_pandas() for t in TABLES}


@pytest.fixture(scope="module")
def joined(frames) -> pd.DataFrame:
    return (frames["latent"].merge(frames["profiles"], on="user_id")
            .merge(frames["labels"], on="user_id"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Layout and schemas
# ---------------------------------------------------------------------------------------------
def test_layout_schemas_and_manifest(pop):
    lay = DatasetLayout(pop)
    expected = {
        "profiles": DEFAULT_PROFILE_SCHEMA.arrow_schema(),
        "events": events_schema(),
        "labels": label_schema(30),
        "latent": latent_schema(DEFAULT_TAXONOMY),
    }
    for table, schema in expected.items():
        files = parquet_files(getattr(lay, table))
        assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
        for f in files:
            assert pq.read_schema(f).equals(schema, check_metadata=False), (table, f)
    assert latent_schema().names == ["user_id", *DEFAULT_TAXONOMY.type_names]
    from scaletot_features.data.ingest import EVENTS_SCHEMA
    assert events_schema().equals(EVENTS_SCHEMA)  # generated and ingested events read alike

    m = json.loads(lay.manifest.read_text())
    assert m["schema_version"] == SCHEMA_VERSION and m["kind"] == "synthetic"
    assert m["users"] == USERS and m["seed"] == 0 and m["horizon_days"] == 30
    assert m["label_names"] == ["lt30", "revenue_30"]
    assert m["events"] == sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(lay.events))
    assert m["parts"] == {t: 3 for t in TABLES}
    assert m["taxonomy_fingerprint"] == DEFAULT_TAXONOMY.fingerprint()
    assert m["profile_schema"] == DEFAULT_PROFILE_SCHEMA.model_dump(mode="json")
    assert m["reference_null_rates"] == pytest.approx(
        {f.name: 0.0 if f.required else 1 - PRESENCE[f.name] for f in DEFAULT_PROFILE_SCHEMA.fields})
    assert m["reference_domains"]["city_tier"] == list(DEFAULT_PROFILE_SCHEMA.field("city_tier").domain)
    assert set(m["reference_domains"]) == {"acquisition_channel", "gender", "city_tier"}
    # no scratch directories left beside the dataset
    assert [p.name for p in pop.parent.iterdir()] == [pop.name]


def test_ids_unique_and_events_belong_to_their_chunk(pop, frames):
    ids = frames["profiles"].user_id
    assert ids.is_unique and sorted(ids) == list(range(1, USERS + 1))
    assert frames["latent"].user_id.tolist() == ids.tolist()
    assert frames["labels"].user_id.tolist() == sorted(ids)
    lay = DatasetLayout(pop)
    for pf, ef in zip(parquet_files(lay.profiles), parquet_files(lay.events)):
        p_ids = set(pq.read_table(pf, columns=["user_id"]).column(0).to_pylist())
        ev = pq.read_table(ef).to_pandas()
        assert set(ev.user_id) <= p_ids  # a chunk's users have all their events in that chunk
        keys = list(zip(ev.user_id, ev.timestamp))
        assert keys == sorted(keys)  # sorted by (user_id, timestamp)


def test_profile_values_respect_the_schema(frames):
    p = frames["profiles"]
    assert p.acquisition_channel.notna().all() and p.first_day_sessions.notna().all()
    for name in ("acquisition_channel", "gender", "city_tier"):
        domain = set(DEFAULT_PROFILE_SCHEMA.field(name).domain)
        assert set(p[name].dropna()) <= domain
    age = p.age.dropna()
    assert age.between(13, 100).all() and (age == age.round()).all()
    fds = p.first_day_sessions
    assert (fds >= 0).all() and (fds == fds.round()).all()
    assert fds.isin([0, 1, 2, 3]).mean() > 0.8  # a small count, mostly 0-3
    tags = p.interests.dropna()
    assert tags.map(len).between(1, 4).all()
    assert tags.map(lambda t: len(set(t)) == len(t)).all()
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert p.event_timestamp.between(start, start + pd.Timedelta(days=60)).all()


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(pop, tmp_path):
    again = tmp_path / "again"
    _gen(again)
    a, b = _files(pop), _files(again)
    assert a.keys() == b.keys() and len(a) == 4 * 3 + 1
    assert [k for k in a if a[k] != b[k]] == []

    other = tmp_path / "other"
    _gen(other, seed=1)
    c = _files(other)
    differing = [k for k in a if k.endswith(".parquet") and a[k] != c[k]]
    assert len(differing) == 12
    assert json.loads(c["manifest.json"])["seed"] == 1


def test_a_chunk_depends_only_on_seed_and_its_index(pop, tmp_path):
    smaller = tmp_path / "smaller"
    _gen(smaller, users=2 * CHUNK)
    for table in TABLES:
        for i in range(2):
            name = f"{table}/part-{i:05d}.parquet"
            assert (smaller / name).read_bytes() == (pop / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# Sparsity and low activity
# ---------------------------------------------------------------------------------------------
def test_profiles_are_sparse_with_the_design_null_rates(frames):
    p = frames["profiles"]
    optional = [f.name for f in DEFAULT_PROFILE_SCHEMA.optional]
    assert sorted(optional) == sorted(PRESENCE)
    n_present = sum(p[c].notna() for c in optional)
    assert (n_present <= 2).mean() >= 0.6
    assert (n_present == 0).mean() > 0.03  # some bare profiles
    for name, presence in PRESENCE.items():
        assert abs(p[name].isna().mean() - (1 - presence)) < 0.035, name


def test_outcomes_are_low_activity(frames):
    lab = frames["labels"]
    assert 1 <= lab.lt30.median() <= 3
    assert (lab.revenue_30 == 0).mean() >= 0.8
    assert (lab.revenue_30 > 0).mean() > 0.02  # but some payers
    assert lab.lt30.between(0, 30).all() and (lab.revenue_30 >= 0).all()
    assert lab.lt30.max() > 15  # a tail of habitual users


def test_outcomes_follow_the_latent_states(joined):
    lt = joined.groupby("retention_outlook").lt30.mean()
    assert lt["churn_risk"] < lt["casual"] < lt["habitual"]
    payer = joined.groupby("monetization_propensity").revenue_30.apply(lambda s: (s > 0).mean())
    assert payer["none"] == 0 and payer["occasional"] < payer["frequent"]
    # first-day sessions make day 0 active, so every user with sessions has lt30 >= 1
    assert (joined.loc[joined.first_day_sessions > 0, "lt30"] >= 1).all()
    rt = pd.crosstab(joined.acquisition_channel, joined.retention_outlook, normalize="index")
    assert rt.loc["referral", "habitual"] > rt.loc["rewards_offer", "habitual"]
    it = pd.crosstab(joined.acquisition_channel, joined.engagement_intent, normalize="index")
    assert it.loc["rewards_offer", "deal_seeking"] > 1.5 * it.drop("rewards_offer").deal_seeking.max()
    pi = pd.crosstab(joined.acquisition_channel, joined.primary_interest, normalize="index")
    assert (pi.loc["influencer", ["gaming", "entertainment"]].sum()
            > 1.3 * pi.drop("influencer")[["gaming", "entertainment"]].sum(axis=1).max())


def test_labels_equal_derive_labels_over_the_whole_tables(pop, frames):
    lay = DatasetLayout(pop)
    whole = derive_labels(read_table(lay.profiles), read_table(lay.events), 30).to_pandas()
    stored = frames["labels"].sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(whole.sort_values("user_id").reset_index(drop=True), stored)
    # events go past the horizon, so the horizon (not the data) cuts the label
    ev = frames["events"].merge(stored[["user_id", "first_seen"]], on="user_id")
    assert ((ev.timestamp - ev.first_seen) >= pd.Timedelta(days=30)).any()


# ---------------------------------------------------------------------------------------------
# Vocabularies: long tail, words that carry the state, noise
# ---------------------------------------------------------------------------------------------
def test_vocabulary_sizes_and_unique_texts():
    assert len(OCCUPATIONS) >= 300 and len(DEVICE_MODELS) >= 200 and len(INTEREST_TAGS) >= 150
    for vocab in (OCCUPATIONS, DEVICE_MODELS, INTEREST_TAGS):
        texts = [e.text for e in vocab]
        assert len(set(texts)) == len(texts)
        assert all(t.strip() == t and t for t in texts)


def test_long_tail_is_used(frames):
    occ = frames["profiles"].occupation.dropna()
    counts = Counter(occ)
    singletons = sum(1 for c in counts.values() if c == 1)
    assert len(counts) >= 200 and singletons >= 100
    assert max(counts.values()) / len(occ) < 0.08  # no occupation dominates
    dev = Counter(frames["profiles"].device_model.dropna())
    assert len(dev) >= 150 and sum(1 for c in dev.values() if c <= 2) >= 40
    tags = Counter(t for ts in frames["profiles"].interests.dropna() for t in ts)
    assert len(tags) >= 140 and sorted(tags.values())[len(tags) // 2] < 15  # median tag is rare


def test_words_carry_the_latent_state(joined):
    occ = joined.dropna(subset=["occupation"])
    retired = occ[occ.occupation.str.contains("retired")]
    assert len(retired) > 30 and (retired.life_stage == "retired").mean() > 0.6
    students = occ[occ.occupation.str.contains("student")]
    assert (students.life_stage == "student").mean() > 0.6
    gaming_tags = {t.text for t in INTEREST_TAGS if t.primary_interest == "gaming"}
    gamers = joined[joined.interests.map(lambda ts: ts is not None and bool(gaming_tags & set(ts)))]
    assert len(gamers) > 30 and (gamers.primary_interest == "gaming").mean() > 0.6
    dev = joined.dropna(subset=["device_model"])
    flagship = dev[dev.device_model.str.contains(r"Pro Max|Ultra|Fold")]
    budget = dev[dev.device_model.str.contains(r"Galaxy A0|Nokia|itel|Tecno|Infinix|Redmi \d")]
    # high spenders are a minority (~19%), so off-group noise dilutes the flagship signal
    assert len(flagship) > 30 and (flagship.spending_power == "high").mean() > 0.5
    assert (flagship.spending_power == "high").mean() > 2.5 * (joined.spending_power == "high").mean()
    assert (budget.spending_power == "low").mean() > 0.6
    age = joined.groupby("life_stage").age.mean()
    assert age["student"] < age["early_career"] < age["established"] < age["retired"]
    tier1 = pd.crosstab(joined.spending_power, joined.city_tier, normalize="index")["tier1"]
    assert tier1["low"] < tier1["medium"] < tier1["high"]


def test_profile_is_evidence_not_a_label(joined):
    """Off-group noise: the occupation's own meaning matches the latent state often, not always."""
    meaning = {o.text: (o.life_stage, o.spending_power) for o in OCCUPATIONS}
    occ = joined.dropna(subset=["occupation"])
    hit = [meaning[t] == (ls, sp) for t, ls, sp in zip(occ.occupation, occ.life_stage, occ.spending_power)]
    assert 0.75 < np.mean(hit) < 0.97
    dev_meaning = {d.text: d.spending_power for d in DEVICE_MODELS}
    dev = joined.dropna(subset=["device_model"])
    assert 0.75 < np.mean([dev_meaning[t] == s for t, s in zip(dev.device_model, dev.spending_power)]) < 0.97


# ---------------------------------------------------------------------------------------------
# Statistics: exact marginals, chunk size changes nothing beyond noise
# ---------------------------------------------------------------------------------------------
def _shares(s: pd.Series, values: list[str]) -> np.ndarray:
    return s.value_counts(normalize=True).reindex(values, fill_value=0.0).to_numpy()


def test_latent_marginals_match_the_network_and_not_the_chunk_size(frames, tmp_path):
    exact = latent_marginals()
    one = tmp_path / "one_chunk"
    _gen(one, chunk_size=USERS)
    lat_one = read_table(DatasetLayout(one).latent).to_pandas()
    lab_one = read_table(DatasetLayout(one).labels).to_pandas()
    for t in DEFAULT_TAXONOMY.type_names:
        values = DEFAULT_TAXONOMY[t].value_names
        want = np.array([exact[t][v] for v in values])
        assert want.sum() == pytest.approx(1.0)
        for lat in (frames["latent"], lat_one):
            assert np.abs(_shares(lat[t], values) - want).max() < 0.035, t
    lab = frames["labels"]
    assert abs(lab.lt30.mean() - lab_one.lt30.mean()) < 0.5  # sd of lt30 ~ 5: ~4 standard errors
    assert abs((lab.revenue_30 == 0).mean() - (lab_one.revenue_30 == 0).mean()) < 0.03
    # ... and the draws really differ (different chunking = different random streams)
    assert not frames["latent"].equals(lat_one)


# ---------------------------------------------------------------------------------------------
# Atomicity and refusals
# ---------------------------------------------------------------------------------------------
def test_existing_directory_refused_unless_overwrite(tmp_path):
    out = tmp_path / "data"
    _gen(out, users=200, chunk_size=100)
    before = _files(out)
    with pytest.raises(FileExistsError, match="already exists"):
        _gen(out, users=300, chunk_size=100, seed=3)
    assert _files(out) == before
    m = _gen(out, users=300, chunk_size=100, seed=3, overwrite=True)
    assert m["users"] == 300 and json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert len(parquet_files(out / "profiles")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failure_mid_run_leaves_nothing(tmp_path, monkeypatch):
    real = synthetic.derive_labels
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in chunk 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "derive_labels", failing)
    out = tmp_path / "parent" / "data"
    with pytest.raises(RuntimeError, match="boom in chunk 2"):
        _gen(out, users=300, chunk_size=100)
    assert calls["n"] == 2
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no scratch directory either


@pytest.mark.parametrize("kwargs", [{"users": 0}, {"chunk_size": 0}, {"seed": -1},
                                    {"horizon_days": 0}])
def test_bad_arguments_refused(tmp_path, kwargs):
    args = {"users": 10, "chunk_size": 10, "seed": 0} | kwargs
    with pytest.raises(ValueError):
        generate_population(tmp_path / "x", progress=False, **args)
    assert not (tmp_path / "x").exists()
