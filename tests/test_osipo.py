"""OSIPO (DESIGN.md 4.6): segment masks, equality with TRL's DPO loss, outcome rewards, training."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from scaletot_features.chain import chain_text
from scaletot_features.data.io import read_table
from scaletot_features.dataset import DatasetLayout
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA
from scaletot_features.reasoning.prompts import student_prompt
from scaletot_features.reasoning.chain_tokens import chain_tokens, encode_prompt, sequence_segments
from scaletot_features.taxonomy import DEFAULT_TAXONOMY as TAX, StateType, Taxonomy
from trainers.osipo_config import OSIPOConfig
from trainers.osipo_reward import DEFAULT_OUTCOME_BUCKETS, REWARD_INVALID, outcome_reward
from trainers.osipo_trainer import (
    OSIPOTrainer, Pair, osipo_loss, segment_rewards, user_segment_weights,
)
from trainers.sft import load_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


_name = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True)


@st.composite
def taxonomy_and_chain(draw):
    """A random taxonomy (1-6 types, 2-5 values each) and a random chain over it."""
    names = draw(st.lists(_name, min_size=1, max_size=6, unique=True))
    types = []
    for n in names:
        values = draw(st.lists(_name, min_size=2, max_size=5, unique=True))
        types.append(StateType(name=n, description="d", values={v: f"value {v}" for v in values}))
    tax = Taxonomy(types=types)
    chain = {t.name: draw(st.sampled_from(t.value_names)) for t in tax.types}
    profile = draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
                           max_size=60))
    return tax, chain, profile or "(no profile information)"


@hsettings(max_examples=150, deadline=None)
@given(case=taxonomy_and_chain())
def test_segments_partition_exactly_the_chain_tokens(tokenizer, case):
    tax, values, profile = case
    text = chain_text(values)
    prompt = student_prompt(profile, tax)
    pids = encode_prompt(tokenizer, prompt)
    chain = chain_tokens(tokenizer, text)
    # The trainer's segment ids (batch_tensors), as one boolean mask per segment.
    masks = np.array(sequence_segments(len(pids), chain)) == np.arange(len(tax.types))[:, None]
    # Each chain token in exactly one segment; no prompt token in any.
    assert masks.sum(axis=0).tolist() == [0] * len(pids) + [1] * len(chain.ids)
    # Segment s is node s's line and the newline that ends it, nothing else.
    lines = text.split("\n")
    seq = np.array(pids + chain.ids)
    for s, line in enumerate(lines):
        want = line + ("\n" if s < len(lines) - 1 else "")
        assert tokenizer.decode(seq[masks[s]].tolist()) == want
    # The training sequence is the tokenisation of the joined text (no boundary merge).
    assert pids + chain.ids == list(tokenizer(prompt + text).input_ids)


def _rows(population, n=8):
    """Training rows from real profiles and labels of the tiny population."""
    layout = DatasetLayout(population)
    profiles = read_table(layout.profiles).slice(0, n).to_pylist()
    ids = [p["user_id"] for p in profiles]
    labels = {r["user_id"]: r for r in read_table(layout.labels).to_pylist()}
    segs = ["a", "a", "a", "b", "a", "a", "b", "c"]
    return [{"user_id": u, "prompt": student_prompt(DEFAULT_PROFILE_SCHEMA.to_text(p), TAX),
             "lt30": labels[u]["lt30"], "revenue_30": labels[u]["revenue_30"],
             "segment": segs[i % len(segs)]} for i, (u, p) in enumerate(zip(ids, profiles))]


def _random_pairs(tokenizer, rows, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for r in rows:
        a, b = ({t.name: t.value_names[rng.integers(len(t.value_names))] for t in TAX.types}
                for _ in range(2))
        pairs.append(Pair(r["user_id"], encode_prompt(tokenizer, r["prompt"]),
                          chain_tokens(tokenizer, chain_text(a)), chain_tokens(tokenizer, chain_text(b)),
                          1.0, 0.0, 1.0))
    return pairs


def _perturbed(model, seed=1, scale=0.02):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


def test_osipo_loss_equals_trl_dpo_sigmoid_loss(tiny_model_dir, tiny_population, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ref, tok = load_model(tiny_model_dir)
    policy = _perturbed(ref)
    rows = _rows(tiny_population, 6)
    beta = 0.3
    args = OSIPOConfig(beta=beta, outcome_segment_weight=1.0, reweight_user_segments=False,
                       device="cpu", rollouts_per_profile=2)
    trainer = OSIPOTrainer(copy.deepcopy(policy), args, rows, tok, TAX, ref_model=copy.deepcopy(ref))
    assert trainer.segment_weights.tolist() == [1.0] * len(TAX.types)
    pairs = _random_pairs(tok, rows)
    assert all(p.user_weight == 1.0 for p in pairs)
    with torch.no_grad():
        ours, _ = trainer.compute_loss(pairs)

    dpo = DPOTrainer(
        model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), beta=beta, loss_type=["sigmoid"],
                       use_cpu=True, report_to="none", bf16=False, gradient_checkpointing=False),
        train_dataset=Dataset.from_dict({"prompt": ["p"], "chosen": [" a"], "rejected": [" b"]}),
        processing_class=tok,
    )
    batch = trainer.batch_tensors(pairs)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["segment_ids"] >= 0).long()}
    with torch.no_grad():
        theirs = dpo._compute_loss(dpo.model, inputs, return_outputs=False)
    assert abs(float(ours) - float(theirs)) < 1e-6
    assert abs(float(theirs) - math.log(2)) > 1e-3  # policy != reference: a real comparison

    # Emphasising segments or re-weighting users moves the loss away from DPO's.
    trainer.segment_weights = torch.tensor(OSIPOConfig().segment_weight_vector(TAX))
    with torch.no_grad():
        weighted, _ = trainer.compute_loss(pairs)
    assert abs(float(weighted) - float(theirs)) > 1e-4


def test_osipo_loss_regrouped_by_token_is_the_segment_formula():
    """loss = mean_u u * -log sigmoid(sum_s w_s (r_s(chosen) - r_s(rejected))), written out."""
    g = torch.Generator().manual_seed(0)
    P, T, S, beta = 5, 30, 6, 0.1
    seg = torch.randint(-1, S, (2 * P, T), generator=g)
    policy = torch.randn(2 * P, T, generator=g).double() * (seg >= 0)
    ref = torch.randn(2 * P, T, generator=g).double() * (seg >= 0)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 0.0]).double()
    u = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0]).double()
    token_w = torch.where(seg >= 0, w[seg.clamp(min=0)], torch.zeros(()).double())
    loss, stats = osipo_loss(policy, ref, token_w, u, beta)
    r = segment_rewards(policy, ref, seg, S, beta)  # (2P, S)
    margin = ((r[:P] - r[P:]) * w).sum(1)
    expected = (-torch.nn.functional.logsigmoid(margin) * u).mean()
    assert torch.allclose(loss, expected, atol=1e-12)
    assert torch.allclose(stats["margin"], margin, atol=1e-12)


def test_matching_chain_gets_higher_reward_than_contradicting():
    base = {t.name: t.value_names[0] for t in TAX.types}
    engaged_payer = {"lt30": 20.0, "revenue_30": 40.0}
    match = {**base, "retention_outlook": "habitual", "monetization_propensity": "frequent",
             "spending_power": "high"}
    near = {**match, "retention_outlook": "casual"}
    contra = {**base, "retention_outlook": "churn_risk", "monetization_propensity": "none",
              "spending_power": "low"}
    r_match, r_near, r_contra = (outcome_reward(c, engaged_payer, TAX) for c in (match, near, contra))
    assert r_match == 1.0 and r_contra == 0.0 and r_match > r_near > r_contra
    assert outcome_reward(None, engaged_payer, TAX) == REWARD_INVALID < r_contra
    # A churned non-payer: churn_risk + none match; spending power is not informed by revenue 0.
    churned = {"lt30": 0.0, "revenue_30": 0.0}
    assert outcome_reward(contra, churned, TAX) == 1.0 > outcome_reward(match, churned, TAX)
    assert outcome_reward({**contra, "spending_power": "high"}, churned, TAX) == 1.0
    # Only the configured outcome counts.
    lt_only = [b for b in DEFAULT_OUTCOME_BUCKETS if b.label == "lt30"]
    assert outcome_reward(near, engaged_payer, TAX, lt_only) == 0.5


def test_segment_weights_emphasise_outcome_types():
    w = dict(zip(TAX.type_names, OSIPOConfig(outcome="lt30").segment_weight_vector(TAX)))
    assert w["retention_outlook"] == w["engagement_intent"] == 2.0
    assert w["monetization_propensity"] == w["life_stage"] == 1.0
    w = dict(zip(TAX.type_names, OSIPOConfig(outcome="revenue_30", segment_weights={"life_stage": 3.0})
                 .segment_weight_vector(TAX)))
    assert w["monetization_propensity"] == w["spending_power"] == 2.0 and w["life_stage"] == 3.0
    with pytest.raises(ValueError, match="unknown types"):
        OSIPOConfig(segment_weights={"nope": 1.0}).segment_weight_vector(TAX)


def test_user_segment_weights_lift_rare_segments():
    w = user_segment_weights(["a"] * 6 + ["b"] * 2 + ["c"])
    assert w.mean() == pytest.approx(1.0)
    assert w[-1] > w[6] > w[0]
    assert w[:6].sum() == pytest.approx(w[6:8].sum()) == pytest.approx(w[8])  # segments weigh alike
    assert np.allclose(user_segment_weights(["a", "b"], power=0.0), 1.0)


@pytest.mark.parametrize("lora", [False, True])
def test_osipo_runs_on_the_tiny_model_and_changes_the_weights(tiny_model_dir, tiny_population, tmp_path,
                                                              lora):
    from peft import LoraConfig

    from scaletot_features.llm.hf import TransformersBackend
    from scaletot_features.reasoning.constrained_decoder import ConstrainedDecoder

    model, tok = load_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = _rows(tiny_population, 8)
    args = OSIPOConfig(output_dir=str(tmp_path / "osipo"), max_steps=2, rollouts_per_profile=4,
                       per_device_train_batch_size=4, learning_rate=1e-2 if lora else 1e-3,
                       device="cpu", seed=3)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    trainer = OSIPOTrainer(model, args, rows, tok, TAX, peft_config=peft)
    summary = trainer.train(progress=False)
    assert summary["steps"] == 2 and len(summary["log_history"]) == 2
    assert summary["updates"] >= 1 and math.isfinite(summary["last_loss"])
    for rec in summary["log_history"]:
        if rec["pairs"]:
            assert rec["outcome/chosen"] > rec["outcome/rejected"]
    out = trainer.save_model(manifest={"stage": "osipo", "base_model_id": "tiny"})
    assert not list(out.parent.glob(".osipo.tmp-*"))
    backend = TransformersBackend(out, device="cpu")
    after = backend.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "OSIPO left every weight as it was"
    dec = ConstrainedDecoder(backend.model, backend.tokenizer, TAX)
    assert len(dec.decode([rows[0]["prompt"]]).values[0]) == len(TAX.types)
