"""The Feast repository: apply, materialize (with its gate), point-in-time retrieval, the live view.

Real Feast, real DuckDB offline store, real SQLite online store, real encoder artifact (random
weights: these tests check plumbing and consistency, not quality). One applied and materialized
dataset is shared by the module; tests that change data work on copies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
FEAST = str(Path(sys.executable).with_name("feast"))
USERS = 2_000
DIM = 16


def build_feature_dataset(out: Path, users: int = USERS, dim: int = DIM, seed: int = 0) -> Path:
    """A dataset directory with profiles, labels, an encoder artifact and its reasoning features.

    The encoder has random weights (seeded); ``embed_population`` (the real embed stage) writes
    DIR/features/reasoning_features from it, so batch and live features come from one function.
    """
    import torch

    from scaletot_features.config import build_settings
    from scaletot_features.data.io import read_table
    from scaletot_features.data.synthetic import generate_population
    from scaletot_features.encoder.artifact import save_encoder
    from scaletot_features.encoder.embed import embed_population
    from scaletot_features.encoder import Featurizer, NetworkShape, ProfileEncoderNet
    from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
    from scaletot_features.taxonomy import DEFAULT_TAXONOMY

    generate_population(out, users=users, seed=seed, chunk_size=max(1, users // 2), progress=False)
    featurizer = Featurizer.fit(read_table(out / "profiles"), DEFAULT_PROFILE_SCHEMA)
    torch.manual_seed(seed)
    net = ProfileEncoderNet(NetworkShape.for_featurizer(featurizer, DEFAULT_TAXONOMY, dim=dim,
                                                        hidden=32))
    save_encoder(out / "encoder", net, featurizer, DEFAULT_TAXONOMY)
    embed_population(out, build_settings("tiny"), engine="local", progress=False)
    return out


def copy_dataset(src: Path, dst: Path) -> Path:
    """A copy without the Feast repository (registry and online store belong to the original)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("feast", "feast_*"))
    return dst


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from scaletot_features.store.repo import apply_repo
    from scaletot_features.store.materialize import materialize
    from validation.gate import reasoning_gate

    d = build_feature_dataset(tmp_path_factory.mktemp("feast") / "data")
    apply_repo(d)
    report = materialize(d, gate=reasoning_gate)
    assert report["gate"]["success"], report
    return d


@pytest.fixture(scope="module")
def store(data_dir):
    from scaletot_features.store.repo import get_store

    return get_store(data_dir)


@pytest.fixture(scope="module")
def features_table(data_dir) -> pd.DataFrame:
    from scaletot_features.data.io import read_table

    table = read_table(data_dir / "features" / "reasoning_features")
    return table.to_pandas().set_index("user_id")


@pytest.fixture(scope="module")
def profiles(data_dir) -> pd.DataFrame:
    from scaletot_features.data.io import read_table

    return read_table(data_dir / "profiles").to_pandas().set_index("user_id")


def _request_row(profile: pd.Series) -> dict:
    """A stored profile as request data for the live view (profile_<field> keys)."""
    from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA, is_missing

    row = {}
    for f in DEFAULT_PROFILE_SCHEMA.fields:
        v = profile[f.name]
        if f.kind.value == "tags":
            v = None if v is None else [str(t) for t in v]
        row[f"profile_{f.name}"] = None if is_missing(v) else (
            float(v) if f.kind.value == "numeric" else v)
    return row


# --------------------------------------------------------------------------- the repository


def test_generated_repository_and_registry(data_dir, store):
    repo = data_dir / "feast"
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert config["offline_store"]["type"] == "duckdb"
    assert config["online_store"] == {"type": "sqlite", "path": "online_store.db"}
    shipped = REPO_ROOT / "scaletot_features" / "store" / "feast_repo" / "features.py"
    # the generated copy and the project's feature_repo/ are the file the package ships
    assert (repo / "features.py").read_text() == shipped.read_text()
    assert (REPO_ROOT / "feature_repo" / "features.py").read_text() == shipped.read_text()

    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {"user_profile", "user_states", "user_embedding", "ltv_labels"}
    assert not views["ltv_labels"].online  # labels are never served
    emb = next(f for f in views["user_embedding"].features if f.name == "embedding")
    assert emb.vector_index and emb.vector_length == DIM and emb.vector_search_metric == "L2"
    assert {o.name for o in store.list_on_demand_feature_views()} == {"reasoning_live"}
    services = {s.name: s for s in store.list_feature_services()}
    assert set(services) == {"ltv_profile_only", "ltv_with_reasoning", "ltv_live"}
    assert [p.name for p in services["ltv_profile_only"].feature_view_projections] == \
        ["user_profile"]
    assert {p.name for p in services["ltv_with_reasoning"].feature_view_projections} == \
        {"user_profile", "user_states", "user_embedding"}


def test_apply_is_idempotent_and_drops_removed_objects(data_dir, store, tmp_path):
    from scaletot_features.store.repo import apply_repo, get_store
    from scaletot_features.store.materialize import materialize

    d = copy_dataset(data_dir, tmp_path / "data")
    apply_repo(d)
    apply_repo(d)  # twice: no error, same objects
    fs = get_store(d)
    assert {o.name for o in fs.list_on_demand_feature_views()} == {"reasoning_live"}
    shutil.rmtree(d / "encoder")  # no encoder: the live view and its service go away
    with pytest.warns(UserWarning, match="no encoder artifact"):
        apply_repo(d)
    fs = get_store(d)
    assert list(fs.list_on_demand_feature_views()) == []
    assert "ltv_live" not in {s.name for s in fs.list_feature_services()}
    report = materialize(d)
    assert report["views"] == {"user_profile": USERS, "user_states": USERS,
                               "user_embedding": USERS}


# --------------------------------------------------------------------------- materialize


def test_online_values_equal_the_offline_tables(store, features_table, profiles):
    ids = [1, 2, 777, USERS]
    got = store.get_online_features(
        features=store.get_feature_service("ltv_with_reasoning"),
        entity_rows=[{"user_id": i} for i in ids]).to_dict()
    for j, uid in enumerate(ids):
        row = features_table.loc[uid]
        np.testing.assert_array_equal(np.asarray(got["embedding"][j], np.float32),
                                      np.asarray(row["embedding"], np.float32))
        for t in ("life_stage", "spending_power", "retention_outlook"):
            assert got[t][j] == row[t]
            assert got[f"{t}_prob"][j] == pytest.approx(row[f"{t}_prob"])
            assert got[f"{t}_probs"][j] == pytest.approx(list(row[f"{t}_probs"]))
        prof = profiles.loc[uid]
        assert got["acquisition_channel"][j] == prof["acquisition_channel"]
        assert got["first_day_sessions"][j] == pytest.approx(prof["first_day_sessions"])
        age = prof["age"]
        assert (got["age"][j] is None) if pd.isna(age) else got["age"][j] == pytest.approx(age)


def test_materialize_is_incremental(data_dir):
    from scaletot_features.store.materialize import materialize

    report = materialize(data_dir)
    assert report["rows"] == 0  # nothing new since the fixture's run
    assert set(report["views"]) == {"user_profile", "user_states", "user_embedding"}


def test_gate_failure_stops_materialization(data_dir, tmp_path):
    from scaletot_features.store.repo import apply_repo, get_store
    from scaletot_features.store.materialize import GateFailedError, materialize
    from validation.gate import reasoning_gate

    d = copy_dataset(data_dir, tmp_path / "data")
    part = sorted((d / "features" / "reasoning_features").glob("part-*.parquet"))[0]
    t = pq.read_table(part)
    probs = t.column("life_stage_prob").to_pylist()
    probs[3] = 1.7  # a probability out of range
    t = t.set_column(t.schema.get_field_index("life_stage_prob"), "life_stage_prob",
                     pa.array(probs, pa.float64()))
    pq.write_table(t, part)
    apply_repo(d)
    with pytest.raises(GateFailedError) as err:
        materialize(d, gate=reasoning_gate)
    assert "life_stage_prob" in str(err.value) and "nothing was materialized" in str(err.value)
    assert (d / "validation" / "reasoning_features.json").exists()
    fs = get_store(d)
    assert all(not fv.materialization_intervals for fv in fs.list_feature_views())
    got = fs.get_online_features(features=["user_states:life_stage"],
                                 entity_rows=[{"user_id": 1}]).to_dict()
    assert got["life_stage"] == [None]


# --------------------------------------------------------------------------- historical


def test_no_leakage_point_in_time(data_dir, tmp_path):
    """A feature row dated after an entity's timestamp never reaches that entity."""
    from scaletot_features.data.io import read_table
    from scaletot_features.store.repo import apply_repo
    from scaletot_features.store.retrieval import historical_features

    d = copy_dataset(data_dir, tmp_path / "data")
    feats = read_table(d / "features" / "reasoning_features")
    first = feats.slice(0, 50)
    # a newer version of 50 users' features, dated 10 days after the first one
    later = first.set_column(1, "event_timestamp", pa.compute.add(
        first.column("event_timestamp"), pa.scalar(timedelta(days=10), pa.duration("us"))))
    later = later.set_column(later.schema.get_field_index("model_version"), "model_version",
                             pa.array(["v2"] * 50))
    later = later.set_column(later.schema.get_field_index("life_stage"), "life_stage",
                             pa.array(["retired"] * 50))
    pq.write_table(later.cast(feats.schema), d / "features" / "reasoning_features" /
                   "part-00009.parquet")
    apply_repo(d)
    labels = read_table(d / "labels").to_pandas().set_index("user_id")
    v1 = first.select(["user_id", "event_timestamp"]).to_pandas().head(20)
    us, ten = pd.Timedelta(microseconds=1), pd.Timedelta(days=10)
    rows = []
    for uid, t in zip(v1["user_id"], v1["event_timestamp"]):
        lt = labels.loc[uid, "label_timestamp"]
        for name, ts in [("before_v1", t - us), ("at_v1", t), ("before_v2", t + ten - us),
                         ("at_v2", t + ten), ("before_label", lt - us), ("at_label", lt)]:
            rows.append({"user_id": uid, "event_timestamp": ts, "case": name})
    entity = pd.DataFrame(rows)
    out = historical_features(d, entity, ["user_states:model_version", "user_states:life_stage",
                                          "user_profile:acquisition_channel"],
                              tmp_path / "train.parquet", with_labels=True)
    got = pd.read_parquet(out)
    assert list(got["case"]) == list(entity["case"])  # input order kept
    by = {c: g for c, g in got.groupby("case")}
    assert by["before_v1"]["model_version"].isna().all()
    assert by["before_v1"]["acquisition_channel"].isna().all()
    assert by["at_v1"]["model_version"].notna().all()
    assert (by["at_v1"]["model_version"] != "v2").all()
    assert (by["before_v2"]["model_version"] != "v2").all()
    assert (by["at_v2"]["model_version"] == "v2").all()
    assert (by["at_v2"]["life_stage"] == "retired").all()
    assert by["before_label"]["lt30"].isna().all() and by["before_label"]["revenue_30"].isna().all()
    expected = labels.loc[by["at_label"]["user_id"], "lt30"].to_numpy()
    np.testing.assert_array_equal(by["at_label"]["lt30"].to_numpy(), expected)


def test_historical_features_default_service_and_files(data_dir, tmp_path, features_table):
    from scaletot_features.store.repo import StoreError
    from scaletot_features.store.retrieval import historical_features

    ids = [5, 3, 1, 4]
    entity = pd.DataFrame({"user_id": ids, "timestamp": pd.Timestamp("2030-01-01", tz="UTC")})
    path = tmp_path / "e.parquet"
    entity.to_parquet(path)
    out = historical_features(data_dir, path, None, tmp_path / "out" / "f.parquet")
    got = pd.read_parquet(out)
    assert list(got["user_id"]) == ids
    assert {"embedding", "life_stage_probs", "acquisition_channel"} <= set(got.columns)
    assert "lt30" not in got.columns
    np.testing.assert_allclose(np.stack(got["embedding"]),
                               np.stack(features_table.loc[ids, "embedding"]), rtol=1e-6)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["f.parquet"]  # no temp leftovers
    only = pd.read_parquet(historical_features(data_dir, entity, "ltv_profile_only",
                                               tmp_path / "p.parquet"))
    assert "embedding" not in only.columns and "age" in only.columns
    with pytest.raises(StoreError, match="unknown feature 'nope'"):
        historical_features(data_dir, entity, ["user_profile:nope"], tmp_path / "x.parquet")
    with pytest.raises(StoreError, match="timestamp"):
        historical_features(data_dir, entity[["user_id"]], None, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


# --------------------------------------------------------------------------- the live view


def test_live_view_online_equals_batch_features(store, features_table, profiles):
    ids = [11, 12, 1999]
    rows = [_request_row(profiles.loc[i]) for i in ids]
    got = store.get_online_features(features=store.get_feature_service("ltv_live"),
                                    entity_rows=rows).to_dict()
    for j, uid in enumerate(ids):
        np.testing.assert_allclose(got["live_embedding"][j], features_table.loc[uid, "embedding"],
                                   rtol=1e-5, atol=1e-6)
        for t in ("life_stage", "primary_interest", "monetization_propensity"):
            assert got[f"live_{t}"][j] == features_table.loc[uid, t]
            assert got[f"live_{t}_probs"][j] == pytest.approx(
                list(features_table.loc[uid, f"{t}_probs"]), abs=1e-6)


def test_live_view_in_historical_retrieval_tolerates_missing(data_dir, tmp_path, features_table,
                                                               profiles):
    from scaletot_features.store.retrieval import historical_features

    ids = [21, 22]
    rows = [{"user_id": i, "event_timestamp": pd.Timestamp("2030-01-01", tz="UTC"),
             **_request_row(profiles.loc[i])} for i in ids]
    bare = {k: None for k in rows[0] if k.startswith("profile_")}
    bare["profile_acquisition_channel"] = "referral"
    rows.append({"user_id": 10**9, "event_timestamp": pd.Timestamp("2030-01-01", tz="UTC"),
                 **bare})  # an unknown user with an almost empty profile
    out = historical_features(data_dir, pd.DataFrame(rows),
                              ["reasoning_live:live_embedding", "reasoning_live:live_life_stage",
                               "user_states:life_stage"], tmp_path / "live.parquet")
    got = pd.read_parquet(out)
    for j, uid in enumerate(ids):
        np.testing.assert_allclose(got["live_embedding"][j], features_table.loc[uid, "embedding"],
                                   rtol=1e-5, atol=1e-6)
        assert got["live_life_stage"][j] == got["life_stage"][j]
    assert got["life_stage"].iloc[2] is None  # unknown user: nothing stored ...
    assert got["live_life_stage"].iloc[2] in {"student", "early_career", "family", "established",
                                              "retired"}  # ... but the live view still answers
    assert len(got["live_embedding"].iloc[2]) == DIM
    # profile columns left out altogether are missing fields too
    from scaletot_features.store.transforms import encode_request

    sparse = pd.DataFrame({"user_id": [5], "event_timestamp": [pd.Timestamp("2030-01-01",
                                                                           tz="UTC")],
                           "profile_acquisition_channel": ["referral"]})
    got = pd.read_parquet(historical_features(data_dir, sparse, ["reasoning_live:live_embedding"],
                                              tmp_path / "sparse.parquet"))
    want = encode_request({"profile_acquisition_channel": ["referral"]},
                          str(data_dir / "encoder"))
    np.testing.assert_allclose(got["live_embedding"][0], want["live_embedding"][0], rtol=1e-5)


def test_live_view_refuses_wrong_types(store):
    from scaletot_features.store.transforms import ProfileRequestError

    row = {f"profile_{k}": None for k in ("age", "gender", "city_tier", "device_model",
                                          "occupation", "interests")}
    row.update(profile_acquisition_channel="referral", profile_first_day_sessions="two")
    with pytest.raises(ProfileRequestError, match="profile_first_day_sessions.*expected a number"):
        store.get_online_features(features=["reasoning_live:live_life_stage"], entity_rows=[row])
    assert ProfileRequestError("x").http_status_code() == 422


# --------------------------------------------------------------------------- the CLI


def test_feature_repo_cli_apply_and_materialize_incremental(data_dir, tmp_path):
    """`cd feature_repo && feast apply && feast materialize-incremental <now>`, demo layout."""
    project = tmp_path / "project"
    (project / "feature_repo").mkdir(parents=True)
    for name in ("features.py", "feature_store.yaml"):
        shutil.copy(REPO_ROOT / "feature_repo" / name, project / "feature_repo" / name)
    copy_dataset(data_dir, project / "runs" / "demo" / "data")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cwd = project / "feature_repo"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    for cmd in ([FEAST, "apply"], [FEAST, "materialize-incremental", now]):
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert (project / "runs" / "demo" / "data" / "feast" / "registry.db").exists()
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(cwd))
    got = fs.get_online_features(features=["user_states:life_stage", "user_profile:gender"],
                                 entity_rows=[{"user_id": 3}]).to_dict()
    assert got["life_stage"][0] is not None


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow  # about 20 s: local Ray start-up on 2 cores
def test_ray_compute_engine_materializes_the_same_values(data_dir, store, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[scale]')")
    from scaletot_features.config import StoreConfig
    from scaletot_features.store.repo import apply_repo, get_store
    from scaletot_features.store.materialize import materialize

    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    cfg = StoreConfig(batch_engine="ray", ray_tmpdir=ray_tmp, ray_object_store_mb=128)
    repo = data_dir / "feast_ray"
    try:
        apply_repo(data_dir, store=cfg, repo_dir=repo)
        assert yaml.safe_load((repo / "feature_store.yaml").read_text())["batch_engine"]["type"] \
            == "ray.engine"
        report = materialize(data_dir, store=cfg, repo_dir=repo)
        assert report["batch_engine"] == "ray" and report["rows"] == 3 * USERS
        fs = get_store(data_dir, repo)
        ids = [{"user_id": i} for i in (1, 500, 1500, USERS)]
        refs = ["user_states:life_stage_probs", "user_embedding:embedding",
                "user_profile:interests", "user_profile:age"]
        assert fs.get_online_features(features=refs, entity_rows=ids).to_dict() == \
            store.get_online_features(features=refs, entity_rows=ids).to_dict()
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the fast path


def test_the_text_channel_of_the_request_path_matches_the_batch_path(data_dir):
    """Text and tag fields through the sentence model: a request's strings, embedded cold one
    request at a time, give the batch path's vectors (MiniLM pads a batch; the tolerance is the
    padding's summation order)."""
    from scaletot_features.data.io import read_table
    from scaletot_features.encoder.featurizer import FastFeaturizer, Featurizer, TextEmbedder
    from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
    from scaletot_features.store.transforms import coerce_column

    profiles = read_table(data_dir / "profiles")
    batch = Featurizer.fit(profiles, DEFAULT_PROFILE_SCHEMA, use_text_embedding=True)
    assert [f.name for f in batch.texts] == ["device_model", "occupation", "interests"]
    request = Featurizer.from_state(batch.state(), DEFAULT_PROFILE_SCHEMA)
    fast = FastFeaturizer(request)
    TextEmbedder._cache.clear()  # the process-wide cache: each request below embeds cold
    rows = profiles.slice(0, 40).to_pylist() + [
        {f.name: None for f in DEFAULT_PROFILE_SCHEMA.fields},
        {**profiles.slice(0, 1).to_pylist()[0], "occupation": "", "interests": []}]
    table = pa.Table.from_pylist(rows, schema=DEFAULT_PROFILE_SCHEMA.arrow_schema())
    want = batch.transform(table).text
    for i, row in enumerate(rows):
        cols = {f.name: coerce_column(f.name, f, [row[f.name]])
                for f in DEFAULT_PROFILE_SCHEMA.fields}
        TextEmbedder._cache.clear()
        got = fast.transform(cols, 1).text
        np.testing.assert_allclose(got[0].numpy(), want[i].numpy(), rtol=1e-4, atol=1e-5)
    assert not want[-2].any()  # every text field missing: zeros
    assert len(TextEmbedder._cache) > 0  # strings are kept for the next request


def test_small_batch_featurizer_matches_the_batch_featurizer(data_dir):
    """The live view's plain-Python featuriser gives the encoder's Arrow featuriser's tensors."""
    import torch

    from scaletot_features.data.io import read_table
    from scaletot_features.encoder.featurizer import FastFeaturizer
    from scaletot_features.store.transforms import coerce_column, get_encoder, predict_rows

    enc = get_encoder(data_dir / "encoder")
    schema = enc.featurizer.schema
    rows = read_table(data_dir / "profiles").to_pylist()
    edge = {"acquisition_channel": "carrier_pigeon", "first_day_sessions": -3.0, "age": None,
            "gender": "", "city_tier": None, "device_model": "  iPhone-15 Pro!!  ",
            "occupation": "Señora de limpieza / Ärztin 2", "interests": ["", None, "K-pop", "?!"]}
    rows = rows + [edge, {f.name: None for f in schema.fields},
                   {**edge, "device_model": "...", "occupation": "", "interests": []}]
    fast = FastFeaturizer(enc.featurizer)
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        cols = {f.name: coerce_column(f.name, f, [r[f.name] for r in chunk])
                for f in schema.fields}
        table = pa.table({f.name: pa.array(cols[f.name], f.arrow_type) for f in schema.fields})
        a, b = enc.featurizer.transform(table), fast.transform(cols, len(chunk))
        assert torch.equal(a.categorical, b.categorical)
        torch.testing.assert_close(a.numeric, b.numeric)
        for j in range(len(a.bag_ids)):
            assert torch.equal(a.bag_offsets[j], b.bag_offsets[j])
            assert torch.equal(a.bag_ids[j], b.bag_ids[j])
            assert torch.equal(a.bag_empty[j], b.bag_empty[j])
        emb_a, probs_a = enc.predict(table)
        emb_b, probs_b = predict_rows(enc, cols, len(chunk))
        np.testing.assert_allclose(emb_a, emb_b, rtol=1e-5, atol=1e-6)
        for pa_, pb in zip(probs_a, probs_b):
            np.testing.assert_allclose(pa_, pb, rtol=1e-9, atol=1e-12)
