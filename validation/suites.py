"""Expectation suites: sparse profiles, labels, coverage drift, reasoning features (DESIGN.md 4.9).

A :class:`Suite` is a name, a list of Great Expectations expectations, and a ``prepare`` step
that adds the derived columns some expectations read. GE has no expectation for "this float is a
whole number", "this list has no NaN" or "this list's norm is in range", so those become plain
columns (``age__fraction``, ``embedding__nan_count``, ``embedding__norm``...) checked with the
ordinary between / not-null expectations. Every expectation carries ``meta`` with the check it
implements (``check``), the profile field it is about (``field``) and what was expected
(``expected``), so a failure can be reported in the field's own terms.

Nulls: GE leaves nulls out of the between / in-set / KL expectations, so null rates are checked
on their own. A field's band [ref - tol, ref + tol] on the null rate is expressed as
``ExpectColumnProportionOfNonNullValuesToBeBetween(min_value=1 - (ref + tol),
max_value=1 - (ref - tol))``: a real two-sided GE expectation that fails when the null rate
leaves the band in either direction. Missing means what ``profile.is_missing`` says: empty
strings and empty tag lists are turned into nulls before the check.

Great Expectations is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scaletot_features.dataset import REASONING_TABLE, state_columns
from scaletot_features.profile import (
    ID_COLUMN,
    SPARSITY_COLUMN,
    TIMESTAMP_COLUMN,
    FieldKind,
    ProfileSchema,
    sparsity_bucket,
)

if TYPE_CHECKING:  # pragma: no cover
    from great_expectations.expectations import Expectation

    from scaletot_features.taxonomy import Taxonomy

MISSING = "<missing>"  # missing as its own category in KL partitions
PROB_TOLERANCE = 1e-3  # per-row probabilities must sum to 1 within this

# Suite names double as the result file names: DIR/validation/<name>.json
SPARSE_PROFILE = "sparse_profile"
LABELS = "labels"
COVERAGE_DRIFT = "coverage_drift"
REASONING_FEATURES = REASONING_TABLE  # named for the table it checks


def _identity(df: pd.DataFrame) -> pd.DataFrame:
    return df


@dataclass(frozen=True)
class Suite:
    """Expectations plus the derived columns they need; run with ``validation.gate.run_suite``."""

    name: str
    expectations: list[Expectation]
    prepare: Callable[[pd.DataFrame], pd.DataFrame] = _identity
    notes: list[str] = field(default_factory=list)

    def to_gx(self, name: str | None = None) -> Any:
        """A fresh ``gx.ExpectationSuite`` (copies: an expectation belongs to one suite)."""
        import great_expectations as gx

        return gx.ExpectationSuite(
            name=name or self.name,
            expectations=[e.copy(deep=True, update={"id": None}) for e in self.expectations],
        )


def _meta(check: str, field_name: str, expected: str, **extra: Any) -> dict[str, Any]:
    return {"check": check, "field": field_name, "expected": expected, **extra}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# --------------------------------------------------------------------------- missing values


def _present(series: pd.Series, kind: FieldKind) -> np.ndarray:
    """Row mask of present values, with ``profile.is_missing`` semantics, vectorised."""
    present = series.notna().to_numpy()
    if kind == FieldKind.text or kind == FieldKind.categorical:
        present &= (series.astype(object) != "").to_numpy()
    elif kind == FieldKind.tags:
        values = pa.array(series, from_pandas=True)
        if pa.types.is_null(values.type):  # every value missing (an absent optional field)
            return np.zeros(len(series), dtype=bool)
        lengths = pc.list_value_length(values)
        present &= pc.fill_null(pc.greater(lengths, 0), False).to_numpy(zero_copy_only=False)
    return present


def normalize_missing(df: pd.DataFrame, schema: ProfileSchema) -> pd.DataFrame:
    """Empty strings and empty tag lists become nulls, so GE's null counts mean "missing"."""
    out = df.copy()
    for f in schema.fields:
        if f.name not in out.columns or f.kind == FieldKind.numeric:
            continue
        mask = _present(out[f.name], f.kind)
        if not mask.all():
            col = out[f.name].astype(object)
            col[~mask] = None
            out[f.name] = col
    return out


def add_sparsity_bucket(df: pd.DataFrame, schema: ProfileSchema) -> pd.DataFrame:
    """The coverage stratum ``sparsity_bucket`` (``profile.sparsity_bucket``) as a column."""
    n = np.zeros(len(df), dtype=np.int64)
    for f in schema.optional:
        if f.name in df.columns:
            n += _present(df[f.name], f.kind)
    out = df.copy()
    out[SPARSITY_COLUMN] = sparsity_bucket(n)
    return out


# --------------------------------------------------------------------------- sparse profiles


def null_band(reference: float, tolerance: float) -> tuple[float, float]:
    """The allowed null-rate interval [ref - tol, ref + tol], clipped to [0, 1]."""
    lo = round(max(0.0, reference - tolerance), 12)
    hi = round(min(1.0, reference + tolerance), 12)
    return lo, hi


def _fraction_column(name: str) -> str:
    return f"{name}__fraction"


def _whole_numbers(name: str) -> Any:
    """The expectation that ``name`` holds whole numbers (on its ``__fraction`` column)."""
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(column=_fraction_column(name), min_value=0,
                                             max_value=0, meta=_meta("integer", name,
                                                                     "whole numbers"))


def _add_fractions(df: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The ``__fraction`` column of each of ``names`` present (``_whole_numbers`` reads it)."""
    for name in names:
        if name in df.columns:
            x = pd.to_numeric(df[name], errors="coerce").astype("float64")
            df[_fraction_column(name)] = x - np.floor(x)
    return df


def _unique_ids() -> list[Any]:
    """One row per user: user_id never null, never repeated."""
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToNotBeNull(column=ID_COLUMN,
                                              meta=_meta("not_null", ID_COLUMN, "no nulls")),
            gxe.ExpectColumnValuesToBeUnique(column=ID_COLUMN,
                                             meta=_meta("unique", ID_COLUMN, "unique ids"))]


def sparse_profile_suite(
    schema: ProfileSchema,
    reference_null_rates: Mapping[str, float],
    null_rate_tolerance: float,
    reference_domains: Mapping[str, Sequence[str]] | None = None,
    timestamp_range: tuple[str, str] | None = None,
) -> Suite:
    """The gate on a profile table: null-rate bands, domains, ranges, whole counts, unique ids.

    ``reference_domains`` (the manifest's) replaces a categorical field's declared domain when
    given: a value never seen in the reference set is drift. Required fields must have no nulls at
    all; optional fields without a reference null rate get no band (listed in ``notes``).
    """
    import great_expectations.expectations as gxe

    unknown = sorted(set(reference_null_rates) - set(schema.names))
    if unknown:
        raise ValueError(f"reference null rates name unknown profile fields {unknown}; "
                         f"known: {schema.names}")
    exps: list[Any] = []
    notes: list[str] = []
    for col in (ID_COLUMN, TIMESTAMP_COLUMN):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(
            column=col, meta=_meta("not_null", col, "no nulls")))
    exps.append(gxe.ExpectColumnValuesToBeUnique(
        column=ID_COLUMN, meta=_meta("unique", ID_COLUMN, "unique ids")))
    if timestamp_range is not None:
        lo_ts, hi_ts = (pd.Timestamp(t).tz_localize("UTC") if pd.Timestamp(t).tzinfo is None
                        else pd.Timestamp(t) for t in timestamp_range)
        exps.append(gxe.ExpectColumnValuesToBeBetween(
            column=TIMESTAMP_COLUMN, min_value=lo_ts.to_pydatetime(),
            max_value=hi_ts.to_pydatetime(),
            meta=_meta("timestamp_range", TIMESTAMP_COLUMN,
                       f"timestamps in [{lo_ts.isoformat()}, {hi_ts.isoformat()}]")))

    integer_fields: list[str] = []
    for f in schema.fields:
        exps.append(gxe.ExpectColumnToExist(
            column=f.name, meta=_meta("column_exists", f.name, "the column exists")))
        if f.required:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(
                column=f.name, meta=_meta("not_null", f.name, "no nulls (required field)")))
        elif f.name in reference_null_rates:
            ref = float(reference_null_rates[f.name])
            lo, hi = null_band(ref, null_rate_tolerance)
            exps.append(gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                column=f.name, min_value=round(1.0 - hi, 12), max_value=round(1.0 - lo, 12),
                meta=_meta("null_rate", f.name, f"null rate in [{_fmt(lo)}, {_fmt(hi)}]",
                           reference_null_rate=ref, tolerance=null_rate_tolerance,
                           null_band=[lo, hi])))
        else:
            notes.append(f"{f.name}: no reference null rate, null rate not checked")
        if f.kind == FieldKind.categorical:
            domain = list((reference_domains or {}).get(f.name) or f.domain or ())
            exps.append(gxe.ExpectColumnValuesToBeInSet(
                column=f.name, value_set=domain,
                meta=_meta("in_set", f.name, f"values in {domain}")))
        if f.kind == FieldKind.numeric:
            if f.min_value is not None or f.max_value is not None:
                exps.append(gxe.ExpectColumnValuesToBeBetween(
                    column=f.name, min_value=f.min_value, max_value=f.max_value,
                    meta=_meta("range", f.name, f"values in [{f.min_value}, {f.max_value}]")))
            if f.integer:
                integer_fields.append(f.name)
                exps.append(_whole_numbers(f.name))

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        return _add_fractions(normalize_missing(df, schema), integer_fields)

    return Suite(SPARSE_PROFILE, exps, prepare, notes)


# --------------------------------------------------------------------------- labels


def _delay_column() -> str:
    return "label_timestamp__delay_days"


def label_suite(horizon_days: int, label_names: Sequence[str] | None = None) -> Suite:
    """Labels: ``lt{H}`` in [0, H], revenue >= 0, one row per user, label time = first seen + H."""
    import great_expectations.expectations as gxe

    from scaletot_features.data.labels import label_names as default_names

    active, revenue = label_names or default_names(horizon_days)
    exps: list[Any] = _unique_ids()
    for col in (active, revenue, "first_seen", "label_timestamp"):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col,
                                                      meta=_meta("not_null", col, "no nulls")))
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column=active, min_value=0, max_value=horizon_days,
            meta=_meta("range", active, f"active days in [0, {horizon_days}]")),
        _whole_numbers(active),
        gxe.ExpectColumnValuesToBeBetween(
            column=revenue, min_value=0, meta=_meta("range", revenue, "revenue >= 0")),
        gxe.ExpectColumnValuesToBeBetween(
            column=_delay_column(), min_value=horizon_days, max_value=horizon_days,
            meta=_meta("label_delay", "label_timestamp",
                       f"label_timestamp = first_seen + {horizon_days} days")),
    ]

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        out = _add_fractions(df.copy(), [active])
        if {"label_timestamp", "first_seen"} <= set(out.columns):
            delay = out["label_timestamp"] - out["first_seen"]
            out[_delay_column()] = delay / pd.Timedelta(days=1)
        return out

    return Suite(LABELS, exps, prepare)


def file_label_suite(outcomes: Sequence[str], targets: Sequence[Any] = ()) -> Suite:
    """Labels read from a labels file: one row per user, a label time each; an outcome may be
    unknown (null) for a user, and where ``targets`` (``ltv.targets``) name one, its known values
    keep to the rule of the target's kind (``ltv.targets.value_rule``)."""
    import great_expectations.expectations as gxe

    from scaletot_features.dataset import LABEL_TIMESTAMP
    from scaletot_features.ltv.targets import value_rule

    exps: list[Any] = _unique_ids() + [
        gxe.ExpectColumnValuesToNotBeNull(column=LABEL_TIMESTAMP,
                                          meta=_meta("not_null", LABEL_TIMESTAMP, "no nulls"))]
    integers = []
    for t in targets:
        if t.name not in outcomes:
            continue
        rule = value_rule(t)
        exps.append(gxe.ExpectColumnValuesToBeBetween(
            column=t.name, min_value=rule.low, max_value=rule.high,
            strict_min=not rule.low_inclusive, meta=_meta("range", t.name, rule.says)))
        if rule.integer:
            integers.append(t.name)
            exps.append(_whole_numbers(t.name))

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        return _add_fractions(df.copy(), integers)

    return Suite(LABELS, exps, prepare)


# --------------------------------------------------------------------------- coverage drift


def categorical_partition(series: pd.Series) -> dict[str, list[Any]]:
    """A GE categorical partition object (values + weights) with missing as its own value."""
    counts = _as_category(series).value_counts()
    counts = counts.sort_index()
    weights = (counts / counts.sum()).to_numpy(dtype=np.float64)
    return {"values": [str(v) for v in counts.index], "weights": [float(w) for w in weights]}


def _as_category(series: pd.Series) -> pd.Series:
    s = series.astype(object)
    return s.where(s.notna() & (s != ""), MISSING).astype(str)


def coverage_drift_suite(
    population: pd.DataFrame,
    columns: Sequence[str],
    max_kl: float,
    schema: ProfileSchema | None = None,
) -> Suite:
    """KL(subset || population) < ``max_kl`` for each categorical column (coverage strata).

    The partition of each column is measured on ``population`` now; run the suite on the covered
    subset. Missing values count as the category ``<missing>``. ``sparsity_bucket`` is derived
    from the profile fields when the frame lacks it (pass ``schema``). A subset value the
    population never had makes the divergence infinite: GE reports it as a failure.
    """
    import great_expectations.expectations as gxe

    if population.empty:
        raise ValueError("the population is empty: no partition to compare against")

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        out = df
        if SPARSITY_COLUMN in columns and SPARSITY_COLUMN not in out.columns:
            if schema is None:
                raise ValueError(f"{SPARSITY_COLUMN!r} is not a column; pass schema to derive it")
            out = add_sparsity_bucket(out, schema)
        missing = [c for c in columns if c not in out.columns]
        if missing:
            raise ValueError(f"coverage columns {missing} are not in the frame")
        out = out[list(columns)].copy()
        for c in columns:
            out[c] = _as_category(out[c])
        return out

    pop = prepare(population)
    exps: list[Any] = []
    for c in columns:
        partition = categorical_partition(pop[c])
        exps.append(gxe.ExpectColumnKLDivergenceToBeLessThan(
            column=c, partition_object=partition, threshold=max_kl,
            meta=_meta("kl_divergence", c, f"KL divergence from the population < {max_kl}",
                       population_rows=len(population))))
    return Suite(COVERAGE_DRIFT, exps, prepare)


# --------------------------------------------------------------------------- reasoning features


def list_stats(series: pd.Series) -> pd.DataFrame:
    """Per-row length, NaN count, sum, min, max and L2 norm of a list column (vectorised).

    Null rows get NaN everywhere; null elements count as NaN.
    """
    arr = pa.array(series.tolist(), type=pa.list_(pa.float64()), from_pandas=False)
    n = len(arr)
    lengths = pc.list_value_length(arr).to_pandas().astype("float64").to_numpy()
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    isnan = np.isnan(flat)
    clean = np.where(isnan, 0.0, flat)
    nan_count = np.bincount(parents, weights=isnan.astype(np.float64), minlength=n)
    total = np.bincount(parents, weights=clean, minlength=n)
    norm = np.sqrt(np.bincount(parents, weights=clean * clean, minlength=n))
    grouped = pd.Series(flat).groupby(parents)
    mins = grouped.min().reindex(range(n)).to_numpy()
    maxs = grouped.max().reindex(range(n)).to_numpy()
    null = np.isnan(lengths)
    out = pd.DataFrame({"len": lengths, "nan_count": nan_count, "sum": total, "min": mins,
                        "max": maxs, "norm": norm})
    out.loc[null, ["nan_count", "sum", "norm"]] = np.nan
    return out


def _list_column_checks(gxe: Any, column: str, length: int, expected: str) -> list[Any]:
    """A list column exists, is never null, has ``length`` items and no NaN (via the helper
    columns ``list_stats`` adds)."""
    return [
        gxe.ExpectColumnToExist(column=column, meta=_meta("column_exists", column, "the column exists")),
        gxe.ExpectColumnValuesToNotBeNull(
            column=f"{column}__len", meta=_meta("not_null", column, "no nulls")),
        gxe.ExpectColumnValuesToBeBetween(
            column=f"{column}__len", min_value=length, max_value=length,
            meta=_meta("list_length", column, expected)),
        gxe.ExpectColumnValuesToBeBetween(
            column=f"{column}__nan_count", min_value=0, max_value=0,
            meta=_meta("no_nan", column, "no NaN")),
    ]


def reasoning_feature_suite(
    taxonomy: Taxonomy,
    embedding_dim: int,
    *,
    embedding_column: str = "embedding",
    norm_range: tuple[float, float] = (1e-6, 1e3),
    prob_lists: bool = False,
    prefix: str = "",
) -> Suite:
    """The gate on the encoder's feature table.

    Expected columns, for each state type T (with ``prefix``): ``T`` (the chosen value, in T's
    set), ``T_prob`` (its probability, in [0, 1]) and, with ``prob_lists``, ``T_probs`` (one
    probability per value in taxonomy order: length = number of values, each in [0, 1], summing
    to 1 within 1e-3). ``embedding_column`` is a list of ``embedding_dim`` floats with no NaN and
    an L2 norm in ``norm_range``. ``user_id`` is unique.
    """
    import great_expectations.expectations as gxe

    emb = embedding_column
    exps: list[Any] = [
        gxe.ExpectColumnValuesToNotBeNull(column=ID_COLUMN,
                                          meta=_meta("not_null", ID_COLUMN, "no nulls")),
        gxe.ExpectColumnValuesToBeUnique(column=ID_COLUMN,
                                         meta=_meta("unique", ID_COLUMN, "unique ids")),
    ]
    list_columns: list[str] = []
    for t in taxonomy.types:
        col, prob, probs = (prefix + c for c in state_columns(t.name))
        exps += [
            gxe.ExpectColumnValuesToNotBeNull(column=col, meta=_meta("not_null", col, "no nulls")),
            gxe.ExpectColumnValuesToBeInSet(column=col, value_set=t.value_names,
                                            meta=_meta("in_set", col, f"values in {t.value_names}")),
            gxe.ExpectColumnValuesToNotBeNull(column=prob, meta=_meta("not_null", prob, "no nulls")),
            gxe.ExpectColumnValuesToBeBetween(column=prob, min_value=0, max_value=1,
                                              meta=_meta("prob_range", prob, "probabilities in [0, 1]")),
        ]
        if prob_lists:
            list_columns.append(probs)
            k = len(t.value_names)
            exps += _list_column_checks(gxe, probs, k, f"{k} probabilities per row")
            exps += [
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{probs}__min", min_value=0, max_value=1,
                    meta=_meta("prob_range", probs, "probabilities in [0, 1]")),
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{probs}__max", min_value=0, max_value=1,
                    meta=_meta("prob_range", probs, "probabilities in [0, 1]")),
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"{probs}__sum", min_value=1 - PROB_TOLERANCE,
                    max_value=1 + PROB_TOLERANCE,
                    meta=_meta("prob_sum", probs, f"probabilities sum to 1 (+-{PROB_TOLERANCE})")),
            ]
    list_columns.append(emb)
    lo, hi = norm_range
    exps += _list_column_checks(gxe, emb, embedding_dim, f"{embedding_dim} dimensions")
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column=f"{emb}__norm", min_value=lo, max_value=hi,
            meta=_meta("embedding_norm", emb, f"L2 norm in [{lo}, {hi}]")),
    ]

    def prepare(df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        for c in list_columns:
            if c not in out.columns:
                continue  # the not-null / length expectations on c__len report it
            stats = list_stats(out[c])
            for s in ("len", "nan_count", "sum", "min", "max", "norm"):
                out[f"{c}__{s}"] = stats[s].to_numpy()
        return out

    return Suite(REASONING_FEATURES, exps, prepare)
