"""Profile fields, their kinds, the declared schema, and the text form used in prompts.

Missing is a first-class value: a null stays null in parquet, the prompt leaves the field out,
and the encoder gives it its own token. Nothing here imputes.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, model_validator


ProfileStyle = Literal["lines", "sentences"]


class FieldKind(str, Enum):
    categorical = "categorical"
    numeric = "numeric"
    text = "text"
    tags = "tags"


ARROW_TYPES: dict[FieldKind, pa.DataType] = {
    FieldKind.categorical: pa.string(),
    FieldKind.numeric: pa.float64(),
    FieldKind.text: pa.string(),
    FieldKind.tags: pa.list_(pa.string()),
}

ID_COLUMN = "user_id"
TIMESTAMP_COLUMN = "event_timestamp"
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


class ProfileField(BaseModel):
    """One declared profile field. ``label`` is how the prompt names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: FieldKind
    label: str
    required: bool = False
    domain: tuple[str, ...] | None = None  # categorical: the closed set of values
    min_value: float | None = None  # numeric range, inclusive
    max_value: float | None = None
    integer: bool = False  # numeric counts: whole numbers only

    @model_validator(mode="after")
    def _kind_specific(self) -> "ProfileField":
        if self.kind == FieldKind.categorical and not self.domain:
            raise ValueError(f"categorical field {self.name!r} needs a domain")
        if self.kind != FieldKind.categorical and self.domain:
            raise ValueError(f"only categorical fields have a domain ({self.name!r})")
        if self.kind != FieldKind.numeric and (self.min_value is not None or self.max_value is not None):
            raise ValueError(f"only numeric fields have a range ({self.name!r})")
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.kind]

    def render(self, value: Any) -> str | None:
        """The prompt text for one value, or None when missing."""
        if is_missing(value):
            return None
        if self.kind == FieldKind.tags:
            tags = [str(t) for t in value if t]
            return ", ".join(tags) if tags else None
        if self.kind == FieldKind.numeric:
            v = float(value)
            return str(int(v)) if v.is_integer() else f"{v:g}"
        return str(value)


class ProfileSchema(BaseModel):
    """The declared fields of a profile table (besides ``user_id`` and ``event_timestamp``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: tuple[ProfileField, ...]

    @model_validator(mode="after")
    def _unique(self) -> "ProfileSchema":
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate profile field names: {names}")
        reserved = {ID_COLUMN, TIMESTAMP_COLUMN} & set(names)
        if reserved:
            raise ValueError(f"{sorted(reserved)} are reserved column names")
        return self

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> ProfileField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"unknown profile field {name!r}; known: {self.names}")

    def of_kind(self, *kinds: FieldKind) -> list[ProfileField]:
        return [f for f in self.fields if f.kind in kinds]

    @property
    def optional(self) -> list[ProfileField]:
        return [f for f in self.fields if not f.required]

    def arrow_schema(self) -> pa.Schema:
        cols = [pa.field(ID_COLUMN, pa.int64(), nullable=False),
                pa.field(TIMESTAMP_COLUMN, TIMESTAMP_TYPE, nullable=False)]
        cols += [pa.field(f.name, f.arrow_type, nullable=not f.required) for f in self.fields]
        return pa.schema(cols)

    def to_text(self, row: dict[str, Any], style: ProfileStyle = "lines") -> str:
        """The profile as prompt text: one line per present field, in order, either
        ``label: value`` or, with ``style="sentences"``, "This user's label is value."."""
        lines = []
        for f in self.fields:
            rendered = f.render(row.get(f.name))
            if rendered is not None:
                lines.append(f"This user's {f.label} is {rendered}." if style == "sentences"
                             else f"{f.label}: {rendered}")
        return "\n".join(lines) if lines else "(no profile information)"

    def present_fields(self, row: dict[str, Any]) -> list[str]:
        """Names of the fields with a value: the evidence a chain node can rest on."""
        return [f.name for f in self.fields if f.render(row.get(f.name)) is not None]


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value == "":
        return True
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") and len(value) == 0:
        return True
    return False


class ProfileValueError(ValueError):
    """A value that does not fit its profile field. The message says what is wrong and quotes
    the value; the caller puts where it was in front (the field or column, the row)."""


def _describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(f: ProfileField, v: Any, *, strict: bool = True) -> Any:
    """One value of field ``f`` as its Python type, None when missing; else ProfileValueError.

    Missing is None or a float NaN. The type every caller needs: numeric -> float (a bool is
    not a number), categorical and text -> str, tags -> list of str (from a list, tuple or
    array). numpy scalars are unwrapped. ``strict`` (the validating server) also holds the value
    to its declaration: a required field present, a number finite, whole for an ``integer``
    field and within ``[min_value, max_value]``, a categorical value in the domain, no null tag.
    Lenient (the on-demand view, ``strict=False``): the encoder has a token for an unknown value
    and clips numbers, and null tags are dropped.
    """
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        if strict and f.required:
            raise ProfileValueError("required, got null")
        return None
    if f.kind == FieldKind.numeric:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ProfileValueError(f"expected a number or null, got {_describe(v)}")
        if strict:
            if not math.isfinite(v):
                raise ProfileValueError(f"expected a finite number, got {v!r}")
            if f.integer and float(v) != int(v):
                raise ProfileValueError(f"expected a whole number, got {v!r}")
            if (f.min_value is not None and v < f.min_value) or \
                    (f.max_value is not None and v > f.max_value):
                raise ProfileValueError(f"{v!r} is outside [{f.min_value}, {f.max_value}]")
        return float(v)
    if f.kind == FieldKind.tags:
        if isinstance(v, (str, bytes)) or not (isinstance(v, (list, tuple))
                                               or hasattr(v, "tolist")):
            raise ProfileValueError(f"expected a list of strings or null, got {_describe(v)}")
        items = v.tolist() if hasattr(v, "tolist") else list(v)
        bad = [t for t in items if not isinstance(t, str) and (strict or t is not None)]
        if bad:
            raise ProfileValueError(f"tags must be strings, got {_describe(bad[0])}")
        return [t for t in items if t is not None]
    if not isinstance(v, str):
        raise ProfileValueError(f"expected a string or null, got {_describe(v)}")
    if strict and f.kind == FieldKind.categorical and f.domain and v not in f.domain:
        raise ProfileValueError(f"{v!r} is not one of {list(f.domain)}")
    return v


CITY_TIERS = ("tier1", "tier2", "tier3", "tier4", "rural")
GENDERS = ("female", "male", "nonbinary")
CHANNELS = (
    "organic_search",
    "app_store",
    "paid_social",
    "search_ads",
    "referral",
    "influencer",
    "preinstall",
    "rewards_offer",
)

DEFAULT_PROFILE_SCHEMA = ProfileSchema(
    fields=(
        ProfileField(name="acquisition_channel", kind=FieldKind.categorical,
                     label="acquired via", required=True, domain=CHANNELS),
        ProfileField(name="first_day_sessions", kind=FieldKind.numeric,
                     label="sessions on first day", required=True,
                     min_value=0, max_value=500, integer=True),
        ProfileField(name="age", kind=FieldKind.numeric, label="age",
                     min_value=13, max_value=100, integer=True),
        ProfileField(name="gender", kind=FieldKind.categorical, label="gender", domain=GENDERS),
        ProfileField(name="city_tier", kind=FieldKind.categorical, label="city tier",
                     domain=CITY_TIERS),
        ProfileField(name="device_model", kind=FieldKind.text, label="device"),
        ProfileField(name="occupation", kind=FieldKind.text, label="occupation"),
        ProfileField(name="interests", kind=FieldKind.tags, label="interests"),
    )
)


SPARSITY_COLUMN = "sparsity_bucket"
"""A derived coverage stratum (and OSIPO user segment): how many optional fields are present."""
SPARSITY_BUCKETS: tuple[tuple[str, int | None], ...] = (("bare", 0), ("sparse", 2), ("rich", None))
"""The buckets in order, each with the largest count of present optional fields it holds (the
last one: no bound). The one definition: ``sparsity_bucket`` (numpy, validation) and
``reasoning.coverage.sparsity_sql`` (DuckDB, coverage selection) are both built from it."""


def sparsity_bucket(n_present_optional: Any) -> np.ndarray:
    """The :data:`SPARSITY_BUCKETS` name per count of present optional fields, vectorised."""
    n = np.asarray(n_present_optional)
    bounded = [(name, hi) for name, hi in SPARSITY_BUCKETS if hi is not None]
    return np.select([n <= hi for _, hi in bounded], [name for name, _ in bounded],
                     default=SPARSITY_BUCKETS[-1][0])
