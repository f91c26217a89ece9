"""Run expectation suites with Great Expectations 1.x, write JSON results, report failures.

``validate_dataset`` is the gate after ``generate`` / ``ingest``: it checks a dataset directory's
profiles and labels, writes ``DIR/validation/<suite>.json`` and returns the results; the CLI
exits non-zero when one failed, printing ``format_failures``. ``reasoning_gate`` is the gate
before ``materialize``, which the CLI hands to it (the library never imports this package).
Suites run in one in-memory (ephemeral) GE context per process, with progress bars off; nothing
is written to a GE project.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from scaletot_features.data.io import (
    count_rows,
    iter_batches,
    read_json,
    read_table,
    write_json_atomic,
)
from scaletot_features.dataset import (
    LABELS_FROM_FILE,
    PART_GLOB,
    DatasetLayout,
    embedding_dim,
    encoder_manifest,
    hash_mask,
    label_source,
)
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from validation.suites import (
    Suite,
    file_label_suite,
    label_suite,
    reasoning_feature_suite,
    sparse_profile_suite,
)

if TYPE_CHECKING:  # pragma: no cover
    from scaletot_features.config import Settings

DEFAULT_MAX_ROWS = 200_000  # larger tables are validated on a deterministic hash sample
_EXAMPLES = 5  # unexpected values quoted per failure

_lock = threading.Lock()
_state: dict[str, Any] = {}


@dataclass
class GateResult:
    """One suite's outcome: what failed (named, with observed values) and how much was checked."""

    suite: str
    success: bool
    failed: list[dict[str, Any]]
    statistics: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)  # every expectation, compact
    rows: int = 0
    total_rows: int = 0
    sampled: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def failure_report(self) -> str:
        """:func:`format_failures` of this result alone."""
        return format_failures([self])


# --------------------------------------------------------------------------- GE plumbing


def _context() -> dict[str, Any]:
    """The process's ephemeral GE context with one pandas dataframe asset (built once)."""
    if _state:
        return _state
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("scaletot").add_dataframe_asset("frame")
    _state.update(gx=gx, context=ctx, batch=asset.add_batch_definition_whole_dataframe("whole"))
    return _state


def _jsonable(o: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, non-finite floats as strings."""
    if isinstance(o, Mapping):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [_jsonable(v) for v in o.tolist()]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (pd.Timestamp, pd.Timedelta)):
        return o.isoformat()
    if o is None or isinstance(o, (str, int, float, bool)):
        return o
    if hasattr(o, "to_json_dict"):
        return _jsonable(o.to_json_dict())
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def _exception_message(info: Any) -> str | None:
    """GE's exception_info is either one dict or a dict of them keyed by metric."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for v in info.values():
        if isinstance(v, Mapping) and v.get("raised_exception"):
            return str(v.get("exception_message"))
    return None


def _examples(result: Mapping[str, Any]) -> list[Any]:
    """Distinct unexpected values, most frequent first."""
    counts = result.get("partial_unexpected_counts")
    if counts:
        return [c["value"] for c in counts][:_EXAMPLES]
    seen: list[Any] = []
    for v in result.get("partial_unexpected_list") or []:
        if v not in seen:
            seen.append(v)
    return seen[:_EXAMPLES]


def _observed(result: Mapping[str, Any]) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_count" in result:
        return {
            "unexpected_count": result.get("unexpected_count"),
            "unexpected_percent": result.get("unexpected_percent"),
            "examples": _examples(result),
        }
    return None


def _message(meta: Mapping[str, Any], observed: Any, error: str | None) -> str:
    """What went wrong, in the field's terms (the column is named beside it)."""
    expected = meta.get("expected", "")
    if error is not None:
        return f"could not be checked: {error}"
    if meta.get("check") == "column_exists":
        return "the column is missing"
    if meta.get("check") == "kl_divergence" and observed is None:
        return f"infinite divergence (a value the population never had), expected {expected}"
    if meta.get("check") == "null_rate" and isinstance(observed, (int, float)):
        return f"null rate {1 - observed:.4g}, expected {expected}"
    if isinstance(observed, Mapping) and "unexpected_count" in observed:
        n, pct = observed["unexpected_count"], observed.get("unexpected_percent") or 0.0
        return f"{n} rows ({pct:.3g}%) break '{expected}', e.g. {observed.get('examples')}"
    return f"observed {observed}, expected {expected}"


def _summarise(validation: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    every, failed = [], []
    for er in validation.results:
        cfg = er.expectation_config
        meta = dict(cfg.meta or {})
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "partition_object")}
        column = meta.get("field") or kwargs.get("column")
        result = dict(er.result or {})
        observed = _jsonable(_observed(result))
        error = _exception_message(er.exception_info)
        entry = {"expectation": cfg.type, "column": column, "success": bool(er.success),
                 "observed": observed}
        every.append(entry)
        if not er.success:
            details: dict[str, Any] = {"kwargs": _jsonable(kwargs), "check": meta.get("check"),
                                       "expected": meta.get("expected")}
            if kwargs.get("column") not in (None, column):
                details["derived_column"] = kwargs["column"]
            if meta.get("check") == "null_rate" and isinstance(observed, (int, float)):
                details["null_rate"] = round(1 - float(observed), 6)
                details["null_band"] = meta.get("null_band")
            if error is not None:
                details["error"] = error
            if "details" in result:
                details["ge_details"] = _jsonable(result["details"])
            failed.append({"expectation": cfg.type, "column": column, "observed": observed,
                           "details": details,
                           "message": _message(meta, observed, error)})
    # a missing column first: the errors it causes further down are its consequences
    failed.sort(key=lambda f: f["details"].get("check") != "column_exists")
    return every, failed


def run_suite(df: pd.DataFrame, suite: Suite, name: str | None = None) -> GateResult:
    """Validate ``df`` (after the suite's ``prepare``) against ``suite`` in memory."""
    name = name or suite.name
    frame = suite.prepare(df)
    with _lock:
        st = _context()
        gx, ctx = st["gx"], st["context"]
        key = f"{name}-{uuid.uuid4().hex[:12]}"
        gx_suite = ctx.suites.add(suite.to_gx(key))
        vd = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=key, data=st["batch"], suite=gx_suite))
        try:
            validation = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        finally:
            ctx.validation_definitions.delete(key)
            ctx.suites.delete(key)
    every, failed = _summarise(validation)
    stats = _jsonable(dict(validation.statistics))
    return GateResult(suite=name, success=bool(validation.success) and not failed, failed=failed,
                      statistics=stats, results=every, rows=len(df), total_rows=len(df),
                      notes=list(suite.notes))


# --------------------------------------------------------------------------- dataset gate


def _read_maybe_sampled(path: Path, max_rows: int) -> tuple[pd.DataFrame, int, bool]:
    """The table as pandas, or a hash sample of about ``max_rows`` rows streamed in batches."""
    total = count_rows(path)
    if total <= max_rows:
        return read_table(path).to_pandas(), total, False
    fraction = max_rows / total
    kept: list[pa.Table] = []
    # by a hash of the id, not by position: every copy of a duplicated id stays together (the
    # uniqueness check still sees duplicates in the sample), and profiles and labels are sampled
    # to the same users
    for batch in iter_batches(path):
        ids = batch.column(ID_COLUMN).to_numpy(zero_copy_only=False)
        mask = hash_mask(ids, fraction, use="gate_sample")
        if mask.any():
            kept.append(pa.Table.from_batches([batch]).filter(pa.array(mask)))
    if not kept:
        raise ValueError(f"{path}: the sample of {max_rows} rows out of {total} is empty")
    return pa.concat_tables(kept).to_pandas(), total, True


def _write(result: GateResult, layout: DatasetLayout) -> None:
    write_json_atomic(result.to_json(), layout.validation_result(result.suite))


def validate_dataset(
    data_dir: Path, settings: Settings, max_rows: int = DEFAULT_MAX_ROWS
) -> list[GateResult]:
    """Validate DIR/profiles and DIR/labels against the manifest; write DIR/validation/*.json.

    Reference null rates come from the manifest, overridden field by field by
    ``settings.validation.expected_null_rates``; the band is +- ``null_rate_tolerance``. Tables
    over ``max_rows`` rows are validated on a deterministic id-hash sample (``sampled`` and the
    notes say so).
    """
    layout = DatasetLayout(Path(data_dir))
    if not layout.manifest.exists():
        raise FileNotFoundError(f"{layout.manifest} not found: not a dataset directory")
    manifest = read_json(layout.manifest)
    schema = ProfileSchema.model_validate(manifest["profile_schema"])
    null_rates = dict(manifest.get("reference_null_rates") or {})
    null_rates.update(settings.validation.expected_null_rates or {})
    domains = manifest.get("reference_domains") or None
    horizon = int(manifest.get("horizon_days", settings.data.horizon_days))
    names = manifest.get("label_names")
    labels = file_label_suite(names, settings.ltv.targets or ()) \
        if label_source(manifest) == LABELS_FROM_FILE else label_suite(horizon, names)

    suites: list[tuple[Suite, Path]] = [
        (sparse_profile_suite(schema, null_rates, settings.validation.null_rate_tolerance,
                              domains, (settings.data.min_timestamp, settings.data.max_timestamp)),
         layout.profiles),
        (labels, layout.labels),
    ]
    results = []
    for suite, path in suites:
        df, total, sampled = _read_maybe_sampled(path, max_rows)
        result = run_suite(df, suite)
        result.total_rows, result.sampled = total, sampled
        if sampled:
            result.notes.append(f"validated a deterministic id-hash sample of {len(df)} of "
                                f"{total} rows (max_rows={max_rows})")
        _write(result, layout)
        results.append(result)
    return results


# --------------------------------------------------------------------------- reasoning gate


def _taxonomy_and_dim(data_dir: Path, settings: "Settings | None") -> tuple[Any, int]:
    """The taxonomy and embedding size the table should have: the encoder's, else configured."""
    from scaletot_features.taxonomy import DEFAULT_TAXONOMY

    folder = DatasetLayout(data_dir).encoder
    if encoder_manifest(folder).exists():
        from scaletot_features.encoder.artifact import read_manifest, taxonomy_from_json

        m = read_manifest(folder)
        return taxonomy_from_json(m["taxonomy"]), embedding_dim(folder)
    if settings is not None:
        return settings.taxonomy(), settings.encoder.dim
    return DEFAULT_TAXONOMY, embedding_dim(DatasetLayout(data_dir).features.reasoning)


def reasoning_gate(data_dir: Path | str, settings: "Settings | None" = None,
                   max_rows: int = DEFAULT_MAX_ROWS) -> GateResult:
    """Run the reasoning-feature suite on DIR/features/reasoning_features; write its JSON.

    The gate ``materialize`` runs before it writes (the CLI passes this function). Returns the
    result (written to DIR/validation/reasoning_features.json). Tables over ``max_rows`` rows are
    checked on a deterministic id-hash sample.
    """
    data_dir = Path(data_dir).resolve()
    layout = DatasetLayout(data_dir)
    table_dir = layout.features.reasoning
    if not table_dir.exists() or not any(table_dir.glob(PART_GLOB)):
        raise FileNotFoundError(f"no reasoning features at {table_dir}: run the embed stage first")
    taxonomy, dim = _taxonomy_and_dim(data_dir, settings)
    df, total, sampled = _read_maybe_sampled(table_dir, max_rows)
    result = run_suite(df, reasoning_feature_suite(taxonomy, dim, prob_lists=True))
    result.total_rows, result.sampled = total, sampled
    if sampled:
        result.notes.append(f"validated a deterministic id-hash sample of {len(df)} of {total} "
                            f"rows (max_rows={max_rows})")
    _write(result, layout)
    return result


def format_failures(results: Iterable[GateResult]) -> str:
    """One line per failing expectation: suite, column, what was observed vs expected."""
    lines = []
    for r in results:
        if r.success:
            continue
        scope = f" (sample of {r.rows} of {r.total_rows} rows)" if r.sampled else ""
        lines.append(f"suite {r.suite} FAILED{scope}: {len(r.failed)} expectation(s)")
        for f in r.failed:
            lines.append(f"  - {f['column']}: {f['message']} ({f['expectation']})")
    return "\n".join(lines)
