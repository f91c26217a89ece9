"""Scoring modes and calibrations on the tiny random Llama (real tokenizer, real chat template),
checked against their definitions computed by hand through the backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_llm import LOGPROB_ATOL, LOGPROB_RTOL  # noqa: F401
from conftest_llm import tiny_backend, tiny_model_dir  # noqa: F401  (fixtures)

from scaletot_features.reasoning import prompts
from scaletot_features.reasoning.scoring import NodeScorer, log_softmax, normalise
from scaletot_features.reasoning.search import SearchConfig, search_chains
from scaletot_features.taxonomy import DEFAULT_TAXONOMY as TAX

PROFILES = [
    "occupation: investment banker\ndevice: iPhone 15 Pro",
    "age: 19\noccupation: college student",
    "occupation: retired schoolteacher",
    prompts.NO_PROFILE,
]
SPEND = TAX["spending_power"]
# The scorer sends its requests batched (prime and every depth) where these checks recompute them
# one at a time: the kernels sum in another order (~1e-6 on these log-probs), whatever the threads.
PROB_RTOL, PROB_ATOL = 1e-4, 1e-6


def _chat_logprobs(backend, text: str, values: list[str]) -> np.ndarray:
    prefix = backend.chat_prompt(prompts.chat_messages(text, TAX, values))
    state = TAX.types[len(values)]
    return log_softmax(backend.score_continuations(prefix, prompts.chat_answers(state)))


def test_chat_prompt_ends_where_the_answer_starts(tiny_backend) -> None:
    msgs = prompts.chat_messages(PROFILES[0], TAX, ["established"])
    text = tiny_backend.chat_prompt(msgs)
    assert text.endswith("<|im_start|>assistant\n")
    assert "investment banker" in text and text.count("<|im_start|>user") == 2
    assert "spending power" in text.rsplit("<|im_start|>user", 1)[1]  # the next node's question


def test_batch_calibration_is_the_sample_mean_depth_by_depth(tiny_backend) -> None:
    scorer = NodeScorer(tiny_backend, TAX, "chat", "batch")
    scorer.prime(PROFILES)
    first = np.stack([_chat_logprobs(tiny_backend, p, []) for p in PROFILES])
    np.testing.assert_allclose(scorer.offsets["life_stage"], first.mean(axis=0),
                               rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL)
    # Depth 1 is averaged over each sample profile's own calibrated depth-0 answer.
    picked = [TAX.types[0].value_names[normalise(r - first.mean(axis=0)).argmax] for r in first]
    second = np.stack([_chat_logprobs(tiny_backend, p, [v]) for p, v in zip(PROFILES, picked)])
    np.testing.assert_allclose(scorer.offsets["spending_power"], second.mean(axis=0), rtol=LOGPROB_RTOL,
                               atol=LOGPROB_ATOL)
    # A scored node is the calibrated distribution.
    got = scorer.score(PROFILES[1], picked[1:2])
    want = normalise(second[1] - second.mean(axis=0))
    np.testing.assert_allclose(got.probs, want.probs, rtol=PROB_RTOL, atol=PROB_ATOL)


def test_batch_calibration_needs_a_sample(tiny_backend) -> None:
    scorer = NodeScorer(tiny_backend, TAX, "chat", "batch")
    with pytest.raises(ValueError, match="sample"):
        scorer.prime([])
    with pytest.raises(RuntimeError, match="prime"):
        scorer.score(PROFILES[0], [])


def test_content_free_calibrated_mode_is_unchanged(tiny_backend) -> None:
    """raw(profile) - raw(content-free), as the calibrated mode has always been defined."""
    scorer = NodeScorer(tiny_backend, TAX, "calibrated", "content_free")
    raw = tiny_backend.score_continuations(prompts.calibrated_prefix(PROFILES[0], TAX, []),
                                           prompts.description_continuations(TAX.types[0]))
    cf = tiny_backend.score_continuations(prompts.calibrated_content_free_prefix(TAX),
                                          prompts.description_continuations(TAX.types[0]))
    np.testing.assert_allclose(scorer.score(PROFILES[0], []).probs, normalise(raw - cf).probs,
                               rtol=PROB_RTOL, atol=PROB_ATOL)


def test_factored_is_a_product_of_calibrated_per_line_experts(tiny_backend) -> None:
    scorer = NodeScorer(tiny_backend, TAX, "factored", "batch")
    scorer.prime(PROFILES)
    lines = prompts.profile_lines(PROFILES[0])
    assert lines == ["occupation: investment banker", "device: iPhone 15 Pro"]

    def line_lp(line: str) -> np.ndarray:
        prefix = tiny_backend.chat_prompt(prompts.chat_opening(line, SPEND))
        return log_softmax(tiny_backend.score_continuations(prefix, prompts.chat_answers(SPEND)))

    every_line = sorted({ln for p in PROFILES for ln in prompts.profile_lines(p)})
    offset = np.mean([line_lp(ln) for ln in every_line], axis=0)
    np.testing.assert_allclose(scorer.offsets["spending_power"], offset,
                               rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL)
    want = normalise(sum(line_lp(ln) - offset for ln in lines))
    got = scorer.score(PROFILES[0], ["established"])  # factored nodes ignore the chain so far
    np.testing.assert_allclose(got.probs, want.probs, rtol=PROB_RTOL, atol=PROB_ATOL)
    # Each distinct (type, line) is scored once: the sample's lines are all cached already.
    calls = tiny_backend.usage.scoring_calls
    scorer.score("device: iPhone 15 Pro\noccupation: college student", [])
    assert tiny_backend.usage.scoring_calls == calls
    # A bare profile carries no evidence: the uniform distribution.
    np.testing.assert_allclose(scorer.score(prompts.NO_PROFILE, []).probs, 1 / 5)


def test_chains_keep_the_full_distribution(tiny_backend) -> None:
    scorer = NodeScorer(tiny_backend, TAX, "chat", "batch")
    scorer.prime(PROFILES)
    results = search_chains(PROFILES, scorer, TAX, SearchConfig("entropy", tau=0.5, width=2))
    for r in results:
        for node in r.chain.nodes:
            values = TAX[node.type].value_names
            assert len(node.probs) == len(values) and sum(node.probs) == pytest.approx(1.0)
            assert node.probs[values.index(node.value)] == pytest.approx(node.prob)
        assert r.chain.from_record(r.chain.to_record(), TAX) == r.chain  # round trip


def test_unknown_calibration_is_refused(tiny_backend) -> None:
    with pytest.raises(ValueError, match="calibration"):
        NodeScorer(tiny_backend, TAX, "chat", "psychic")  # type: ignore[arg-type]


def test_the_fingerprint_names_the_prompts_and_the_calibration_actually_used(tiny_backend):
    """What a chain cache keys on: equal for the same scorer, different when the prompts, the
    calibration or its sample (the offsets) differ."""
    def primed(mode, calibration, sample=PROFILES):
        scorer = NodeScorer(tiny_backend, TAX, mode, calibration)
        scorer.prime(sample)
        return scorer.fingerprint()

    batch = primed("calibrated", "batch")
    assert primed("calibrated", "batch") == batch  # deterministic, offsets included
    assert set(batch["offsets"]) == set(TAX.type_names)
    other_sample = primed("calibrated", "batch", PROFILES[:2])
    assert other_sample["offsets"] != batch["offsets"]
    assert other_sample["prompts_sha256"] == batch["prompts_sha256"]
    free = primed("calibrated", "content_free")
    assert free["offsets"] != batch["offsets"] and free["calibration"] == "content_free"
    modes = {m: primed(m, "none")["prompts_sha256"] for m in ("label", "calibrated", "channel",
                                                              "chat", "factored")}
    assert len(set(modes.values())) == 5 and primed("label", "none")["offsets"] == {}


def _chains_batched_and_one_at_a_time(backend, mode: str, calibration: str, cfg: SearchConfig):
    runs = {}
    for batched in (False, True):
        backend.batch_requests = batched
        backend.clear_prefix_cache()
        backend.usage.reset()
        scorer = NodeScorer(backend, TAX, mode, calibration)  # type: ignore[arg-type]
        scorer.prime(PROFILES)
        runs[batched] = (search_chains(PROFILES, scorer, TAX, cfg), backend.usage.scoring_calls)
    backend.batch_requests = True
    return runs[False], runs[True]


def _assert_same_search(one, many) -> None:
    """Identical values and budget accounting; probabilities within 0.1% (batched fp32 kernels
    sum in another order: up to ~2e-5 on the packaged model's probabilities at 2 threads)."""
    (one_results, one_calls), (many_results, many_calls) = one, many
    assert one_calls == many_calls
    for a, b in zip(one_results, many_results):
        assert a.chain.to_text() == b.chain.to_text()
        assert (a.expansions, a.branched_nodes) == (b.expansions, b.branched_nodes)
        for x, y in zip(a.chain.nodes, b.chain.nodes):
            np.testing.assert_allclose(x.probs, y.probs, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode,calibration", [("chat", "batch"), ("calibrated", "content_free"),
                                              ("label", "none"), ("factored", "batch")])
def test_batched_requests_search_the_chains_one_at_a_time_searches(tiny_backend, mode,
                                                                   calibration) -> None:
    cfg = SearchConfig("entropy", tau=0.3, width=2, max_expansions=12)
    _assert_same_search(*_chains_batched_and_one_at_a_time(tiny_backend, mode, calibration, cfg))


@pytest.mark.slow
@pytest.mark.parametrize("mode,calibration", [("calibrated", "content_free"), ("chat", "batch")])
def test_packaged_batched_requests_search_the_same_chains(mode, calibration) -> None:
    from conftest_llm import load_backend

    backend = load_backend("packaged")
    cfg = SearchConfig("entropy", tau=0.7, width=2, max_expansions=12)
    _assert_same_search(*_chains_batched_and_one_at_a_time(backend, mode, calibration, cfg))
