"""Typed user-state chains: one node per taxonomy type, in order, each a value from a closed set.

The text form is one node per line, ``type: value``. The same text is the SFT target, what the
student writes and what the parser reads; each line is one OSIPO segment. Parsing is strict: an
unknown type, an out-of-set value, a missing, repeated or misordered node is an error, never a
guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from scaletot_features.dataset import (
    entropy_column, evidence_column, prob_column, probs_column, value_column,
)
from scaletot_features.taxonomy import Taxonomy

Provenance = Literal["teacher", "student", "encoder"]
PROVENANCES: tuple[str, ...] = ("teacher", "student", "encoder")
NODE_SEPARATOR = "\n"
KEY_SEPARATOR = ": "


class ChainParseError(ValueError):
    """Text that is not a valid chain for the taxonomy; the message says which line and why."""


@dataclass(frozen=True)
class ChainNode:
    type: str
    value: str
    prob: float = 1.0
    entropy: float = 0.0
    evidence: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    """The full distribution over the type's values, in taxonomy order (empty when unknown,
    e.g. a chain parsed from text): scores and audits downstream need more than the argmax."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.prob <= 1.0) or math.isnan(self.prob):
            raise ValueError(f"node {self.type}: prob {self.prob} outside [0, 1]")
        if self.probs and (min(self.probs) < 0 or abs(sum(self.probs) - 1.0) > 1e-6):
            raise ValueError(f"node {self.type}: probs {self.probs} are not a distribution")
        if not (0.0 <= self.entropy <= 1.0 + 1e-9) or math.isnan(self.entropy):
            raise ValueError(f"node {self.type}: normalised entropy {self.entropy} outside [0, 1]")


@dataclass(frozen=True)
class Chain:
    nodes: tuple[ChainNode, ...]
    provenance: Provenance = "teacher"
    model_id: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise ValueError(f"provenance {self.provenance!r} not in {PROVENANCES}")

    def values(self) -> dict[str, str]:
        return {n.type: n.value for n in self.nodes}

    def to_text(self) -> str:
        return chain_text(self.values())

    def validate(self, taxonomy: Taxonomy) -> "Chain":
        """Raise ChainParseError unless the nodes are exactly the taxonomy's types, in order,
        and each kept distribution has one probability per allowed value."""
        parse_chain_values(self.to_text(), taxonomy)
        for n in self.nodes:
            if n.probs and len(n.probs) != len(taxonomy[n.type].values):
                raise ChainParseError(f"node {n.type}: {len(n.probs)} probs for "
                                      f"{len(taxonomy[n.type].values)} values")
        return self

    def to_record(self) -> dict:
        """Flat columns (``<type>``, ``<type>_prob``, ...: the teacher chain schema of
        ``dataset.py``) for parquet and feature views."""
        rec: dict = {"provenance": self.provenance, "model_id": self.model_id}
        for n in self.nodes:
            rec[value_column(n.type)] = n.value
            rec[prob_column(n.type)] = float(n.prob)
            rec[entropy_column(n.type)] = float(n.entropy)
            rec[evidence_column(n.type)] = list(n.evidence)
            rec[probs_column(n.type)] = [float(x) for x in n.probs] or None
        return rec

    @classmethod
    def from_record(cls, rec: dict, taxonomy: Taxonomy) -> "Chain":
        nodes = []
        for t in taxonomy.type_names:
            if rec.get(value_column(t)) is None:
                raise ChainParseError(f"record has no value for state type {t!r}")
            nodes.append(
                ChainNode(
                    type=t,
                    value=rec[value_column(t)],
                    prob=float(rec.get(prob_column(t), 1.0)),
                    entropy=float(rec.get(entropy_column(t), 0.0)),
                    evidence=tuple(rec.get(evidence_column(t)) or ()),
                    probs=tuple(rec.get(probs_column(t)) or ()),
                )
            )
        chain = cls(tuple(nodes), provenance=rec.get("provenance", "teacher"),
                    model_id=rec.get("model_id", ""))
        return chain.validate(taxonomy)


def chain_text(values: dict[str, str]) -> str:
    """The one compact text form; ``values`` must be in taxonomy order."""
    return NODE_SEPARATOR.join(f"{t}{KEY_SEPARATOR}{v}" for t, v in values.items())


def parse_chain_values(text: str, taxonomy: Taxonomy) -> dict[str, str]:
    """Strictly parse chain text into {type: value} in taxonomy order."""
    lines = text.strip("\n").split(NODE_SEPARATOR)
    expected = taxonomy.type_names
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        if KEY_SEPARATOR not in line:
            raise ChainParseError(f"line {i + 1} {line!r}: expected '<type>: <value>'")
        key, value = line.split(KEY_SEPARATOR, 1)
        key, value = key.strip(), value.strip()
        if key not in taxonomy.by_name:
            raise ChainParseError(f"line {i + 1}: unknown state type {key!r}; known: {expected}")
        if key in out:
            raise ChainParseError(f"line {i + 1}: state type {key!r} appears twice")
        if i >= len(expected) or key != expected[i]:
            want = expected[i] if i < len(expected) else "end of chain"
            raise ChainParseError(f"line {i + 1}: expected {want!r}, got {key!r}")
        allowed = taxonomy[key].value_names
        if value not in allowed:
            raise ChainParseError(
                f"line {i + 1}: value {value!r} is not allowed for {key!r}; allowed: {allowed}"
            )
        out[key] = value
    missing = [t for t in expected if t not in out]
    if missing:
        raise ChainParseError(f"missing state types {missing}")
    return out


def segment_spans(text: str) -> list[tuple[int, int]]:
    """Character span [start, end) of each node's line: OSIPO's segments and pooling windows."""
    spans, start = [], 0
    for line in text.split(NODE_SEPARATOR):
        spans.append((start, start + len(line)))
        start += len(line) + len(NODE_SEPARATOR)
    return spans
