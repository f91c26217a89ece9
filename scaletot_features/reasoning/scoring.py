"""Turn a backend's log-probabilities into a distribution over one node's allowed values.

One call of :meth:`NodeScorer.score` is one "scoring call" in the ToT budget: it scores every
allowed value of the next node for one partial chain, in one batched backend call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scaletot_features.llm.backend import LLMBackend
from scaletot_features.reasoning import prompts
from scaletot_features.taxonomy import Taxonomy

ScoringMode = Literal["label", "calibrated", "channel"]
SCORING_MODES: tuple[str, ...] = ("label", "calibrated", "channel")


@dataclass(frozen=True)
class NodeDistribution:
    """p_t over the allowed values of one node, with its normalised entropy H_t in [0, 1]."""

    probs: np.ndarray
    entropy: float

    @property
    def argmax(self) -> int:
        return int(np.argmax(self.probs))


def normalise(scores: np.ndarray) -> NodeDistribution:
    """Softmax of log-scores, and entropy normalised by log |values|."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max()
    p = np.exp(s)
    p /= p.sum()
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum() / np.log(len(p))) if len(p) > 1 else 0.0
    return NodeDistribution(probs=p, entropy=min(max(h, 0.0), 1.0))


class NodeScorer:
    """Scores the next node of a partial chain under one of the three modes (prompts.py)."""

    def __init__(self, backend: LLMBackend, taxonomy: Taxonomy, mode: ScoringMode = "channel"):
        if mode not in SCORING_MODES:
            raise ValueError(f"scoring mode {mode!r} not in {SCORING_MODES}")
        self.backend = backend
        self.taxonomy = taxonomy
        self.mode = mode
        self._content_free: dict[str, np.ndarray] = {}

    def content_free(self, type_name: str) -> np.ndarray:
        """Calibration scores under a content-free profile: once per type, then cached."""
        if type_name not in self._content_free:
            state = self.taxonomy[type_name]
            self._content_free[type_name] = self.backend.score_continuations(
                prompts.calibrated_content_free_prefix(self.taxonomy),
                prompts.description_continuations(state),
            )
        return self._content_free[type_name]

    def prime(self) -> None:
        """Compute every per-taxonomy cache up front, so per-user cost excludes it."""
        if self.mode == "calibrated":
            for t in self.taxonomy.type_names:
                self.content_free(t)

    def score(self, profile_text: str, values: list[str]) -> NodeDistribution:
        return self.score_many([(profile_text, values)])[0]

    def score_many(self, requests: list[tuple[str, list[str]]]) -> list[NodeDistribution]:
        """Score the next node of each (profile, chain so far).

        ``label`` and ``calibrated`` share each request's prefix across its candidates (one
        batched forward over the prefix's KV cache); ``channel`` has no shared prefix, so all
        requests' (description, profile) pairs go through the backend in one batched call.
        """
        if self.mode == "channel":
            heads: list[str] = []
            tails: list[str] = []
            sizes: list[int] = []
            for profile_text, values in requests:
                state = self.taxonomy.types[len(values)]
                h = prompts.channel_prefixes(state, self.taxonomy, values)
                heads += h
                tails += [prompts.channel_continuation(profile_text)] * len(h)
                sizes.append(len(h))
            raw = np.asarray(self.backend.score_pairs(heads, tails), dtype=np.float64)
            out, start = [], 0
            for k in sizes:
                out.append(normalise(raw[start:start + k]))
                start += k
            return out
        out = []
        for profile_text, values in requests:
            state = self.taxonomy.types[len(values)]
            if self.mode == "label":
                raw = self.backend.score_continuations(
                    prompts.label_prefix(profile_text, self.taxonomy, values),
                    prompts.label_continuations(state),
                )
            else:
                raw = self.backend.score_continuations(
                    prompts.calibrated_prefix(profile_text, self.taxonomy, values),
                    prompts.description_continuations(state),
                ) - self.content_free(state.name)
            out.append(normalise(np.asarray(raw, dtype=np.float64)))
        return out
