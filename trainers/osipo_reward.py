"""OSIPO's outcome reward: how well a chain's outcome-bearing nodes agree with what happened.

A realised label (``lt30`` active days, ``revenue_30`` revenue) falls into one of a state type's
values through an :class:`OutcomeBucket`; a chain's reward is the mean agreement of its nodes
with those buckets (:func:`outcome_reward`). The OSIPO trainer (``osipo_trainer.py``) ranks its
rollouts by it, ``osipo_config.py`` chooses the buckets, and ``benchmarks/student.py`` reports it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scaletot_features.taxonomy import Taxonomy


@dataclass(frozen=True)
class OutcomeBucket:
    """How a realised label maps onto one state type's values (for the outcome reward).

    The bucket index is the number of ``edges`` at or below the label value, so ``values`` has
    ``len(edges) + 1`` entries in ascending order. ``positive_only``: users whose label is 0
    say nothing about this type (no reward on it), e.g. spending power of non-payers.
    """

    type: str
    label: str  # "lt30" (active days) or "revenue_30" (revenue)
    edges: tuple[float, ...]
    values: tuple[str, ...]
    positive_only: bool = False

    def bucket(self, x: float) -> str | None:
        if self.positive_only and not x > 0:
            return None
        return self.values[bisect.bisect_right(list(self.edges), x)]


DEFAULT_OUTCOME_BUCKETS: tuple[OutcomeBucket, ...] = (
    # Thresholds fit the default taxonomy and 30-day labels; see trainers/osipo_config.py.
    OutcomeBucket("retention_outlook", "lt30", (2.0, 5.0), ("churn_risk", "casual", "habitual")),
    OutcomeBucket("monetization_propensity", "revenue_30", (1e-9, 10.0),
                  ("none", "occasional", "frequent")),
    OutcomeBucket("spending_power", "revenue_30", (5.0, 20.0), ("low", "medium", "high"),
                  positive_only=True),
)

REWARD_INVALID = -1.0
"""The outcome reward of an invalid chain: below any valid chain's (which lie in [0, 1])."""


def node_agreement(taxonomy: Taxonomy, type_name: str, predicted: str, realised: str) -> float:
    """1 for the realised bucket, falling linearly with the distance along the type's (ordered)
    values to 0 at the far end: a near miss beats a far one, and ties between rollouts are rarer."""
    names = taxonomy[type_name].value_names
    return 1.0 - abs(names.index(predicted) - names.index(realised)) / (len(names) - 1)


def outcome_reward(values: dict[str, str] | None, labels: dict[str, float], taxonomy: Taxonomy,
                   buckets: Sequence[OutcomeBucket] = DEFAULT_OUTCOME_BUCKETS,
                   invalid: float = REWARD_INVALID) -> float:
    """Mean agreement of the outcome-bearing nodes with the realised buckets, in [0, 1].

    ``values`` None (an invalid chain) gets ``invalid``. A user whose labels inform no bucket
    gets 0.5 for every chain (so none of its pairs is used: they tie).
    """
    if values is None:
        return invalid
    scores = []
    for b in buckets:
        realised = b.bucket(float(labels[b.label]))
        if realised is not None:
            scores.append(node_agreement(taxonomy, b.type, values[b.type], realised))
    return float(np.mean(scores)) if scores else 0.5
