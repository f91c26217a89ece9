"""Labelled demonstrations (teacher.few_shot): the bins, the pick, the pool, the prompts, and a
real teach run with them on the tiny population and the tiny random model."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest_llm import tiny_backend, tiny_model_dir  # noqa: F401  (fixtures)

from scaletot_features.config import build_settings
from scaletot_features.data.io import read_table
from scaletot_features.reasoning import prompts
from scaletot_features.reasoning.demonstrations import (
    Demonstration,
    demonstration_block,
    outcome_bins,
    stratified_pick,
)
from scaletot_features.reasoning.scoring import NodeScorer
from scaletot_features.taxonomy import DEFAULT_TAXONOMY as TAX
from trainers.evaluate import split_test
from trainers.few_shot import FewShotError, select_demonstrations
from trainers.teach import load_chains, teach, teacher_layout

PROFILE = "occupation: investment banker"
DEMOS = demonstration_block([Demonstration("occupation: nurse", {"spending_power": "medium"}),
                             Demonstration("occupation: surgeon", {"spending_power": "high"})],
                            TAX)


def test_outcome_bins_are_quantiles_and_ties_share_the_lowest() -> None:
    np.testing.assert_array_equal(outcome_bins(np.arange(9.0), 3), [0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Zero-inflated: every zero in bin 0, the payers above; the middle bin may stay empty.
    np.testing.assert_array_equal(outcome_bins(np.array([0, 0, 0, 0, 0, 0, 5.0, 9.0]), 3),
                                  [0, 0, 0, 0, 0, 0, 2, 2])
    assert outcome_bins(np.array([1.0, 2.0]), 1).tolist() == [0, 0]


def test_stratified_pick_takes_the_bins_in_turn_in_order() -> None:
    bins = np.array([0, 0, 0, 0, 1, 2, 2])
    order = np.array([6, 0, 4, 1, 5, 2, 3])
    got = stratified_pick(bins, order, 5)
    assert got == [6, 0, 4, 1, 5]  # bin 0: 0, 1; bin 1: 4; bin 2: 6, 5 - listed in `order`
    assert sorted(stratified_pick(bins, order, 99)) == list(range(7))  # no more than there is


def test_demonstrations_precede_every_prompt_but_change_no_template() -> None:
    msgs = prompts.chat_messages(PROFILE, TAX, ["established"], DEMOS)
    assert msgs[0]["content"].startswith(prompts.CHAT_SYSTEM) and "surgeon" in msgs[0]["content"]
    assert msgs[1:] == prompts.chat_messages(PROFILE, TAX, ["established"])[1:]
    for plain, shown in ((prompts.calibrated_prefix(PROFILE, TAX, []),
                          prompts.calibrated_prefix(PROFILE, TAX, [], DEMOS)),
                         (prompts.label_prefix(PROFILE, TAX, []),
                          prompts.label_prefix(PROFILE, TAX, [], DEMOS)),
                         (prompts.calibrated_content_free_prefix(TAX),
                          prompts.calibrated_content_free_prefix(TAX, DEMOS))):
        assert shown == f"{DEMOS}\n\n{plain}"
    assert "spending power: high" in DEMOS and demonstration_block([], TAX) == ""


def test_demonstrations_move_the_scores_and_the_fingerprint(tiny_backend) -> None:
    plain = NodeScorer(tiny_backend, TAX, "chat", "none")
    shown = NodeScorer(tiny_backend, TAX, "chat", "none", DEMOS)
    a, b = plain.score(PROFILE, []).probs, shown.score(PROFILE, []).probs
    assert not np.allclose(a, b, rtol=1e-3, atol=1e-6)  # the model read them
    assert plain.fingerprint()["prompts_sha256"] != shown.fingerprint()["prompts_sha256"]
    with pytest.raises(ValueError, match="demonstrations"):
        NodeScorer(tiny_backend, TAX, "channel", None, DEMOS)


def _settings(**teacher):
    return build_settings("tiny", {"teacher": {"model": "tiny-random", **teacher}})


def test_the_pool_excludes_covered_and_test_users_and_is_stratified(population_copy) -> None:
    s = _settings(scoring="calibrated", few_shot=6)
    labels = read_table(population_copy / "labels").to_pandas().set_index("user_id")
    covered = labels.index.to_numpy()[:40]
    demos = select_demonstrations(population_copy, s, covered)
    assert len(demos) == 6
    test = split_test(labels.index.to_numpy(), covered, s.ltv.test_fraction, s.ltv.split_seed)
    excluded = set(covered) | set(labels.index.to_numpy()[test])
    profiles = read_table(population_copy / "profiles").to_pylist()
    schema = s.profile_schema()
    text_of = {r["user_id"]: schema.to_text(r) for r in profiles}
    allowed = {t for u, t in text_of.items() if u not in excluded}
    assert all(d.profile_text in allowed for d in demos)
    # Every outcome-bearing type has a value, and the first one's levels are all shown.
    tax = s.taxonomy()
    outcome_types = {t for ts in tax.outcome_types.values() for t in ts}
    assert all(set(d.values) == outcome_types for d in demos)
    first = next(t for t in tax.type_names if t in outcome_types)
    assert len({d.values[first] for d in demos}) >= 2
    assert select_demonstrations(population_copy, s, covered) == demos  # deterministic


def test_bad_few_shot_settings_are_refused_before_any_model(population_copy) -> None:
    covered = np.array([], dtype=np.int64)
    with pytest.raises(FewShotError, match="channel"):
        select_demonstrations(population_copy, _settings(scoring="channel", few_shot=2), covered)
    with pytest.raises(FewShotError, match="only"):
        select_demonstrations(population_copy, _settings(scoring="chat", few_shot=10**6), covered)
    (population_copy / "labels").rename(population_copy / "labels_gone")
    with pytest.raises(FewShotError, match="needs labels"):
        select_demonstrations(population_copy, _settings(scoring="chat", few_shot=2), covered)
    assert select_demonstrations(population_copy, _settings(few_shot=0), covered) == []


def test_teach_with_demonstrations_writes_chains_of_its_own_key(population_copy, tmp_path) -> None:
    plain_dir = tmp_path / "plain"
    shutil.copytree(population_copy, plain_dir)
    s = _settings(scoring="calibrated", search="greedy", few_shot=4)
    summary = teach(population_copy, s, progress=False)
    chains = load_chains(population_copy)
    covered = pq.read_table(teacher_layout(population_copy).coverage).column("user_id")
    assert summary.written == chains.num_rows == len(covered)
    # The teacher's prompts held the block: the same users without it get other distributions.
    teach(plain_dir, _settings(scoring="calibrated", search="greedy"), progress=False)
    col = "spending_power_probs"
    shown = chains.sort_by("user_id").column(col).to_pylist()
    plain = load_chains(plain_dir).sort_by("user_id").column(col).to_pylist()
    assert not np.allclose(np.array(shown), np.array(plain), rtol=1e-3, atol=1e-6)
    # A run without demonstrations is another configuration: refused on resume.
    with pytest.raises(RuntimeError, match="overwrite"):
        teach(population_copy, _settings(scoring="calibrated", search="greedy"), progress=False)


def test_a_prompt_the_backend_would_cut_is_refused_before_calibration(population_copy) -> None:
    s = _settings(scoring="calibrated", search="greedy", few_shot=40, max_prompt_tokens=256)
    with pytest.raises(ValueError, match=r"max_prompt_tokens=256 \(the few-shot block"):
        teach(population_copy, s, progress=False)
    assert not teacher_layout(population_copy).calibration.exists()  # nothing was spent
    assert not teacher_layout(population_copy).chains.exists()
