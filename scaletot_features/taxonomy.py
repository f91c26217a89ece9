"""The typed user-state taxonomy: ordered state types, each with a closed set of values.

Every description is one line of natural language because the teacher scores values through
their descriptions (DESIGN.md 4.4), not through their labels, which small models cannot read.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TaxonomyError(ValueError):
    """A taxonomy file or object that cannot be used."""


class StateType(BaseModel):
    """One state type (a chain node's type) and its allowed values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    values: dict[str, str] = Field(description="value -> one-line description, in order")

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"state type name {v!r} must match {_NAME.pattern}")
        return v

    @field_validator("values")
    @classmethod
    def _values_are_usable(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) < 2:
            raise ValueError("a state type needs at least two values")
        for value, desc in v.items():
            if not _NAME.match(value):
                raise ValueError(f"value {value!r} must match {_NAME.pattern}")
            if not desc or "\n" in desc:
                raise ValueError(f"value {value!r} needs a one-line description")
        return v

    @property
    def value_names(self) -> list[str]:
        return list(self.values)

    def index(self, value: str) -> int:
        try:
            return self.value_names.index(value)
        except ValueError:
            raise TaxonomyError(
                f"value {value!r} is not allowed for {self.name!r}; allowed: {self.value_names}"
            ) from None


class Taxonomy(BaseModel):
    """An ordered list of state types plus which types bear which realised outcome."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "default"
    version: int = 1
    types: list[StateType]
    outcome_types: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "Taxonomy":
        names = [t.name for t in self.types]
        if not names:
            raise ValueError("a taxonomy needs at least one state type")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate state type names in {names}")
        for outcome, types in self.outcome_types.items():
            unknown = [t for t in types if t not in names]
            if unknown:
                raise ValueError(f"outcome_types[{outcome!r}] names unknown types {unknown}")
        return self

    @cached_property
    def by_name(self) -> dict[str, StateType]:
        return {t.name: t for t in self.types}

    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.types]

    def __getitem__(self, name: str) -> StateType:
        try:
            return self.by_name[name]
        except KeyError:
            raise TaxonomyError(f"unknown state type {name!r}; known: {self.type_names}") from None

    def fingerprint(self) -> str:
        """A short content hash: artifacts record it so a changed taxonomy is detected.

        Keys are not sorted: the order of types and of values is part of the taxonomy (it is the
        order of chain nodes and of per-value probability lists). The order of the
        ``outcome_types`` labels is not (a mapping from label column to types): it is sorted, so
        a taxonomy read back from a JSON written with sorted keys (an encoder manifest) keeps
        its fingerprint."""
        raw = self.model_dump()
        raw["outcome_types"] = dict(sorted(raw["outcome_types"].items()))
        blob = json.dumps(raw).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy from YAML; None gives the packaged default (DESIGN.md 4.3)."""
    if path is None:
        text = resources.files("scaletot_features.resources").joinpath("taxonomy.yaml").read_text()
        source = "<default taxonomy>"
    else:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise TaxonomyError(f"cannot read taxonomy file {path}: {e}") from e
        source = str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaxonomyError(f"{source}: not valid YAML: {e}") from e
    try:
        return Taxonomy.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise TaxonomyError(f"{source}: {loc}: {first['msg']}") from e


DEFAULT_TAXONOMY = load_taxonomy()
