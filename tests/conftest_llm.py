"""Shared fixtures for the LLM backend tests.

Test modules import what they use (``from conftest_llm import packaged_backend``); the loaded
models are cached per process, so a fixture imported into several modules (or re-exported by
tests/conftest.py) still loads each model once. The packaged SmolLM2 is converted into the
default cache ($SCALETOT_CACHE or ~/.cache/scaletot) the first time, 15-120 s, then reused.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from scaletot_features.llm.hf import TransformersBackend
from scaletot_features.llm.packaged import converted_model_dir, resolve_model


@functools.cache
def load_backend(name: str) -> TransformersBackend:
    """One backend per model name per test process."""
    return TransformersBackend(name, device="cpu")


@pytest.fixture(scope="session")
def packaged_model_dir() -> Path:
    return converted_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return resolve_model("tiny-random")


@pytest.fixture
def packaged_backend(packaged_model_dir: Path) -> TransformersBackend:
    """The packaged SmolLM2-135M-Instruct on CPU, usage counters zeroed."""
    backend = load_backend("packaged")
    backend.usage.reset()
    backend.clear_prefix_cache()
    return backend


@pytest.fixture
def tiny_backend(tiny_model_dir: Path) -> TransformersBackend:
    """The tiny random Llama with the SmolLM2 tokenizer on CPU, usage counters zeroed."""
    backend = load_backend("tiny-random")
    backend.usage.reset()
    backend.clear_prefix_cache()
    return backend


def naive_logprob(backend: TransformersBackend, prefix: str, continuation: str) -> float:
    """Reference score: one unpadded, uncached forward over prefix + continuation tokens."""
    return naive_logprob_ids(backend, backend.prefix_ids(prefix), backend.continuation_ids(continuation))


@torch.inference_mode()
def naive_logprob_ids(backend: TransformersBackend, p: list[int], c: list[int]) -> float:
    if not c:
        return 0.0
    ids = torch.tensor([p + c], device=backend.device)
    logp = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(logp[len(p) + j - 1, tok].item() for j, tok in enumerate(c)))


# Sums of fp32 token log-probs: batching, padding and the thread count change the kernels'
# summation order by a few 1e-6 per token, so sums of ~40 nats differ by ~1e-4. The tolerance
# scales with the value (relative) on top of a small absolute floor for near-zero sums.
LOGPROB_RTOL = 1e-4
LOGPROB_ATOL = 1e-4


def assert_logprobs_close(got, want) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL)


def naive_scores(backend: TransformersBackend, prefixes: list[str], continuations: list[str]) -> np.ndarray:
    return np.array([naive_logprob(backend, p, c) for p, c in zip(prefixes, continuations)])
