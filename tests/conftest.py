"""Shared fixtures: one small synthetic population per test session, copied where tests mutate it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _ray_data_installed() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


requires_ray = pytest.mark.skipif(not _ray_data_installed(),
                                  reason="ray[data] is not installed (pip install -e '.[scale]')")
"""For the tests of a Ray engine: they compare it with the local one in local Ray."""


@pytest.fixture(scope="session")
def tiny_population(tmp_path_factory) -> Path:
    """2,000 synthetic users (the tiny preset's size): read-only, shared by the session."""
    from scaletot_features.data.synthetic import generate_population

    out = tmp_path_factory.mktemp("pop") / "data"
    generate_population(out, users=2_000, seed=0, chunk_size=1_000, progress=False)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread (and the shared 2-vCPU machines punish two).

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    from scaletot_features.runtime import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture()
def population_copy(tiny_population, tmp_path) -> Path:
    """A private copy of the tiny population for tests that corrupt or extend it."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_population, dst)
    return dst


from conftest_llm import (  # noqa: E402,F401  (LLM fixtures: packaged and tiny random models)
    packaged_backend, packaged_model_dir, tiny_backend, tiny_model_dir,
)
