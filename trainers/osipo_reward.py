"""OSIPO's outcome reward: how well a chain's outcome-bearing nodes agree with what happened.

A realised label (``lt30`` active days, ``revenue_30`` revenue, or a labels file's own column
such as ``annual_income``) falls into one of a state type's values through an
:class:`OutcomeBucket`; a chain's reward is the mean agreement of its nodes with those buckets
(:func:`outcome_reward`). The event labels have fixed buckets (:data:`DEFAULT_OUTCOME_BUCKETS`);
a labels file's columns get theirs from the data (:func:`quantile_buckets`). The OSIPO trainer (``osipo_trainer.py``) ranks its
rollouts by it, ``osipo_config.py`` chooses the buckets, and ``benchmarks/student.py`` reports it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scaletot_features.reasoning.demonstrations import outcome_cuts
from scaletot_features.taxonomy import Taxonomy


@dataclass(frozen=True)
class OutcomeBucket:
    """How a realised label maps onto one state type's values (for the outcome reward).

    The bucket index is the number of ``edges`` at or below the label value (``side="right"``)
    or strictly below it (``side="left"``: a value on an edge falls in the lower bucket, the rule
    of the quantile bins, ``reasoning/demonstrations.outcome_bins``), so ``values`` has
    ``len(edges) + 1`` entries in ascending order. ``positive_only``: users whose label is 0
    say nothing about this type (no reward on it), e.g. spending power of non-payers. An unknown
    label (None or NaN) says nothing either.
    """

    type: str
    label: str  # "lt30" (active days), "revenue_30" (revenue) or a labels file's column
    edges: tuple[float, ...]
    values: tuple[str, ...]
    positive_only: bool = False
    side: str = "right"

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise ValueError(f"OutcomeBucket.side must be left or right, got {self.side!r}")
        if len(self.values) != len(self.edges) + 1:
            raise ValueError(f"OutcomeBucket {self.type}: {len(self.edges)} edges need "
                             f"{len(self.edges) + 1} values, got {len(self.values)}")

    def bucket(self, x: float | None) -> str | None:
        if x is None or x != x:  # unknown (NaN != NaN)
            return None
        if self.positive_only and not x > 0:
            return None
        find = bisect.bisect_right if self.side == "right" else bisect.bisect_left
        return self.values[find(list(self.edges), x)]

    def as_dict(self) -> dict:
        """What the OSIPO manifest records of it."""
        return {"type": self.type, "label": self.label, "edges": [float(e) for e in self.edges],
                "values": list(self.values), "positive_only": self.positive_only,
                "side": self.side}


DEFAULT_OUTCOME_BUCKETS: tuple[OutcomeBucket, ...] = (
    # Thresholds fit the default taxonomy and 30-day labels; see trainers/osipo_config.py.
    OutcomeBucket("retention_outlook", "lt30", (2.0, 5.0), ("churn_risk", "casual", "habitual")),
    OutcomeBucket("monetization_propensity", "revenue_30", (1e-9, 10.0),
                  ("none", "occasional", "frequent")),
    OutcomeBucket("spending_power", "revenue_30", (5.0, 20.0), ("low", "medium", "high"),
                  positive_only=True),
)

def quantile_buckets(taxonomy: Taxonomy, columns: dict[str, str],
                     labels: dict[str, Sequence[float | None]]) -> tuple[OutcomeBucket, ...]:
    """Buckets read off the data: for each state type -> label column of ``columns``, the
    type's values (low to high, the taxonomy's convention) over the quantile bins of that
    column's known values in ``labels`` (column -> values; None/NaN = unknown, left out), with
    the cut points and the tie rule of ``reasoning/demonstrations.outcome_bins``. In taxonomy
    order. Pass the training users' labels only: the edges are fitted on them."""
    out = []
    for t in taxonomy.type_names:
        if t not in columns:
            continue
        col = columns[t]
        y = np.array([v for v in labels[col] if v is not None], dtype=np.float64)
        y = y[np.isfinite(y)]
        if len(y) == 0:
            raise ValueError(f"OSIPO: the label column {col!r} (outcome of {t}) has no known "
                             "value among the training users")
        values = tuple(taxonomy[t].value_names)
        cuts = outcome_cuts(y, len(values))
        out.append(OutcomeBucket(t, col, tuple(float(c) for c in cuts), values, side="left"))
    return tuple(out)


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

    ``values`` None (an invalid chain) gets ``invalid``. A node whose label is unknown (None,
    NaN or absent) gets no score. A user whose labels inform no bucket gets 0.5 for every chain (so none of its pairs is used: they tie).
    """
    if values is None:
        return invalid
    scores = []
    for b in buckets:
        x = labels.get(b.label)
        realised = b.bucket(None if x is None else float(x))
        if realised is not None:
            scores.append(node_agreement(taxonomy, b.type, values[b.type], realised))
    return float(np.mean(scores)) if scores else 0.5
