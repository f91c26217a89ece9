"""``distill --from teacher``: an encoder from the teacher's typed-state distributions alone.

Real components: a tiny synthetic population, teacher chains written by ``teach`` with the tiny
random LLM (greedy search, so each chain's value is its node's argmax), the real distillation.
That teacher's distributions are nearly uniform but profile-dependent: enough to check that the
encoder learns them (against the majority class and the profile-blind mean distribution), not
that they mean anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from scaletot_features.config import build_settings
from scaletot_features.data.io import read_json, read_table
from scaletot_features.dataset import DatasetLayout, encoder_manifest, probs_column
from scaletot_features.encoder import embed_population, load_encoder
from scaletot_features.profile import ID_COLUMN
from scaletot_features.reasoning.scoring import ranked
from trainers.distill_encoder import TargetsError, distill_encoder, split_users
from trainers.teach import load_chains, teach

pytestmark = pytest.mark.usefixtures("one_torch_thread")

USERS = 48


def teacher_settings(**encoder):
    return build_settings("tiny", {
        "teacher": {"model": "tiny-random", "scoring": "calibrated", "search": "greedy",
                    "checkpoint_every": 64},
        "coverage": {"max_users": USERS},
        "encoder": {"dim": 16, **encoder},
    })


@pytest.fixture(scope="module")
def taught(tiny_population, tmp_path_factory) -> Path:
    """A copy of the population with teacher chains and nothing else (read-only for tests)."""
    from conftest_llm import load_backend

    data = tmp_path_factory.mktemp("teacher") / "data"
    shutil.copytree(tiny_population, data)
    teach(data, teacher_settings(), backend=load_backend("tiny-random"), progress=False)
    return data


def teacher_argmax(chains: pa.Table, types) -> np.ndarray:
    """[n, types] the index of each node's most probable value, from ``T_probs`` (near-ties go to
    the taxonomy's first value, as the search commits them), checked against the chains'
    values: under greedy search they are the same."""
    top = np.stack([np.asarray([ranked(p)[0] for p in
                                chains.column(probs_column(t.name)).to_pylist()])
                    for t in types], axis=1)
    values = np.stack([np.asarray([t.value_names.index(v) for v in
                                   chains.column(t.name).to_pylist()]) for t in types], axis=1)
    np.testing.assert_array_equal(top, values)
    return top


def test_teacher_encoder_learns_the_teachers_states_better_than_the_majority(taught, tmp_path):
    s = teacher_settings(epochs=150, val_fraction=0.0)
    summary = distill_encoder(taught, s, source="teacher", out=tmp_path / "enc", progress=False)
    assert summary["source"] == "teacher" and summary["provenance"] == ["teacher"]
    encoder, manifest = load_encoder(tmp_path / "enc", device="cpu", taxonomy=s.taxonomy())
    assert manifest["provenance"] == "teacher" and manifest["embedding"]["kind"] == "trunk_pca"
    assert manifest["training"]["projection"]["kind"] == "none" and encoder.projection is None
    assert "soft" in manifest["training"]["targets"]["loss"]

    # on its training users, measured here from the artifact alone
    chains = load_chains(taught).sort_by(ID_COLUMN)
    ids = chains.column(ID_COLUMN).to_numpy()
    split, _ = split_users(ids, taught, s)
    train = np.flatnonzero(split == "train")
    assert len(train) >= 30
    profiles = read_table(DatasetLayout(taught).profiles)
    profiles = profiles.filter(pc.is_in(profiles.column(ID_COLUMN),
                                        value_set=pa.array(ids[train]))).sort_by(ID_COLUMN)
    emb, probs = encoder.predict(profiles)
    truth = teacher_argmax(chains, s.taxonomy().types)[train]
    predicted = np.stack([p.argmax(axis=1) for p in probs], axis=1)
    agreement = (predicted == truth).mean()
    majority = np.mean([(col == np.bincount(col).argmax()).mean() for col in truth.T])
    assert agreement > majority + 0.03, (agreement, majority)
    m = summary["metrics"]["train"]
    assert m["typed_agreement"] == pytest.approx(agreement)  # the manifest says what we measured
    assert 0 <= m["teacher_kl"] < m["prior_kl"]  # closer to the teacher than the mean guess

    # the embedding: principal components of the trunk's features on the training users,
    # centred, by decreasing variance, unit mean square per component
    assert emb.shape == (len(train), 16) and np.isfinite(emb).all()
    scale = np.sqrt((emb ** 2).mean())
    np.testing.assert_allclose(emb.mean(axis=0), 0, atol=1e-4 * scale)
    assert (emb ** 2).mean() == pytest.approx(1.0, rel=1e-3)
    var = emb.var(axis=0)
    assert np.all(np.diff(var) <= 1e-4 * var.max())


def test_a_normal_artifact_embeds_everyone_and_dims_past_the_trunk_are_zero(taught, tmp_path):
    s = teacher_settings(dim=48, epochs=3, teacher_targets="hard")  # tiny preset: hidden 32
    distill_encoder(taught, s, source="teacher", out=tmp_path / "enc", progress=False)
    manifest = read_json(encoder_manifest(tmp_path / "enc"))
    assert "hard" in manifest["training"]["targets"]["loss"]
    assert manifest["embedding"]["width"] == 32 and manifest["dim"] == 48
    report = embed_population(taught, s, encoder_folder=tmp_path / "enc", out=tmp_path / "feats",
                              progress=False)
    assert report["users"] == 2_000
    emb = np.asarray(read_table(tmp_path / "feats", columns=["embedding"]).column(0).to_pylist())
    assert emb.shape == (2_000, 48) and np.isfinite(emb).all()
    assert np.all(emb[:, 32:] == 0) and np.all(emb[:, :32].std(axis=0) > 0)
    with torch.no_grad():  # the head is the fitted map, nothing random left in it
        encoder, _ = load_encoder(tmp_path / "enc", device="cpu")
        assert torch.all(encoder.net.embedding_head.weight[32:] == 0)


def test_without_teacher_chains_it_says_to_run_teach(population_copy, tmp_path):
    with pytest.raises(TargetsError, match="scaletot teach"):
        distill_encoder(population_copy, teacher_settings(), source="teacher",
                        out=tmp_path / "enc", progress=False)
    assert not (tmp_path / "enc").exists()
