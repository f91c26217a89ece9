"""The LTV targets of a dataset: which label columns the models predict, and how (``ltv.targets``).

A dataset's manifest lists its label columns (``label_names``): from events, ``lt{H}`` (active
days) and ``revenue_{H}``; from a labels file (``ingest --labels``), whatever outcome columns it
had. A target names one of them and a kind (:data:`scaletot_features.config.TargetKind`), and the
kind says everything downstream: the likelihood (``ltv/ziln.py``), the boosted trees' losses, the
values it accepts (:class:`ValueRule`) and which AUC, if any, is read (:data:`AUC_OF_KIND`).

Unset, ``ltv.targets`` is what the pipeline always did: ``revenue_{H}`` as ``ziln`` and ``lt{H}``
as ``hurdle_count`` with max H, in that order. A label with no default kind (``annual_income``)
is refused naming ``ltv.targets``, so nothing is fitted with a guessed likelihood.

Pure (no torch, no I/O): ingest, the evaluation and the report all read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scaletot_features.config import LTVTarget, TargetKind
from scaletot_features.dataset import label_names

__all__ = ["AUC_OF_KIND", "TargetsError", "ValueRule", "dataset_targets", "default_targets",
           "retained_threshold", "value_problem", "value_rule"]

AUC_OF_KIND: dict[str, str] = {"ziln": "payer", "hurdle_count": "retained"}
"""Kinds whose AUC means something, and of what: payer (value > 0) for a zero-inflated value,
retained (count >= ``ltv.retained_threshold``) for a count. A lognormal target has no AUC: every
value is positive, there is no class to separate."""


class TargetsError(ValueError):
    """``ltv.targets`` does not fit the dataset's labels; the message names the key and the labels."""


def default_targets(labels: Sequence[str], horizon_days: int) -> list[LTVTarget]:
    """The targets ``ltv.targets: null`` means for these label columns: revenue then activity.

    Refused (naming ``ltv.targets``) when a label is neither ``revenue_{H}`` nor ``lt{H}``."""
    active, revenue = label_names(horizon_days)
    unknown = [n for n in labels if n not in (active, revenue)]
    if unknown:
        example = ", ".join(f"{{name: {n}, kind: lognormal}}" for n in unknown[:2])
        raise TargetsError(
            f"ltv.targets: the dataset's labels {list(labels)} include {unknown}, which have no "
            f"default kind; declare what each target is, e.g. ltv: {{targets: [{example}]}} "
            "(kinds: ziln for a value that is often 0, hurdle_count with max for a bounded count, "
            "lognormal for a positive value)")
    out = []
    if revenue in labels:
        out.append(LTVTarget(name=revenue, kind="ziln"))
    if active in labels:
        out.append(LTVTarget(name=active, kind="hurdle_count", max=horizon_days))
    if not out:
        raise TargetsError("ltv.targets: the dataset lists no label columns (manifest "
                           "label_names is empty)")
    return out


def dataset_targets(manifest: dict[str, Any],
                    configured: Sequence[LTVTarget] | None) -> list[LTVTarget]:
    """The targets to model on a dataset: ``configured`` checked against its labels, or the
    defaults. Raises :class:`TargetsError` naming ``ltv.targets[i].name`` and the labels there are."""
    labels = list(manifest.get("label_names") or ())
    if configured is None:
        return default_targets(labels, int(manifest.get("horizon_days", 30)))
    for i, t in enumerate(configured):
        if t.name not in labels:
            raise TargetsError(f"ltv.targets[{i}].name: {t.name!r} is not a label of this "
                               f"dataset; its labels are {labels}")
    return list(configured)


def retained_threshold(target: LTVTarget, configured: int) -> int:
    """The count a hurdle_count target's retained AUC cuts at: ``ltv.retained_threshold``, capped
    at the target's max (a 0/1 count is "retained" at 1, not never)."""
    return min(configured, target.max) if target.max is not None else configured


@dataclass(frozen=True)
class ValueRule:
    """The values a target kind can model: its likelihood's support."""

    low: float
    low_inclusive: bool
    high: float | None
    integer: bool
    says: str  # the rule in words, for refusals

    def violation_sql(self, value: str) -> str:
        """A SQL predicate, true where the (non-null, finite) ``value`` breaks the rule."""
        parts = [f"{value} {'<' if self.low_inclusive else '<='} {self.low!r}"]
        if self.high is not None:
            parts.append(f"{value} > {self.high!r}")
        if self.integer:
            parts.append(f"{value} <> floor({value})")
        return "(" + " OR ".join(parts) + ")"

    def violations(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        bad = v < self.low if self.low_inclusive else v <= self.low
        if self.high is not None:
            bad |= v > self.high
        if self.integer:
            bad |= v != np.floor(v)
        return bad


def value_rule(target: LTVTarget) -> ValueRule:
    kind: TargetKind = target.kind
    if kind == "ziln":
        return ValueRule(0.0, True, None, False, "ziln targets are values >= 0")
    if kind == "hurdle_count":
        assert target.max is not None
        return ValueRule(0.0, True, float(target.max), True,
                         f"hurdle_count targets are whole numbers in [0, {target.max}] (max)")
    return ValueRule(0.0, False, None, False, "lognormal targets are values > 0 (a value that "
                     "can be 0 is a ziln target)")


def value_problem(target: LTVTarget, values: np.ndarray) -> str | None:
    """Why ``values`` cannot be this target's labels (None: they can), naming the target."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        return f"target {target.name!r} ({target.kind}) has NaN or infinite values"
    bad = np.flatnonzero(value_rule(target).violations(v))
    if not len(bad):
        return None
    first = v[bad[0]]
    shown = int(first) if math.isfinite(first) and first == int(first) else float(first)
    return (f"target {target.name!r}: {len(bad)} of {len(v)} values break the rule of its kind "
            f"({value_rule(target).says}), e.g. {shown}")
