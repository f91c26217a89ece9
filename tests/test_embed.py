"""Batch embedding of every user: coverage, the reasoning-feature gate, batch-size and engine
invariance, streaming memory. Uses the encoder distilled in test_encoder's fixture (real teacher
targets from the tiny random LLM)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import requires_ray

from scaletot_features.data.io import count_rows, parquet_files, read_json, read_table
from scaletot_features.dataset import embedding_dim, reasoning_feature_schema
from scaletot_features.encoder import embed_population, features_dir
from test_encoder import DIM, encoder_settings, trained  # noqa: F401 (fixture)
from validation.gate import run_suite
from validation.suites import reasoning_feature_suite

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float32 matmuls may round differently with the batch's row count


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("user_id")


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    """Same rows, same typed values; floats equal within TOL."""
    a, b = _sorted(a), _sorted(b)
    assert a.schema == b.schema
    assert a.column("user_id").equals(b.column("user_id"))
    for name in a.column_names:
        ca, cb = a.column(name), b.column(name)
        t = a.schema.field(name).type
        if pa.types.is_list(t):
            np.testing.assert_allclose(pc.list_flatten(ca).to_numpy(), pc.list_flatten(cb).to_numpy(),
                                       atol=TOL, rtol=0, err_msg=name)
            assert pc.list_value_length(ca).equals(pc.list_value_length(cb))
        elif pa.types.is_floating(t):
            np.testing.assert_allclose(ca.to_numpy(), cb.to_numpy(), atol=TOL, rtol=0, err_msg=name)
        else:
            assert ca.equals(cb), name


@pytest.fixture(scope="module")
def embedded(trained) -> tuple[Path, dict]:
    summary = embed_population(trained, encoder_settings(), progress=False, batch_size=700)
    return trained, summary


def test_every_user_is_embedded_exactly_once_and_the_table_passes_the_gate(embedded):
    data, summary = embedded
    out = features_dir(data)
    table = read_table(out)
    profiles = read_table(data / "profiles", columns=["user_id", "event_timestamp"])
    assert summary["users"] == table.num_rows == profiles.num_rows == 2_000
    # batches never span input files: 2 profile parts of 1,000 users, batches of 700
    assert summary["parts"] == len(parquet_files(out)) == 4
    assert pc.count_distinct(table.column("user_id")).as_py() == table.num_rows
    joined = _sorted(table).select(["user_id", "event_timestamp"])
    assert joined.equals(_sorted(profiles))  # every user, with its profile's snapshot time
    s = encoder_settings()
    assert table.schema == reasoning_feature_schema(s.taxonomy())
    assert embedding_dim(features_dir(data)) == embedding_dim(data / "encoder") == DIM
    manifest = read_json(data / "encoder" / "manifest.json")
    assert set(table.column("provenance").to_pylist()) == {"encoder"}
    assert set(table.column("model_version").to_pylist()) == {manifest["model_version"]}
    result = run_suite(table.to_pandas(), reasoning_feature_suite(s.taxonomy(), DIM, prob_lists=True))
    assert result.success, result.failed
    # T_prob is the probability of T inside T_probs, in taxonomy order
    row = table.slice(0, 1).to_pylist()[0]
    for t in s.taxonomy().types:
        probs = row[f"{t.name}_probs"]
        assert row[f"{t.name}_prob"] == max(probs)
        assert t.value_names[int(np.argmax(probs))] == row[t.name]


def test_the_gate_fails_a_table_with_a_wrong_dimension(embedded):
    """The gate is not vacuous: the same table checked for another dimension fails."""
    data, _ = embedded
    df = read_table(features_dir(data)).to_pandas()
    result = run_suite(df, reasoning_feature_suite(encoder_settings().taxonomy(), DIM + 1,
                                                   prob_lists=True))
    assert not result.success
    assert any(f["column"] == "embedding" for f in result.failed)


def test_batch_size_does_not_change_the_features(embedded, tmp_path):
    data, _ = embedded
    summary = embed_population(data, encoder_settings(), progress=False, batch_size=97,
                               out=tmp_path / "small")
    assert summary["parts"] == 22  # 2 x ceil(1000 / 97)
    _assert_same(read_table(features_dir(data)), read_table(tmp_path / "small"))


def test_reembedding_replaces_the_table_without_duplicates(embedded, tmp_path):
    data, _ = embedded
    out = tmp_path / "again"
    embed_population(data, encoder_settings(), progress=False, batch_size=1500, out=out)
    embed_population(data, encoder_settings(), progress=False, batch_size=1500, out=out)
    assert count_rows(out) == 2_000 and len(parquet_files(out)) == 2


def test_request_time_rows_give_the_batch_features(embedded):
    """The on-demand path (Encoder.feature_rows on dicts) computes what the batch job wrote."""
    from scaletot_features.encoder import load_encoder

    data, _ = embedded
    enc, _ = load_encoder(data / "encoder")
    profiles = read_table(data / "profiles").slice(0, 5)
    rows = enc.feature_rows(profiles.to_pylist())
    batch = _sorted(read_table(features_dir(data))).slice(0, 5).to_pylist()
    for a, b in zip(rows, batch):
        assert a["user_id"] == b["user_id"] and a["life_stage"] == b["life_stage"]
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=TOL)



@requires_ray
def test_ray_data_gives_the_same_table_as_the_local_engine(embedded, tmp_path):
    data, _ = embedded
    s = encoder_settings()
    s.encoder.ray_tmpdir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket paths
    try:
        summary = embed_population(data, s, engine="ray", progress=False, batch_size=700,
                                   out=tmp_path / "ray")
    finally:
        shutil.rmtree(s.encoder.ray_tmpdir, ignore_errors=True)
    assert summary["engine"] == "ray" and summary["users"] == 2_000
    files = parquet_files(tmp_path / "ray")
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(len(files))]
    ray_table = read_table(tmp_path / "ray")
    assert ray_table.schema == reasoning_feature_schema(s.taxonomy())  # no tensor extension type
    _assert_same(read_table(features_dir(data)), ray_table)


_MEMORY_CHILD = r"""
import json, resource, sys
from pathlib import Path
from scaletot_features.config import build_settings
from scaletot_features.encoder import embed_population
root, encoder = Path(sys.argv[1]), Path(sys.argv[2])
s = build_settings("tiny", {"encoder": {"dim": %d}})
summary = embed_population(root / "data", s, progress=False, batch_size=8192,
                           encoder_folder=encoder, out=root / "features")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": peak, "users": summary["users"]}))
""" % DIM


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_population(embedded, tmp_path):
    """50k vs 200k users (each in its own process): the embed step's peak RSS stays flat."""
    data, _ = embedded
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peaks = {}
    from scaletot_features.data.synthetic import generate_population

    for users in (50_000, 200_000):
        root = tmp_path / str(users)
        generate_population(root / "data", users=users, seed=3, chunk_size=10_000,
                            progress=False)
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(root),
                              str(data / "encoder")], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["users"] == users
        peaks[users] = res["peak_kb"] / 1024
    output_mb = 150_000 * pq.ParquetFile(parquet_files(features_dir(data))[0]).metadata \
        .row_group(0).total_byte_size / 700 / 2**20  # what 150k more users weigh in memory
    growth = peaks[200_000] - peaks[50_000]
    print(f"peak RSS {peaks}, growth {growth:.1f} MB, output of 150k users {output_mb:.0f} MB")
    assert growth < 40, f"peak RSS grew {growth:.0f} MB from 50k to 200k users ({peaks})"
    assert output_mb > 40  # holding the extra output would have shown


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_and_cpu_give_the_same_features_within_tolerance(embedded):
    """Stated tolerance: 1e-4 absolute on embeddings and probabilities (TF32 off), same values."""
    import torch

    from scaletot_features.encoder import load_encoder

    data, _ = embedded
    profiles = read_table(data / "profiles")
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, _ = load_encoder(data / "encoder", device="cpu")
    gpu, _ = load_encoder(data / "encoder", device="cuda")
    a, b = cpu.feature_table(profiles), gpu.feature_table(profiles)
    np.testing.assert_allclose(pc.list_flatten(a.column("embedding")).to_numpy(),
                               pc.list_flatten(b.column("embedding")).to_numpy(), atol=1e-4)
    for t in encoder_settings().taxonomy().type_names:
        np.testing.assert_allclose(pc.list_flatten(a.column(f"{t}_probs")).to_numpy(),
                                   pc.list_flatten(b.column(f"{t}_probs")).to_numpy(), atol=1e-4)
        agree = np.mean(np.array(a.column(t).to_pylist()) == np.array(b.column(t).to_pylist()))
        assert agree > 0.999, t  # only near-ties may flip


def test_a_ray_actor_gives_the_torch_thread_count_back(embedded):
    """In Ray's local mode an actor runs in the driver's process: its pin must not leak."""
    import torch

    import functools

    from scaletot_features.encoder.embed import encoder_batch_fn
    from scaletot_features.ray_engine import ModelActor
    from scaletot_features.runtime import torch_threads

    data, _ = embedded
    batch = read_table(data / "profiles").slice(0, 5)
    with torch_threads(2):
        actor = ModelActor(functools.partial(encoder_batch_fn, str(data / "encoder"), "cpu"), 1)
        out = actor(batch)
        assert torch.get_num_threads() == 2
    assert out.num_rows == 5
