"""Student SFT (TRL SFTTrainer): the train/holdout split and an offline-loadable saved student."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from scaletot_features.config import build_settings
from scaletot_features.dataset import STUDENT_MANIFEST
from scaletot_features.llm.hf import TransformersBackend
from trainers.sft import ensure_split, make_split, sft_records, split_path, train_sft
from trainers.teach import load_chains, teach


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _settings(**student):
    return build_settings("tiny", {"teacher": {"model": "tiny-random"},
                                   "student": {"sft_max_steps": 2, **student}})


@pytest.fixture(scope="module")
def taught(tiny_population, tmp_path_factory):
    """The tiny population with tiny-random teacher chains for its 24 covered users."""
    data = tmp_path_factory.mktemp("sft") / "data"
    shutil.copytree(tiny_population, data)
    teach(data, _settings(), progress=False)
    return data


@pytest.fixture()
def data(taught, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(taught, dst)
    return dst


def test_split_is_deterministic_disjoint_and_seeded():
    ids = list(range(1000, 1100))
    a = make_split(ids, 0.2, seed=0)
    b = make_split(list(reversed(ids)) + ids[:5], 0.2, seed=0)
    assert a.equals(b)
    assert a.column("user_id").to_pylist() == ids
    hold = [u for u, s in zip(ids, a.column("split").to_pylist()) if s == "holdout"]
    assert len(hold) == 20
    other = make_split(ids, 0.2, seed=1)
    assert other.column("split").to_pylist() != a.column("split").to_pylist()
    # Tiny sets keep both sides non-empty; fraction 0 holds nobody out.
    assert sorted(make_split([1, 2], 0.2, 0).column("split").to_pylist()) == ["holdout", "train"]
    assert set(make_split(ids, 0.0, 0).column("split").to_pylist()) == {"train"}


def test_ensure_split_writes_once_and_refuses_other_settings(data):
    s = _settings()
    first = ensure_split(data, s)
    covered = set(load_chains(data).column("user_id").to_pylist())
    assert set(first.column("user_id").to_pylist()) == covered
    assert ensure_split(data, s).equals(first)
    assert pq.read_table(split_path(data)).select(["user_id", "split"]).equals(first.select(["user_id", "split"]))
    with pytest.raises(RuntimeError, match="overwrite"):
        ensure_split(data, _settings(holdout_fraction=0.5))
    assert ensure_split(data, _settings(holdout_fraction=0.5), overwrite=True).num_rows == len(covered)
    # SFT examples: train users only, prompt + the teacher's chain text.
    recs = sft_records(data, _settings(holdout_fraction=0.5), "train")
    chains = {r["user_id"]: r["chain_text"] for r in load_chains(data).to_pylist()}
    assert len(recs) == len(covered) // 2
    assert all(r["completion"] == chains[r["user_id"]] and r["prompt"].endswith("State chain:\n")
               for r in recs)


def test_sft_on_the_tiny_model_saves_a_student_that_loads_offline(data, tiny_model_dir):
    summary = train_sft(data, _settings(), progress=False)
    out = data / "student" / "sft"
    assert summary["steps"] == 2 and len(summary["loss_history"]) == 2
    assert all(np.isfinite(summary["loss_history"]))
    assert not list(out.parent.glob(".sft.tmp-*"))
    meta = json.loads((out / STUDENT_MANIFEST).read_text())
    assert meta["stage"] == "sft" and meta["base_model"] == "tiny-random"
    backend = TransformersBackend(out, device="cpu")  # HF_HUB_OFFLINE is set by the backend
    assert np.isfinite(backend.score_continuations("State chain:\n", ["life_stage: student"])).all()
    base = TransformersBackend(tiny_model_dir, device="cpu").model.state_dict()
    trained = backend.model.state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in base), "SFT changed no weight"
    with pytest.raises(FileExistsError):
        train_sft(data, _settings(), progress=False)


@pytest.mark.slow
def test_sft_packaged_model_with_lora_merges_into_a_plain_folder(data, packaged_model_dir):
    s = build_settings("demo", {"student": {"sft_max_steps": 2, "batch_size": 2, "lora": True}})
    summary = train_sft(data, s, progress=False)
    out = data / "student" / "sft"
    assert summary["lora"] and summary["steps"] == 2
    assert not list(out.glob("adapter_*"))  # merged: no adapter files
    backend = TransformersBackend(out, device="cpu")
    base = TransformersBackend(packaged_model_dir, device="cpu").model.state_dict()
    trained = backend.model.state_dict()
    assert set(base) == set(trained)
    assert any(not torch.equal(base[k], trained[k]) for k in base)
