"""The vLLM backend against the transformers backend, on a CUDA GPU with vllm installed
(``make setup-gpu``); without them only the refusal is tested and the rest skips with a reason."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_VLLM = importlib.util.find_spec("vllm") is not None
NEEDS_GPU = pytest.mark.skipif(
    not (HAS_CUDA and HAS_VLLM),
    reason=(
        "needs a CUDA GPU and vllm (run `make setup-gpu` on a GPU machine): "
        f"cuda available={HAS_CUDA}, vllm importable={HAS_VLLM}"
    ),
)

PROFILE = "Profile: age 67; occupation: retired schoolteacher; device: iPad Air.\n"
DESCRIPTIONS = [" This user is a student.", " This user is a retired older person.", " This user is rich."]


@pytest.mark.skipif(HAS_CUDA and HAS_VLLM, reason="vLLM can run here; the refusal is not reachable")
def test_refuses_clearly_without_gpu_or_vllm() -> None:
    from scaletot_features.llm.vllm import VLLMBackend

    with pytest.raises(RuntimeError, match=r"make setup-gpu") as err:
        VLLMBackend("packaged")
    assert "GPU" in str(err.value)


@pytest.fixture(scope="module")
def backends():  # type: ignore[no-untyped-def]
    from scaletot_features.llm.hf import TransformersBackend
    from scaletot_features.llm.vllm import VLLMBackend

    reference = TransformersBackend("packaged", device="cuda", dtype=torch.float32)
    vllm_backend = VLLMBackend("packaged", dtype="float32", gpu_memory_utilization=0.4)
    return reference, vllm_backend


@pytest.mark.gpu
@pytest.mark.slow
@NEEDS_GPU
def test_vllm_scores_agree_with_transformers(backends) -> None:  # type: ignore[no-untyped-def]
    reference, vllm_backend = backends
    expected = reference.score_continuations(PROFILE, DESCRIPTIONS)
    got = vllm_backend.score_continuations(PROFILE, DESCRIPTIONS)
    np.testing.assert_allclose(got, expected, atol=0.05, rtol=0.01)
    assert vllm_backend.usage.scoring_calls == 1

    heads = [f"This user is{d[len(' This user is'):]} Their profile reads:\n" for d in DESCRIPTIONS]
    np.testing.assert_allclose(
        vllm_backend.score_pairs(heads, [PROFILE] * 3),
        reference.score_pairs(heads, [PROFILE] * 3),
        atol=0.05,
        rtol=0.01,
    )
    capital = vllm_backend.score_continuations("The capital of France is", [" Paris", " banana"])
    assert capital[0] > capital[1]
    requests = [(PROFILE, DESCRIPTIONS), ("The capital of France is", [" Paris", " banana"]),
                ("x", [])]
    for got, (prefix, conts) in zip(vllm_backend.score_continuations_many(requests), requests):
        np.testing.assert_allclose(got, reference.score_continuations(prefix, conts),
                                   atol=0.05, rtol=0.01)


@pytest.mark.gpu
@pytest.mark.slow
@NEEDS_GPU
def test_vllm_generate_and_hidden_states(backends) -> None:  # type: ignore[no-untyped-def]
    reference, vllm_backend = backends
    prompts = ["The capital of France is", "Hello"]
    out = vllm_backend.generate(prompts, max_new_tokens=8)
    assert out == vllm_backend.generate(prompts, max_new_tokens=8)
    assert "Paris" in out[0]
    states = vllm_backend.hidden_states(["This user is retired."])
    assert states.shape == (1, 576) and states.dtype == np.float32
    np.testing.assert_allclose(states, reference.hidden_states(["This user is retired."]), atol=1e-4)
