"""Labelled demonstrations: the teacher shown a few users whose outcomes are known.

A teacher that only reads a profile uses what its pre-training knows; the covered users' labels
(the same budget a supervised baseline is given) tell it how this population's profiles map to
outcomes. Each demonstration is a labelled user's profile with the value of every outcome-bearing
state read off its realised outcome: the outcome's quantile bin over the labelled pool, the
type's values taken low to high (the taxonomy's convention for ordered types, as the audit
reads them). The same fixed block precedes every prompt, so a backend that reuses a shared
prompt prefix computes it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaletot_features.taxonomy import Taxonomy


@dataclass(frozen=True)
class Demonstration:
    """One labelled user: the teacher's profile text and the state values its outcome implies."""

    profile_text: str
    values: dict[str, str]


def outcome_cuts(y: np.ndarray, k: int) -> np.ndarray:
    """The k - 1 cut points of ``k`` outcome bins: the empirical quantiles 1/k .. (k-1)/k of
    ``y`` (none when ``k < 2`` or ``y`` is empty). A value is in bin ``searchsorted(cuts, value,
    side="left")``: one on a cut point falls in the lower bin (:func:`outcome_bins`). OSIPO's
    reward reads a labels file's outcomes through the same cuts (trainers/osipo_reward.py)."""
    y = np.asarray(y, dtype=np.float64)
    if k < 2 or len(y) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.quantile(y, np.arange(1, k) / k)


def outcome_bins(y: np.ndarray, k: int) -> np.ndarray:
    """Bin 0..k-1 of each value by the empirical quantiles of ``y``; ties share a bin (a mass
    of zeros falls in the lowest), so a bin may be empty."""
    y = np.asarray(y, dtype=np.float64)
    cuts = outcome_cuts(y, k)
    return np.searchsorted(cuts, y, side="left").astype(np.int64)


def stratified_pick(bins: np.ndarray, order: np.ndarray, k: int) -> list[int]:
    """``k`` row indices taking the bins in turn (each bin's rows in ``order``), so every
    outcome level is shown about equally often; the result is in ``order``'s order."""
    queues = [[i for i in order if bins[i] == b] for b in np.unique(bins)]
    picked: list[int] = []
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop(0))
    rank = {int(i): r for r, i in enumerate(order)}
    return sorted(picked, key=lambda i: rank[int(i)])


def demonstration_block(demos: list[Demonstration], taxonomy: Taxonomy) -> str:
    """The text shown before every question: each profile, then its known state values."""
    if not demos:
        return ""
    parts = ["Examples of users whose outcomes are known:"]
    for d in demos:
        known = "\n".join(f"{t.name.replace('_', ' ')}: {d.values[t.name]}"
                          for t in taxonomy.types if t.name in d.values)
        parts.append(f"User profile:\n{d.profile_text}\n{known}")
    return "\n\n".join(parts)
