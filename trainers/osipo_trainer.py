"""OSIPO: Outcome-Driven Segment-Aware Implicit Reward Policy Optimization (DESIGN.md 4.6).

The paper publishes no equations; this project defines OSIPO as follows, per step:

1. **Rollouts.** For each profile in the batch the policy samples G chains node by node over each
   type's allowed values (:class:`~scaletot_features.reasoning.constrained_decoder.ConstrainedDecoder`):
   every rollout is a valid chain, and a CPU can afford it.
2. **Outcome reward** R(chain): mean agreement of the outcome-bearing nodes with the user's
   realised outcome bucket (``outcome_reward``); an invalid chain would get the minimum.
3. **Pairs.** The best and the worst rollout of a profile by R (chosen, rejected); a profile
   whose rollouts all tie gives no pair.
4. **Segment-aware implicit reward.** Segment s is the tokens of node s's line
   (``chain_tokens``); r_s = beta * sum_{t in s} (log pi_theta(y_t|.) - log pi_ref(y_t|.)), with
   pi_ref the SFT model (a frozen copy, or the same weights with the LoRA adapters disabled).
5. **Loss** = mean over pairs of u * -log sigmoid( sum_s w_s (r_s(chosen) - r_s(rejected)) ),
   w_s emphasising the outcome-bearing segments, u the user's segment weight (inverse frequency of
   acquisition channel x sparsity bucket, mean 1). With every w_s = 1 and u = 1 this is DPO's
   sigmoid loss exactly (tests/test_osipo.py checks it against TRL's own DPOTrainer).

Written like a TRL trainer (config beside trainer, ``train()`` logging loss and reward margins),
as a small custom torch loop: the rollout phase does not fit ``transformers.Trainer``'s shape.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from trl.trainer.utils import add_fused_lm_head

from scaletot_features.reasoning.chain_tokens import (
    ChainTokens, chain_tokens, encode_prompt, sequence_segments,
)
from scaletot_features.reasoning.constrained_decoder import ConstrainedDecoder
from scaletot_features.chain import chain_text
from scaletot_features.taxonomy import Taxonomy
from trainers.osipo_config import OSIPOConfig
from trainers.osipo_reward import outcome_reward


@dataclass
class Pair:
    """One profile's chosen (best R) and rejected (worst R) rollout."""

    user_id: int
    prompt_ids: list[int]
    chosen: ChainTokens
    rejected: ChainTokens
    reward_chosen: float
    reward_rejected: float
    user_weight: float = 1.0


def osipo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    token_weights: torch.Tensor,
    user_weights: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The OSIPO loss from per-token log-probs of ``[chosen..., rejected...]`` sequences.

    ``policy_logps``/``ref_logps`` (2P, T) hold log p(token) at chain positions and 0 elsewhere;
    ``token_weights`` (2P, T) hold w_s of each token's segment (0 off the chain). Then
    sum_s w_s r_s = beta * sum_t w_t (log pi_theta - log pi_ref): the same sum regrouped by token,
    computed in DPO's own order (log-ratios, then chosen - rejected), so with every w_s = 1 and
    user weight 1 the arithmetic is TRL's sigmoid DPO loss operation for operation.
    Returns the loss and detached per-pair ``chosen``/``rejected`` rewards and ``margin``.
    """
    n = policy_logps.shape[0] // 2
    policy = (policy_logps * token_weights).sum(dim=1)
    ref = (ref_logps * token_weights).sum(dim=1)
    chosen_logratios = policy[:n] - ref[:n]
    rejected_logratios = policy[n:] - ref[n:]
    margin = beta * (chosen_logratios - rejected_logratios)
    loss = (-F.logsigmoid(margin) * user_weights.to(margin)).mean()
    stats = {"chosen": beta * chosen_logratios.detach(), "rejected": beta * rejected_logratios.detach(),
             "margin": margin.detach()}
    return loss, stats


def segment_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, segment_ids: torch.Tensor,
                    n_segments: int, beta: float) -> torch.Tensor:
    """r_s = beta * sum_{t in s} (log pi_theta - log pi_ref): (sequences, segments)."""
    diff = (policy_logps - ref_logps).detach()
    onehot = F.one_hot(segment_ids.clamp(min=0), n_segments).to(diff) * (segment_ids >= 0).unsqueeze(-1)
    return beta * torch.einsum("bt,bts->bs", diff, onehot)


def user_segment_weights(segments: Sequence[str | None], power: float = 1.0) -> np.ndarray:
    """Inverse segment frequency ** power, normalised to mean 1 over ``segments``."""
    counts = Counter(segments)
    w = np.array([counts[s] ** -power for s in segments], dtype=np.float64)
    return w / w.mean() if len(w) else w


class OSIPOTrainer:
    """Train a causal LM (SFT'd student) with OSIPO on profiles with realised outcomes.

    ``train_dataset`` rows (dicts, or a ``datasets.Dataset``) hold ``user_id``, ``prompt``
    (``student_prompt(profile_text, taxonomy)``), the labels ``args.outcome_labels`` names
    (``lt30`` and ``revenue_30``, or a labels file's columns; None = unknown), and
    optionally ``segment`` (the user's stratum, for re-weighting). With ``peft_config`` the model
    gets fresh LoRA adapters and the reference is the same model with them disabled; without, the
    reference is ``ref_model`` or a frozen copy of ``model``.
    """

    def __init__(
        self,
        model: Any,
        args: OSIPOConfig,
        train_dataset: Sequence[Mapping[str, Any]] | Any,
        processing_class: Any,
        taxonomy: Taxonomy,
        ref_model: Any | None = None,
        peft_config: Any | None = None,
    ) -> None:
        self.args = args
        self.taxonomy = taxonomy
        self.tokenizer = processing_class
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(args.seed)  # LoRA initialisation
        self.ref_model = None
        if peft_config is None:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.to(self.device).eval().requires_grad_(False)
            add_fused_lm_head(self.ref_model)
        add_fused_lm_head(model)  # before PEFT wraps it, as TRL requires
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.model = model.to(self.device)
        self.is_peft = peft_config is not None
        rows = train_dataset.to_list() if hasattr(train_dataset, "to_list") else list(train_dataset)
        if not rows:
            raise ValueError("OSIPO needs at least one training profile")
        missing = {"user_id", "prompt", *args.outcome_labels} - set(rows[0])
        if missing:
            raise ValueError(f"train_dataset rows lack columns {sorted(missing)}")
        self.rows = rows
        if args.reweight_user_segments and "segment" in rows[0]:
            weights = user_segment_weights([r["segment"] for r in rows], args.user_weight_power)
        else:
            weights = np.ones(len(rows))
        self.user_weights = {r["user_id"]: float(w) for r, w in zip(rows, weights)}
        self.segment_weights = torch.tensor(args.segment_weight_vector(taxonomy), dtype=torch.float32)
        self.buckets = args.active_buckets()
        self.decoder = ConstrainedDecoder(self.model, processing_class, taxonomy,
                                          batch_size=args.rollout_batch_size)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=args.learning_rate,
                                           weight_decay=args.weight_decay)
        self.generator = torch.Generator().manual_seed(args.seed)
        self._order = np.random.default_rng(args.seed)
        self._queue: list[int] = []
        self.log_history: list[dict[str, float]] = []
        self.global_step = 0

    # -- rollouts and pairs -------------------------------------------------------------------

    def reward(self, values: dict[str, str] | None, row: Mapping[str, Any]) -> float:
        return outcome_reward(values, {k: None if row[k] is None else float(row[k])
                                       for k in self.args.outcome_labels},
                              self.taxonomy, self.buckets, self.args.reward_invalid)

    @torch.no_grad()
    def rollouts(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Pair], list[float]]:
        """Sample G chains per profile; return the non-tied (chosen, rejected) pairs and every
        rollout's reward."""
        G = self.args.rollouts_per_profile
        self.model.eval()
        dec = self.decoder.decode([r["prompt"] for r in rows], samples=G,
                                  temperature=self.args.rollout_temperature, generator=self.generator)
        names = self.taxonomy.type_names
        pairs, all_rewards = [], []
        for i, row in enumerate(rows):
            chains = [dict(zip(names, dec.values[i * G + g])) for g in range(G)]
            rewards = [self.reward(c, row) for c in chains]
            all_rewards += rewards
            best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
            if rewards[best] - rewards[worst] <= 1e-12:
                continue
            pairs.append(Pair(
                user_id=row["user_id"],
                prompt_ids=encode_prompt(self.tokenizer, row["prompt"]),
                chosen=chain_tokens(self.tokenizer, chain_text(chains[best])),
                rejected=chain_tokens(self.tokenizer, chain_text(chains[worst])),
                reward_chosen=rewards[best], reward_rejected=rewards[worst],
                user_weight=self.user_weights.get(row["user_id"], 1.0)))
        return pairs, all_rewards

    # -- log-probs per segment ----------------------------------------------------------------

    def batch_tensors(self, pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
        """Right-padded [chosen..., rejected...] sequences: ``input_ids``, ``attention_mask`` and
        ``segment_ids`` (the node of each chain token, -1 on prompt and padding)."""
        seqs, segs = [], []
        for side in ("chosen", "rejected"):
            for p in pairs:
                chain: ChainTokens = getattr(p, side)
                room = self.args.max_length - len(chain.ids)
                prompt = p.prompt_ids[-room:] if room > 0 else p.prompt_ids[-1:]
                seqs.append(prompt + chain.ids)
                segs.append(sequence_segments(len(prompt), chain))
        width = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
        seg = torch.tensor([s + [-1] * (width - len(s)) for s in segs], device=self.device)
        return {"input_ids": ids, "attention_mask": mask, "segment_ids": seg}

    def token_logps(self, model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(token_t | tokens_<t) for t = 1.., (sequences, length - 1); 0 off the chain.

        Uses TRL's fused LM head (as TRL's DPO trainer does), which never materialises the
        (batch, length, vocabulary) logits.
        """
        labels = batch["input_ids"].masked_fill(batch["segment_ids"] < 0, -100)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=labels, fused_lm_head=True, use_cache=False)
        return out.log_probs[:, -(labels.shape[1] - 1):]

    def reference_logps(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if self.ref_model is not None:
                return self.token_logps(self.ref_model, batch)
            with self.model.disable_adapter():
                return self.token_logps(self.model, batch)

    def compute_loss(self, pairs: Sequence[Pair],
                     user_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The OSIPO loss of a batch of pairs, and its metrics (TRL's names where they exist)."""
        batch = self.batch_tensors(pairs)
        seg = batch["segment_ids"][:, 1:]
        w = self.segment_weights.to(self.device)
        token_weights = torch.where(seg >= 0, w[seg.clamp(min=0)], torch.zeros((), device=self.device))
        ref = self.reference_logps(batch)
        policy = self.token_logps(self.model, batch)
        if user_weights is None:
            user_weights = torch.tensor([p.user_weight for p in pairs], dtype=torch.float32)
        loss, st = osipo_loss(policy, ref, token_weights, user_weights.to(self.device), self.args.beta)
        per_segment = segment_rewards(policy, ref, seg, len(self.taxonomy.types), self.args.beta)
        n = len(pairs)
        seg_margin = (per_segment[:n] - per_segment[n:]).mean(0)
        metrics = {
            "loss": float(loss.detach()),
            "rewards/chosen": float(st["chosen"].mean()),
            "rewards/rejected": float(st["rejected"].mean()),
            "rewards/margins": float(st["margin"].mean()),
            "rewards/accuracies": float((st["margin"] > 0).float().mean()),
            "outcome/chosen": float(np.mean([p.reward_chosen for p in pairs])),
            "outcome/rejected": float(np.mean([p.reward_rejected for p in pairs])),
            **{f"segment_margin/{t}": float(m) for t, m in zip(self.taxonomy.type_names, seg_margin)},
        }
        return loss, metrics

    # -- training -----------------------------------------------------------------------------

    def _next_rows(self) -> list[Mapping[str, Any]]:
        out = []
        while len(out) < min(self.args.per_device_train_batch_size, len(self.rows)):
            if not self._queue:
                self._queue = list(self._order.permutation(len(self.rows)))
            out.append(self.rows[self._queue.pop()])
        return out

    def training_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        pairs, rewards = self.rollouts(self._next_rows())
        t_roll = time.perf_counter() - t0
        record: dict[str, float] = {"pairs": float(len(pairs)), "outcome/mean": float(np.mean(rewards)),
                                    "rollout_seconds": t_roll}
        if pairs:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            size = max(self.args.pairs_per_backward, 1)
            totals: dict[str, float] = {}
            for start in range(0, len(pairs), size):  # micro-batches: same gradient, less memory
                chunk = pairs[start:start + size]
                share = len(chunk) / len(pairs)
                loss, metrics = self.compute_loss(chunk)
                (loss * share).backward()
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v * share
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            self.optimizer.step()
            record.update(totals, grad_norm=float(grad_norm))
        self.global_step += 1
        record.update(step=float(self.global_step), seconds=time.perf_counter() - t0)
        return record

    def train(self, progress: bool = True) -> dict[str, Any]:
        """Run ``max_steps`` steps; returns a summary with the log history (like TRL's
        ``trainer.state.log_history``)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        t0 = time.perf_counter()
        cols = [TextColumn("osipo {task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn()]
        with Progress(*cols, disable=not progress, transient=False) as bar:
            task = bar.add_task("", total=self.args.max_steps)
            for _ in range(self.args.max_steps):
                rec = self.training_step()
                if self.global_step % self.args.logging_steps == 0:
                    self.log_history.append(rec)
                if "loss" in rec:
                    bar.update(task, description=f"loss={rec['loss']:.4f} "
                               f"margin={rec['rewards/margins']:.4f} R={rec['outcome/mean']:.2f}")
                bar.advance(task)
        seconds = time.perf_counter() - t0
        losses = [r["loss"] for r in self.log_history if "loss" in r]
        return {
            "steps": self.global_step,
            "updates": len(losses),
            "seconds": seconds,
            "seconds_per_step": seconds / max(self.global_step, 1),
            "first_loss": losses[0] if losses else math.nan,
            "last_loss": losses[-1] if losses else math.nan,
            "log_history": self.log_history,
        }

    def save_model(self, output_dir: str | Path | None = None,
                   manifest: Mapping[str, Any] | None = None) -> Path:
        """Write a merged, offline-loadable model folder (atomically; replaces an old one).

        LoRA adapters are merged into the weights, so the trainer's model is a plain model after.
        """
        out = Path(output_dir or self.args.output_dir)
        model = self.model.merge_and_unload() if self.is_peft else self.model
        self.model, self.is_peft = model, False
        from trainers.sft import save_student

        return save_student(model, self.tokenizer, out, dict(manifest or {}))
