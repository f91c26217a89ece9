"""Your own data: check your tables (profiles, and events or labels) and write a dataset directory.

Users bring a profiles table and an events table, a labels file (labels they already have), or
both, as parquet or CSV. Every check runs in DuckDB SQL over the files (nothing is loaded whole
into memory), and every refusal is an :class:`IngestError` naming the file, the column and a
sample offending row, so that the fix is obvious without opening a debugger. Only when every table
passes is anything written: the dataset layout of ``dataset.DatasetLayout`` (profiles cast to
``ProfileSchema.arrow_schema()``, events, labels, ``manifest.json``) inside
``data.io.atomic_dir``, so an error never leaves a partial directory behind and never touches an
existing one. Labels are derived from the events (``data.labels.derive_labels``) unless a labels
file is given; then they are its outcome columns (``dataset.file_label_schema``).

Input rules (documented for users in docs/your-own-data.md):

- files: ``.parquet``/``.pq``, ``.csv``/``.csv.gz``, or a directory of parquet parts. CSV is
  comma-separated, RFC 4180 quoting, first line = header, every value read as text and parsed
  here (an empty cell is missing).
- ``user_id``: integers (int64 range); a text column may hold integer literals.
- timestamps: timestamp/date columns, or ISO-8601 text; naive times are UTC; within
  ``[min_timestamp, max_timestamp]`` inclusive.
- categorical: text, trimmed, exactly one of the declared domain (case-sensitive).
- numeric: numbers (or numeric text); NaN = missing; infinities, values outside
  ``[min_value, max_value]`` and, for ``integer`` fields, fractions are refused.
- text: text, trimmed; blank = missing.
- tags: a list-of-strings column, or text holding a JSON list of strings (``["a","b"]``);
  elements trimmed, blank elements dropped, an empty list = missing.
- an optional field whose column is absent is all-missing (warned, recorded in the manifest);
  a column that is not declared is ignored (warned, recorded in the manifest).
- output rows are sorted (profiles by user_id, events by user_id, timestamp, value), so the same
  input gives the same parts whatever its file order.
- labels file: ``user_id`` (unique, each one in the profiles), an optional ``label_timestamp``
  (absent or an empty cell: the profile's ``event_timestamp`` + ``horizon_days``; never before
  the profile's), and
  outcome columns: the ``ltv.targets`` names when targets are given (other columns ignored,
  warned), else every other column. Outcomes are numbers (empty/NaN = unknown for that user),
  within their target kind's rule when one is given (``ltv.targets.ValueRule``); a column that
  shares a profile field's name is refused (the training frame joins both). The labels file's
  columns are checked before anything else is read.
"""

from __future__ import annotations

import csv
import gzip
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from scaletot_features.config import LTVTarget
from scaletot_features.data.io import PartWriter, atomic_dir, write_json_atomic
from scaletot_features.data.labels import derive_labels, label_names, label_schema
from scaletot_features.dataset import (  # noqa: F401 (EVENTS_SCHEMA re-exported)
    EVENTS_SCHEMA,
    LABEL_TIMESTAMP,
    LABELS_FROM_EVENTS,
    LABELS_FROM_FILE,
    SCHEMA_VERSION,
    DatasetLayout,
    file_label_schema,
)
from scaletot_features.ltv.targets import value_rule
from scaletot_features.profile import (
    DEFAULT_PROFILE_SCHEMA,
    ID_COLUMN,
    TIMESTAMP_COLUMN,
    FieldKind,
    ProfileField,
    ProfileSchema,
)
from scaletot_features.taxonomy import DEFAULT_TAXONOMY, Taxonomy

EVENT_TIMESTAMP = "timestamp"
EVENT_VALUE = "value"

MAX_PROBLEMS = 10  # problems listed in one error message; the rest are counted
_MAX_VALUE_CHARS = 80

_INT_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
              "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}


class IngestError(ValueError):
    """Input that cannot be ingested; the message names the file, the column and a sample row."""


class IngestWarning(UserWarning):
    """Input accepted with a caveat the user should know about (ignored or absent columns)."""


# --------------------------------------------------------------------------- SQL helpers


def _q(name: str) -> str:
    """Quote an identifier: user column names may hold anything."""
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_int(t: str) -> bool:
    return t in _INT_TYPES


def _is_number(t: str) -> bool:
    return t in _INT_TYPES or t in _FLOAT_TYPES or t.startswith("DECIMAL")


def _is_string(t: str) -> bool:
    return t == "VARCHAR" or t.startswith("ENUM")


def _is_time(t: str) -> bool:
    return t.startswith("TIMESTAMP") or t == "DATE"


def _is_string_list(t: str) -> bool:
    return t in ("VARCHAR[]",)


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """One input table, opened as a DuckDB view of its raw columns."""

    role: str  # "profiles" | "events" | "labels"
    path: Path
    view: str
    columns: dict[str, str]  # raw column name -> DuckDB type
    rows: int = 0

    @property
    def where(self) -> str:
        return f"{self.role} file {self.path}"


def _fail(src: _Source | Path, what: str) -> IngestError:
    where = src.where if isinstance(src, _Source) else str(src)
    return IngestError(f"{where}: {what}")


def _files_of(path: Path, role: str) -> tuple[str, list[Path]]:
    """The format and the files of an input path, or IngestError if it is not usable."""
    where = f"{role} file {path}"
    if path.is_dir():
        parts = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith((".", "_"))
                       and p.suffix.lower() in (".parquet", ".pq"))
        if not parts:
            raise IngestError(f"{where}: the directory holds no .parquet/.pq parts "
                              "(a directory input must be a flat folder of parquet files)")
        return "parquet", parts
    if not path.exists():
        raise IngestError(f"{where}: unreadable: no such file or directory")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet", [path]
    if name.endswith((".csv", ".csv.gz")):
        return "csv", [path]
    raise IngestError(f"{where}: unknown file extension; use .parquet, .pq, .csv, .csv.gz "
                      "or a directory of parquet parts")


def _csv_header(path: Path, where: str) -> list[str]:
    """The CSV header line, read here so DuckDB's sniffer never guesses (it can skip rows)."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as e:
        raise IngestError(f"{where}: unreadable: {e}") from e
    if not header or all(not h.strip() for h in header):
        raise IngestError(f"{where}: the file is empty (no header line and no rows)")
    if any(not h.strip() for h in header):
        raise IngestError(f"{where}: unreadable: the header has an empty column name: {header}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise IngestError(f"{where}: unreadable: the header repeats column names {dupes}")
    return header


def _open(con: duckdb.DuckDBPyConnection, path: Path, role: str, view: str) -> _Source:
    path = Path(path)
    fmt, files = _files_of(path, role)
    where = f"{role} file {path}"
    if fmt == "csv":
        header = _csv_header(files[0], where)
        cols = "{" + ", ".join(f"{_lit(h)}: 'VARCHAR'" for h in header) + "}"
        reader = (f"read_csv({_lit(str(files[0]))}, header=true, auto_detect=false, columns={cols}, "
                  "delim=',', quote='\"', escape='\"', strict_mode=true)")
    else:
        flist = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
        reader = f"read_parquet({flist}, union_by_name=true)"
    try:
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {reader}")
        described = con.sql(f"DESCRIBE {view}").fetchall()
        src = _Source(role, path, view, {r[0]: str(r[1]) for r in described})
        src.rows = int(con.sql(f"SELECT count(*) FROM {view}").fetchall()[0][0])
    except duckdb.Error as e:
        raise IngestError(f"{where}: unreadable: {_first_line(e)}") from e
    if src.rows == 0:
        raise IngestError(f"{where}: the file is empty (no rows; columns: {list(src.columns)})")
    return src


def _first_line(e: BaseException) -> str:
    """DuckDB errors carry a multi-line hint; the first lines say what is wrong."""
    lines = []
    for ln in str(e).splitlines():
        if ln.startswith(("LINE ", "Possible fixes")):
            break
        if ln.strip():
            lines.append(ln.strip())
    return " ".join(lines[:4])


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# --------------------------------------------------------------------------- per-column plans


@dataclass
class _Plan:
    """How one output column is parsed from its raw column, and what makes a row bad."""

    name: str  # output column
    source: str | None  # raw column, None when the column is absent (all missing)
    parsed: str  # SQL expression of the clean typed value (NULL = missing)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (problem, SQL predicate)


def _type_refusal(col: str, t: str, expected: str) -> tuple[str, str]:
    return (f"has type {t}; expected {expected}", f"{_q(col)} IS NOT NULL")


def _blank(raw: str, t: str) -> str:
    return f"({raw} IS NULL OR trim({raw}) = '')" if _is_string(t) else f"({raw} IS NULL)"


def _raw(src: _Source, col: str) -> tuple[str, str]:
    """The raw column as SQL (ENUM read as text) and its DuckDB type."""
    t = src.columns[col]
    return (f"CAST({_q(col)} AS VARCHAR)" if t.startswith("ENUM") else _q(col)), t


def _id_plan(src: _Source, col: str = ID_COLUMN) -> _Plan:
    raw, t = _raw(src, col)
    checks = [("user_id is missing (null)", _blank(raw, t))]
    if _is_int(t):
        parsed = f"TRY_CAST({raw} AS BIGINT)"
        checks.append(("is outside the int64 range", f"{raw} IS NOT NULL AND {parsed} IS NULL"))
    elif _is_string(t):
        parsed = (f"CASE WHEN regexp_full_match(trim({raw}), '[+-]?[0-9]+') "
                  f"THEN TRY_CAST(trim({raw}) AS BIGINT) END")
        checks.append(("is not an integer", f"NOT {_blank(raw, t)} AND {parsed} IS NULL"))
    else:
        parsed = "NULL::BIGINT"
        checks.append(_type_refusal(col, t, "integers"))
    return _Plan(ID_COLUMN, col, parsed, checks)


def _time_plan(src: _Source, col: str, out: str, lo: str, hi: str,
               required: bool = True) -> _Plan:
    """A timestamp column; ``required`` False lets a cell be empty (null: a default applies)."""
    raw, t = _raw(src, col)
    checks = [("timestamp is missing (null)", _blank(raw, t))] if required else []
    if _is_time(t):
        parsed = f"CAST({raw} AS TIMESTAMPTZ)"
    elif _is_string(t):
        parsed = f"TRY_CAST(NULLIF(trim({raw}), '') AS TIMESTAMPTZ)"
        checks.append(("is not a parseable timestamp (use ISO-8601, e.g. 2026-01-31 or "
                       "2026-01-31T08:00:00Z)", f"NOT {_blank(raw, t)} AND {parsed} IS NULL"))
    else:
        parsed = "NULL::TIMESTAMPTZ"
        checks.append(_type_refusal(col, t, "a timestamp, a date, or ISO-8601 text"))
    checks.append((f"timestamp is outside [{lo}, {hi}]",
                   f"{parsed} IS NOT NULL AND ({parsed} < {_lit(lo)}::TIMESTAMPTZ "
                   f"OR {parsed} > {_lit(hi)}::TIMESTAMPTZ)"))
    return _Plan(out, col, parsed, checks)


def _number_plan(src: _Source, col: str, out: str, f: ProfileField | None) -> _Plan:
    """Numeric profile fields (``f``) and the events' ``value`` (``f`` None: any finite number)."""
    raw, t = _raw(src, col)
    checks: list[tuple[str, str]] = []
    if _is_number(t):
        d = f"CAST({raw} AS DOUBLE)"
    elif _is_string(t):
        d = f"TRY_CAST(trim({raw}) AS DOUBLE)"
        checks.append(("is not a number", f"NOT {_blank(raw, t)} AND {d} IS NULL"))
    else:
        d = "NULL::DOUBLE"
        checks.append(_type_refusal(col, t, "numbers"))
    parsed = f"(CASE WHEN isnan({d}) THEN NULL ELSE {d} END)"
    checks.append(("is not finite", f"isinf({d})"))
    if f is not None:
        if f.min_value is not None:
            checks.append((f"is below the minimum {f.min_value:g}",
                           f"NOT isinf({d}) AND {parsed} < {float(f.min_value)!r}"))
        if f.max_value is not None:
            checks.append((f"is above the maximum {f.max_value:g}",
                           f"NOT isinf({d}) AND {parsed} > {float(f.max_value)!r}"))
        if f.integer:
            checks.append(("is not a whole number",
                           f"NOT isinf({d}) AND {parsed} <> floor({parsed})"))
    return _Plan(out, col, parsed, checks)


def _field_plan(src: _Source, f: ProfileField) -> _Plan:
    col = f.name
    if col not in src.columns:  # optional and absent: all missing
        sql_type = {FieldKind.numeric: "DOUBLE", FieldKind.tags: "VARCHAR[]"}.get(f.kind, "VARCHAR")
        return _Plan(col, None, f"NULL::{sql_type}")
    raw, t = _raw(src, col)
    if f.kind == FieldKind.numeric:
        plan = _number_plan(src, col, col, f)
    elif f.kind in (FieldKind.categorical, FieldKind.text):
        if not _is_string(t):
            plan = _Plan(col, col, "NULL::VARCHAR", [_type_refusal(col, t, "text")])
        else:
            v = f"NULLIF(trim({raw}), '')"
            if f.kind == FieldKind.text:
                plan = _Plan(col, col, v)
            else:
                domain = ", ".join(_lit(x) for x in f.domain or ())
                plan = _Plan(col, col, f"(CASE WHEN {v} IN ({domain}) THEN {v} END)", [
                    (f"value is not in the declared domain {list(f.domain or ())}",
                     f"{v} IS NOT NULL AND {v} NOT IN ({domain})"),
                ])
    else:  # tags
        if _is_string_list(t):
            lst, checks = raw, []
        elif _is_string(t):
            j = f"NULLIF(trim({raw}), '')"
            ok = (f"(CASE WHEN json_valid({j}) THEN json_type({j}) = 'ARRAY' AND coalesce(list_bool_and("
                  f"list_transform(json_extract({j}, '$[*]'), lambda e: json_type(e) IN ('VARCHAR', 'NULL'))), true) "
                  "ELSE false END)")
            lst = f"(CASE WHEN {ok} THEN from_json({j}, '[\"VARCHAR\"]') END)"
            checks = [('is not a JSON list of strings (write tags as ["a","b"])',
                       f"{j} IS NOT NULL AND NOT coalesce({ok}, false)")]
        else:
            lst, checks = "NULL::VARCHAR[]", [_type_refusal(col, t, 'a list of strings or JSON text ["a","b"]')]
        cleaned = (f"list_filter(list_transform({lst}, lambda x: trim(x)), "
                   f"lambda x: x IS NOT NULL AND x <> '')")
        plan = _Plan(col, col, f"NULLIF({cleaned}, []::VARCHAR[])", checks)
    if f.required:
        plan.checks.insert(0, ("required field is missing (null or blank)", f"{plan.parsed} IS NULL "
                               + " ".join(f"AND NOT coalesce({p}, false)" for _, p in plan.checks)))
    return plan


# --------------------------------------------------------------------------- checks


def _fmt_value(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, str) and len(v) > _MAX_VALUE_CHARS:
        return v[:_MAX_VALUE_CHARS] + "..."
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, list):
        return [_fmt_value(x) for x in v[:10]] + (["..."] if len(v) > 10 else [])
    return v


def _shown_columns(src: _Source, wanted: list[str]) -> list[str]:
    """The raw columns a sample row shows: the ones ingest reads, in file order."""
    cols = [c for c in src.columns if c in wanted]
    return cols or list(src.columns)


def _samples(con: duckdb.DuckDBPyConnection, src: _Source, predicate: str, cols: list[str],
             n: int = 1) -> list[dict[str, Any]]:
    sel = ", ".join(_q(c) for c in cols)
    rows = con.sql(f"SELECT {sel} FROM {src.view} WHERE {predicate} LIMIT {n}").fetchall()
    return [{c: _fmt_value(v) for c, v in zip(cols, r)} for r in rows]


def _check(con: duckdb.DuckDBPyConnection, src: _Source, plans: list[_Plan],
           shown: list[str]) -> list[str]:
    """Run every plan's predicates in one scan; a message per failing (column, problem)."""
    items = [(p, problem, pred) for p in plans for problem, pred in p.checks]
    if not items:
        return []
    counts_sql = ", ".join(f"count(*) FILTER (WHERE {pred})" for _, _, pred in items)
    try:
        counts = con.sql(f"SELECT {counts_sql} FROM {src.view}").fetchall()[0]
    except duckdb.Error as e:
        raise _fail(src, f"unreadable: {_first_line(e)}") from e
    problems = []
    for (plan, problem, pred), n in zip(items, counts):
        if n:
            sample = _samples(con, src, pred, shown)
            problems.append(f"{src.where}: column {plan.source!r}: {problem}: {n} of {_n(src.rows, 'row')}; "
                            f"e.g. row {sample[0] if sample else '?'}")
    return problems


def _raise(problems: list[str]) -> None:
    if not problems:
        return
    shown = problems[:MAX_PROBLEMS]
    more = len(problems) - len(shown)
    head = "refused: " + ("1 problem" if len(problems) == 1 else f"{len(problems)} problems")
    raise IngestError(head + "\n" + "\n".join(f"- {p}" for p in shown)
                      + (f"\n- ... and {more} more" if more > 0 else ""))


def _duplicates(con: duckdb.DuckDBPyConnection, src: _Source, id_sql: str, shown: list[str]) -> list[str]:
    n_ids, n_rows = con.sql(f"""
        SELECT count(*), sum(c) FROM (SELECT count(*) AS c FROM {src.view} GROUP BY {id_sql}
                                      HAVING count(*) > 1)""").fetchall()[0]
    if not n_ids:
        return []
    uid, top = con.sql(f"""
        SELECT {id_sql} AS uid, count(*) AS c FROM {src.view} GROUP BY 1 HAVING count(*) > 1
        ORDER BY c DESC, uid LIMIT 1""").fetchall()[0]
    rows = _samples(con, src, f"{id_sql} = {int(uid)}", shown, n=2)
    return [f"{src.where}: column {ID_COLUMN!r}: duplicate user ids: {_n(n_ids, 'id')} "
            f"{'appears' if n_ids == 1 else 'appear'} more than once ({_n(n_rows, 'row')}); e.g. user_id {uid} appears {top} times, rows {rows}"]


def _orphans(con: duckdb.DuckDBPyConnection, ev: _Source, ev_id: str, pr: _Source, pr_id: str,
             shown: list[str]) -> list[str]:
    n_rows, n_ids, uid = con.sql(f"""
        WITH e AS (SELECT {ev_id} AS uid FROM {ev.view}),
             p AS (SELECT {pr_id} AS uid FROM {pr.view}),
             o AS (SELECT e.uid FROM e ANTI JOIN p ON e.uid = p.uid)
        SELECT count(*), count(DISTINCT uid), min(uid) FROM o""").fetchall()[0]
    if not n_rows:
        return []
    rows = _samples(con, ev, f"{ev_id} = {int(uid)}", shown)
    return [f"{ev.where}: column {ID_COLUMN!r}: {ev.role} for user ids not in the profiles file "
            f"{pr.path}: {_n(n_rows, 'row')} for {_n(n_ids, 'unknown id')}; e.g. user_id {uid}, row "
            f"{rows[0] if rows else '?'}"]


# --------------------------------------------------------------------------- labels file


def _label_columns(con: duckdb.DuckDBPyConnection, lb: _Source, targets: list[LTVTarget] | None,
                   schema: ProfileSchema) -> tuple[list[str], list[str]]:
    """(outcome columns, ignored columns) of a labels file, checked against ``ltv.targets`` and
    the profile schema before any other file is read; refusals name the column or the key."""
    first = _samples(con, lb, "true", list(lb.columns))
    row = f"the file has columns {list(lb.columns)}; e.g. row {first[0] if first else '?'}"
    problems = []
    if ID_COLUMN not in lb.columns:
        problems.append(f"{lb.where}: missing required column(s) [{ID_COLUMN!r}]; {row}")
    others = [c for c in lb.columns if c not in (ID_COLUMN, LABEL_TIMESTAMP)]
    if targets is not None:
        outcomes = [t.name for t in targets]
        for i, t in enumerate(targets):
            if t.name not in lb.columns:
                problems.append(f"{lb.where}: ltv.targets[{i}].name: {t.name!r} is not a column "
                                f"of the labels file; {row}")
    else:
        outcomes = others
        if not outcomes:
            problems.append(f"{lb.where}: no outcome columns: besides {ID_COLUMN} and "
                            f"{LABEL_TIMESTAMP} it needs one or more numeric columns; {row}")
    for c in outcomes:
        if c == TIMESTAMP_COLUMN:
            problems.append(f"{lb.where}: column {c!r}: a labels file's time column is "
                            f"{LABEL_TIMESTAMP!r} (when each label became known); rename it")
        elif c in (ID_COLUMN, LABEL_TIMESTAMP) or c in schema.names:
            problems.append(f"{lb.where}: column {c!r}: an outcome cannot be named like "
                            f"{'a profile field' if c in schema.names else 'a key column'} "
                            "(the training frame joins profiles and labels); rename it")
    _raise(problems)
    return outcomes, [c for c in others if c not in outcomes]


def _label_plans(lb: _Source, outcomes: list[str], targets: list[LTVTarget] | None,
                 lo: str, hi: str) -> list[_Plan]:
    """user_id, label_timestamp (when the file has it) and each outcome, with its kind's rule."""
    plans = [_id_plan(lb)]
    if LABEL_TIMESTAMP in lb.columns:
        plans.append(_time_plan(lb, LABEL_TIMESTAMP, LABEL_TIMESTAMP, lo, hi, required=False))
    by_name = {t.name: t for t in targets or ()}
    for c in outcomes:
        plan = _number_plan(lb, c, c, None)
        if c in by_name:
            rule = value_rule(by_name[c])
            plan.checks.append((f"breaks the rule of its target kind ({rule.says}; ltv.targets)",
                                f"{plan.parsed} IS NOT NULL AND NOT isinf({plan.parsed}) AND "
                                f"{rule.violation_sql(plan.parsed)}"))
        plans.append(plan)
    return plans


def _labels_before_profiles(con: duckdb.DuckDBPyConnection, lb: _Source, lb_plans: list[_Plan],
                            pr: _Source, pr_plans: list[_Plan], shown: list[str]) -> list[str]:
    """A label stamped before its user's profile snapshot: the point-in-time join would find no
    profile to predict it from (the user would silently drop out of every model)."""
    ts = next((p for p in lb_plans if p.name == LABEL_TIMESTAMP), None)
    if ts is None:
        return []
    n, uid, label_ts, profile_ts = con.sql(f"""
        WITH l AS (SELECT {lb_plans[0].parsed} AS uid, {ts.parsed} AS ts FROM {lb.view}),
             p AS (SELECT {pr_plans[0].parsed} AS uid, {pr_plans[1].parsed} AS ts FROM {pr.view}),
             bad AS (SELECT l.uid, l.ts AS lts, p.ts AS pts FROM l JOIN p ON l.uid = p.uid
                     WHERE l.ts < p.ts)
        SELECT count(*), min(uid), arg_min(lts, uid), arg_min(pts, uid) FROM bad""").fetchall()[0]
    if not n:
        return []
    rows = _samples(con, lb, f"{lb_plans[0].parsed} = {int(uid)}", shown)
    return [f"{lb.where}: column {LABEL_TIMESTAMP!r}: is before the user's profile "
            f"{TIMESTAMP_COLUMN} (a label must become known after the profile it is predicted "
            f"from): {_n(n, 'row')}; e.g. user_id {uid} labelled at {_fmt_value(label_ts)}, "
            f"profile at {_fmt_value(profile_ts)}, row {rows[0] if rows else '?'}"]


def _write_file_labels(con: duckdb.DuckDBPyConnection, layout: DatasetLayout, lb: _Source,
                       plans: list[_Plan], outcomes: list[str], horizon_days: int,
                       chunk_size: int) -> PartWriter:
    """The labels file's rows, sorted by user, stamped with their label time (the file's, or the
    profile's event_timestamp + horizon)."""
    p_glob = _lit(str(layout.profiles / "*.parquet"))
    parsed = {p.name: p.parsed for p in plans}
    label_ts = parsed.get(LABEL_TIMESTAMP, "NULL::TIMESTAMPTZ")
    cols = ", ".join(f"l.{_q(c)}" for c in outcomes)
    sql = f"""
        WITH l AS (SELECT {parsed[ID_COLUMN]} AS {ID_COLUMN}, {label_ts} AS {LABEL_TIMESTAMP},
                          {", ".join(f"{parsed[c]} AS {_q(c)}" for c in outcomes)}
                   FROM {lb.view}),
             p AS (SELECT {ID_COLUMN}, {TIMESTAMP_COLUMN} FROM read_parquet({p_glob}))
        SELECT l.{ID_COLUMN},
               coalesce(l.{LABEL_TIMESTAMP},
                        p.{TIMESTAMP_COLUMN} + INTERVAL {int(horizon_days)} DAY) AS {LABEL_TIMESTAMP},
               {cols}
        FROM l JOIN p ON l.{ID_COLUMN} = p.{ID_COLUMN}
        ORDER BY l.{ID_COLUMN}"""
    writer = PartWriter(layout.labels, file_label_schema(outcomes))
    _stream_parts(con, sql, writer, chunk_size)
    return writer


# --------------------------------------------------------------------------- writing


def _stream_parts(con: duckdb.DuckDBPyConnection, sql: str, writer: PartWriter, chunk_size: int) -> None:
    """Write a query's rows as parts of ``chunk_size`` rows: memory bounded by the chunk."""
    reader = con.sql(sql).to_arrow_reader(min(chunk_size, 131_072))
    pending: list[pa.RecordBatch] = []
    n = 0
    for batch in reader:
        pending.append(batch)
        n += batch.num_rows
        while n >= chunk_size:
            table = pa.Table.from_batches(pending)
            writer.write(table.slice(0, chunk_size))
            rest = table.slice(chunk_size)
            pending, n = rest.to_batches(), rest.num_rows
    if n:
        writer.write(pa.Table.from_batches(pending, schema=reader.schema))


def _select(plans: list[_Plan], view: str, order_by: str) -> str:
    """The clean rows, sorted: DuckDB does not keep file order through parallel scans, and a
    sorted output is reproducible (same input, same parts) and prunes well by user_id."""
    cols = ", ".join(f"{p.parsed} AS {_q(p.name)}" for p in plans)
    return f"SELECT {cols} FROM {view} ORDER BY {order_by}"


def _write_labels(con: duckdb.DuckDBPyConnection, layout: DatasetLayout, scratch: Path,
                  users: int, events: int, horizon_days: int, chunk_size: int) -> int:
    """Labels per user-id bucket: derive_labels sees one bucket's profiles and events at a time."""
    buckets = max(1, math.ceil(users / chunk_size), math.ceil(events / (8 * chunk_size)))
    p_glob, e_glob = _lit(str(layout.profiles / "*.parquet")), _lit(str(layout.events / "*.parquet"))
    writer = PartWriter(layout.labels, label_schema(horizon_days))
    if buckets > 1:  # partition once, so each bucket reads only its own files
        bucket = f"((user_id % {buckets}) + {buckets}) % {buckets}"
        for name, glob, cols in (("p", p_glob, f"user_id, {TIMESTAMP_COLUMN}"),
                                 ("e", e_glob, f"user_id, {EVENT_TIMESTAMP}, {EVENT_VALUE}")):
            con.execute(f"COPY (SELECT {cols}, {bucket} AS bucket FROM read_parquet({glob})) "
                        f"TO {_lit(str(scratch / name))} (FORMAT parquet, PARTITION_BY (bucket))")
    for i in range(buckets):
        if buckets > 1:
            p_src = f"read_parquet({_lit(str(scratch / 'p' / f'bucket={i}' / '*.parquet'))})"
            if not (scratch / "p" / f"bucket={i}").exists():
                continue
            e_dir = scratch / "e" / f"bucket={i}"
            e_src = (f"read_parquet({_lit(str(e_dir / '*.parquet'))})" if e_dir.exists()
                     else f"(SELECT * FROM read_parquet({e_glob}) LIMIT 0)")
        else:
            p_src, e_src = f"read_parquet({p_glob})", f"read_parquet({e_glob})"
        prof = con.sql(f"SELECT user_id, {TIMESTAMP_COLUMN} FROM {p_src}").to_arrow_table()
        ev = con.sql(f"SELECT user_id, {EVENT_TIMESTAMP}, {EVENT_VALUE} FROM {e_src}").to_arrow_table()
        writer.write(derive_labels(prof, ev, horizon_days))
    return writer.parts


def _check_paths(inputs: dict[str, Path | None], out: Path, overwrite: bool) -> None:
    out_r = out.resolve()
    for role, p in inputs.items():
        if p is None:
            continue
        p_r = p.resolve()
        if p_r == out_r or out_r in p_r.parents or p_r in out_r.parents:
            raise IngestError(f"output directory {out} overlaps the {role} input {p}; "
                              "choose an output directory outside the inputs")
    if out.exists() and not overwrite:
        raise IngestError(f"output directory {out} already exists (pass --overwrite to replace it)")


def _timestamp_bound(value: str, name: str) -> str:
    try:
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            ts = con.sql(f"SELECT CAST({_lit(value)} AS TIMESTAMPTZ)").fetchall()[0][0]
    except duckdb.Error as e:
        raise IngestError(f"{name} {value!r} is not a timestamp: {_first_line(e)}") from e
    return ts.isoformat()


# --------------------------------------------------------------------------- entry point


def ingest(
    profiles: Path,
    events: Path | None,
    out: Path,
    schema: ProfileSchema = DEFAULT_PROFILE_SCHEMA,
    horizon_days: int = 30,
    min_timestamp: str = "2000-01-01",
    max_timestamp: str = "2100-01-01",
    overwrite: bool = False,
    chunk_size: int = 500_000,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    labels: Path | None = None,
    targets: list[LTVTarget] | None = None,
) -> dict[str, Any]:
    """Check ``profiles`` with ``events`` and/or a ``labels`` file, then write the dataset ``out``.

    Labels come from ``labels`` when given (its outcome columns: ``targets``' names, or every
    column but ``user_id`` and ``label_timestamp``), else they are derived from ``events``.
    Returns the manifest. Raises :class:`IngestError` (and writes nothing) on any bad input.
    ``taxonomy`` only stamps its fingerprint into the manifest, as the generator does.
    """
    profiles, out = Path(profiles), Path(out)
    events = Path(events) if events is not None else None
    labels = Path(labels) if labels is not None else None
    if events is None and labels is None:
        raise IngestError("give an events table (labels are derived from it) or a labels file "
                          "(--labels: the labels you already have), or both")
    if horizon_days < 1:
        raise IngestError(f"horizon_days must be >= 1, got {horizon_days}")
    if chunk_size < 1:
        raise IngestError(f"chunk_size must be >= 1, got {chunk_size}")
    lo = _timestamp_bound(min_timestamp, "min_timestamp")
    hi = _timestamp_bound(max_timestamp, "max_timestamp")
    _check_paths({"profiles": profiles, "events": events, "labels": labels}, out, overwrite)

    with tempfile.TemporaryDirectory(prefix="scaletot-ingest-") as scratch_dir:
        scratch = Path(scratch_dir)
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"SET temp_directory = {_lit(str(scratch / 'spill'))}")
            con.execute("SET preserve_insertion_order = true")
            manifest = _ingest(con, scratch, profiles, events, labels, targets, out, schema,
                               horizon_days, lo, hi, overwrite, chunk_size, taxonomy)
        finally:
            con.close()
    return manifest


def _ingest(con: duckdb.DuckDBPyConnection, scratch: Path, profiles: Path, events: Path | None,
            labels: Path | None, targets: list[LTVTarget] | None, out: Path,
            schema: ProfileSchema, horizon_days: int, lo: str, hi: str, overwrite: bool,
            chunk_size: int, taxonomy: Taxonomy) -> dict[str, Any]:
    # 0. the labels file's columns against the config, before reading anything else
    lb = _open(con, labels, "labels", "raw_labels") if labels is not None else None
    outcomes, lb_ignored = _label_columns(con, lb, targets, schema) if lb else ([], [])
    pr = _open(con, profiles, "profiles", "raw_profiles")
    ev = _open(con, events, "events", "raw_events") if events is not None else None

    # 1. columns present
    p_needed = [ID_COLUMN, TIMESTAMP_COLUMN] + [f.name for f in schema.fields if f.required]
    e_needed = [ID_COLUMN, EVENT_TIMESTAMP]
    problems = []
    for src, needed in ((pr, p_needed), (ev, e_needed)):
        if src is None:
            continue
        missing = [c for c in needed if c not in src.columns]
        if missing:
            first = _samples(con, src, "true", list(src.columns))
            problems.append(f"{src.where}: missing required column(s) {missing}; the file has columns "
                            f"{list(src.columns)}; e.g. row {first[0] if first else '?'}")
    _raise(problems)

    p_known = [ID_COLUMN, TIMESTAMP_COLUMN] + schema.names
    e_known = [ID_COLUMN, EVENT_TIMESTAMP, EVENT_VALUE]
    ignored = {"profiles": [c for c in pr.columns if c not in p_known]}
    if ev is not None:
        ignored["events"] = [c for c in ev.columns if c not in e_known]
    if lb is not None:
        ignored["labels"] = lb_ignored
    absent = [f.name for f in schema.fields if f.name not in pr.columns]
    for role, cols in ignored.items():
        if cols:
            what = "the profile schema" if role != "labels" else "ltv.targets"
            warnings.warn(f"{role} file: ignoring columns not in {what}: {cols}",
                          IngestWarning, stacklevel=3)
    if absent:
        warnings.warn(f"profiles file: optional fields {absent} have no column; they are missing "
                      "for every user", IngestWarning, stacklevel=3)

    # 2. values, one scan per file
    p_plans = ([_id_plan(pr), _time_plan(pr, TIMESTAMP_COLUMN, TIMESTAMP_COLUMN, lo, hi)]
               + [_field_plan(pr, f) for f in schema.fields])
    p_shown = _shown_columns(pr, p_known)
    problems = _check(con, pr, p_plans, p_shown)
    if ev is not None:
        e_plans = [_id_plan(ev), _time_plan(ev, EVENT_TIMESTAMP, EVENT_TIMESTAMP, lo, hi)]
        e_plans.append(_number_plan(ev, EVENT_VALUE, EVENT_VALUE, None) if EVENT_VALUE in ev.columns
                       else _Plan(EVENT_VALUE, None, "NULL::DOUBLE"))
        e_shown = _shown_columns(ev, e_known)
        problems += _check(con, ev, e_plans, e_shown)
    if lb is not None:
        l_plans = _label_plans(lb, outcomes, targets, lo, hi)
        l_shown = _shown_columns(lb, [ID_COLUMN, LABEL_TIMESTAMP] + outcomes)
        problems += _check(con, lb, l_plans, l_shown)
    _raise(problems)

    # 3. keys: unique ids in profiles (and labels), every event's and label's user in profiles,
    #    no label known before its profile
    problems = _duplicates(con, pr, p_plans[0].parsed, p_shown)
    if ev is not None:
        problems += _orphans(con, ev, e_plans[0].parsed, pr, p_plans[0].parsed, e_shown)
    if lb is not None:
        problems += (_duplicates(con, lb, l_plans[0].parsed, l_shown)
                     + _orphans(con, lb, l_plans[0].parsed, pr, p_plans[0].parsed, l_shown)
                     + _labels_before_profiles(con, lb, l_plans, pr, p_plans, l_shown))
    _raise(problems)

    # 4. write, atomically
    layout_schema = schema.arrow_schema()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        layout = DatasetLayout(tmp)
        pw = PartWriter(layout.profiles, layout_schema)
        _stream_parts(con, _select(p_plans, pr.view, ID_COLUMN), pw, chunk_size)
        parts = {"profiles": pw.parts}
        n_events = 0
        if ev is not None:
            ew = PartWriter(layout.events, EVENTS_SCHEMA)
            _stream_parts(con, _select(e_plans, ev.view,
                                       f"{ID_COLUMN}, {EVENT_TIMESTAMP}, {EVENT_VALUE} NULLS FIRST"),
                          ew, chunk_size)
            parts["events"], n_events = ew.parts, ew.rows
        if lb is None:
            parts["labels"] = _write_labels(con, layout, scratch, pw.rows, n_events, horizon_days,
                                            chunk_size)
            label_info: dict[str, Any] = {"label_source": LABELS_FROM_EVENTS,
                                          "label_names": list(label_names(horizon_days))}
        else:
            lw = _write_file_labels(con, layout, lb, l_plans, outcomes, horizon_days, chunk_size)
            default_ts = f"{TIMESTAMP_COLUMN} + {horizon_days} days"
            parts["labels"] = lw.parts
            l_glob = _lit(str(layout.labels / "*.parquet"))
            unknown = con.sql(f"SELECT {', '.join(f'count(*) - count({_q(c)})' for c in outcomes)} "
                              f"FROM read_parquet({l_glob})").fetchall()[0]
            label_info = {"label_source": LABELS_FROM_FILE, "label_names": outcomes,
                          "labels": {"users": lw.rows,
                                     "label_timestamp": (f"file (empty cells: {default_ts})"
                                                         if LABEL_TIMESTAMP in lb.columns
                                                         else default_ts),
                                     "unknown_values": {c: int(u) for c, u in zip(outcomes, unknown)}}}

        p_glob = _lit(str(layout.profiles / "*.parquet"))
        rates_sql = ", ".join(f"avg(({_q(f.name)} IS NULL)::DOUBLE)" for f in schema.fields)
        rates = con.sql(f"SELECT {rates_sql} FROM read_parquet({p_glob})").fetchall()[0] if schema.fields else ()
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "ingested",
            "users": pw.rows,
            "events": n_events,
            "horizon_days": horizon_days,
            **label_info,
            "profile_schema": schema.model_dump(mode="json"),
            "taxonomy_fingerprint": taxonomy.fingerprint(),
            "parts": parts,
            "reference_null_rates": {f.name: round(float(r), 6) for f, r in zip(schema.fields, rates)},
            "reference_domains": {f.name: list(f.domain or ()) for f in schema.of_kind(FieldKind.categorical)},
            "ignored_columns": ignored,
            "absent_fields": absent,
        }
        write_json_atomic(manifest, layout.manifest)
    return manifest
