"""Configuration of OSIPO (Outcome-Driven Segment-Aware Implicit Reward Policy Optimization).

A plain dataclass beside its trainer, as TRL pairs ``DPOConfig`` with ``DPOTrainer``. It does not
subclass ``transformers.TrainingArguments``: the trainer is a small custom loop (rollouts, then a
pairwise loss), and a hundred unused arguments would only hide the twelve that matter.
``trainers.student_stage.osipo_config(settings)`` builds one from the ``student`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scaletot_features.taxonomy import Taxonomy
from trainers.osipo_reward import DEFAULT_OUTCOME_BUCKETS, REWARD_INVALID, OutcomeBucket

Outcome = Literal["lt30", "revenue_30", "both", "labels"]
LEGACY_OUTCOMES = {"lt30": ("lt30",), "revenue_30": ("revenue_30",),
                   "both": ("lt30", "revenue_30")}
"""The event-derived outcomes and the labels they read (with the fixed default buckets)."""


@dataclass
class OSIPOConfig:
    """Everything :class:`trainers.osipo_trainer.OSIPOTrainer` reads.

    Parameters
    ----------
    output_dir:
        Where ``save_model`` writes the merged model folder (atomically) by default.
    beta:
        Scale of the implicit reward r_s = beta * sum_{t in s} (log pi_theta - log pi_ref), as in
        DPO: larger keeps the policy closer to the SFT reference.
    rollouts_per_profile:
        G, chains sampled per profile per step. The best and the worst (by outcome reward) form
        the profile's pair; a profile whose G rollouts tie is skipped.
    rollout_temperature:
        Temperature of the node-by-node value sampling (1 = the policy's own distribution).
    outcome:
        Which realised outcome drives the reward and the segment emphasis: ``"lt30"`` (active
        days), ``"revenue_30"`` (revenue), ``"both"``, or ``"labels"``: every bucket of
        ``outcome_buckets``, on the labels they name (a labels file's columns, with buckets from
        ``osipo_reward.quantile_buckets``).
    outcome_buckets:
        How labels map to state values (see ``OutcomeBucket``); only the buckets whose label is
        part of ``outcome`` are used. The defaults fit the default taxonomy and 30-day labels:
        retention from lt30 (<2 churn_risk, 2-4 casual, >=5 habitual), monetization from
        revenue (0 none, <10 occasional, >=10 frequent) and spending power from a payer's
        revenue (<5 low, 5-20 medium, >=20 high).
    outcome_segment_weight:
        w_s for the segments of the types the taxonomy lists under ``outcome_types`` for the
        chosen outcome(s): they carry the outcome, so the loss leans on them.
    segment_weights:
        Explicit w_s per type name; overrides the two defaults above for the types it names.
    reweight_user_segments:
        Weight each user's pair by the inverse frequency of its segment (acquisition channel x
        sparsity bucket, the coverage strata), normalised to mean 1 over the training users, so
        rare segments are not drowned by common ones. Off: every user weighs 1.
    user_weight_power:
        Exponent of that inverse frequency (1 = full inverse frequency, 0.5 = softer).
    reward_invalid:
        Outcome reward of an invalid chain: the minimum (valid chains score in [0, 1]).
    learning_rate, weight_decay, max_grad_norm:
        AdamW settings for the trainable parameters (the LoRA adapters, or all weights).
    max_steps:
        Optimiser steps; each takes ``per_device_train_batch_size`` profiles.
    per_device_train_batch_size:
        Profiles per step (so up to that many pairs per step).
    max_length:
        Longest prompt + chain in tokens; longer prompts lose their oldest tokens.
    rollout_batch_size:
        Prompts decoded together during rollouts.
    pairs_per_backward:
        Pairs per forward/backward pass; a step's pairs are split into such micro-batches and
        their gradients accumulated (the same gradient as one pass, in bounded memory: about
        0.9 GB of activations per pair for SmolLM2-135M at this chain length).
    logging_steps:
        Append a log record every this many steps.
    seed:
        Seeds the profile order and the rollout sampling.
    device:
        ``"cpu"``, ``"cuda"`` or None (a GPU when there is one).
    """

    output_dir: str = "osipo"
    beta: float = 0.1
    rollouts_per_profile: int = 4
    rollout_temperature: float = 1.0
    outcome: Outcome = "both"
    outcome_buckets: tuple[OutcomeBucket, ...] = DEFAULT_OUTCOME_BUCKETS
    outcome_segment_weight: float = 2.0
    segment_weights: dict[str, float] = field(default_factory=dict)
    reweight_user_segments: bool = True
    user_weight_power: float = 1.0
    reward_invalid: float = REWARD_INVALID
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int = 20
    per_device_train_batch_size: int = 4
    max_length: int = 384
    rollout_batch_size: int = 8
    pairs_per_backward: int = 4
    logging_steps: int = 1
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.rollouts_per_profile < 2:
            raise ValueError("rollouts_per_profile must be >= 2: a pair needs two rollouts")
        if self.outcome not in (*LEGACY_OUTCOMES, "labels"):
            raise ValueError(f"outcome must be lt30, revenue_30, both or labels, "
                             f"got {self.outcome!r}")
        if self.outcome == "labels" and not self.outcome_buckets:
            raise ValueError("outcome 'labels' needs outcome_buckets (quantile_buckets)")
        if self.rollout_temperature <= 0:
            raise ValueError("rollout_temperature must be > 0 (rollouts are sampled)")

    @property
    def outcome_labels(self) -> tuple[str, ...]:
        if self.outcome == "labels":
            return tuple(dict.fromkeys(b.label for b in self.outcome_buckets))
        return LEGACY_OUTCOMES[self.outcome]

    def active_buckets(self) -> tuple[OutcomeBucket, ...]:
        """The buckets the reward uses: those of the configured outcome(s)."""
        return tuple(b for b in self.outcome_buckets if b.label in self.outcome_labels)

    def segment_weight_vector(self, taxonomy: Taxonomy) -> list[float]:
        """w_s for each type in taxonomy order."""
        emphasised = {t for o in self.outcome_labels for t in taxonomy.outcome_types.get(o, [])}
        emphasised |= {b.type for b in self.active_buckets()}
        unknown = set(self.segment_weights) - set(taxonomy.type_names)
        if unknown:
            raise ValueError(f"segment_weights names unknown types {sorted(unknown)}")
        return [float(self.segment_weights.get(
            t, self.outcome_segment_weight if t in emphasised else 1.0)) for t in taxonomy.type_names]
