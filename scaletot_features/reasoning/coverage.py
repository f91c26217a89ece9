"""Coverage selection: the small, representative subset of users the teacher reasons about.

Stratified by segment (acquisition channel x profile-sparsity bucket by default): each stratum
contributes round(fraction x its size) users, at least one where the stratum is not empty, so
rare segments are represented. Within a stratum users are ranked by the seeded user-id hash
every split uses (:func:`scaletot_features.dataset.user_hash01`, registered in DuckDB as a
vectorised function), which makes the choice deterministic on any platform and DuckDB version,
independent of row order, and computable in one DuckDB pass over parquet of any size.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from scaletot_features.data.io import parquet_files
from scaletot_features.dataset import user_hash01
from scaletot_features.profile import SPARSITY_BUCKETS, SPARSITY_COLUMN, ProfileSchema


def sparsity_sql(schema: ProfileSchema) -> str:
    """SQL for the sparsity bucket (``profile.SPARSITY_BUCKETS``) over the optional fields."""
    terms = []
    for f in schema.optional:
        col = f'"{f.name}"'
        if f.arrow_type == pa.list_(pa.string()):
            terms.append(f"(CASE WHEN {col} IS NULL OR len({col}) = 0 THEN 0 ELSE 1 END)")
        elif f.arrow_type == pa.string():
            terms.append(f"(CASE WHEN {col} IS NULL OR {col} = '' THEN 0 ELSE 1 END)")
        else:
            terms.append(f"(CASE WHEN {col} IS NULL OR isnan({col}) THEN 0 ELSE 1 END)")
    n = " + ".join(terms) if terms else "0"
    whens = " ".join(f"WHEN ({n}) <= {hi} THEN '{name}'" for name, hi in SPARSITY_BUCKETS
                     if hi is not None)
    return f"(CASE {whens} ELSE '{SPARSITY_BUCKETS[-1][0]}' END)"


def segment_table(profiles: Path, schema: ProfileSchema, strata: list[str]) -> str:
    """A DuckDB SELECT with user_id, the strata columns and ``stratum``, over the parquet."""
    files = ", ".join(f"'{f}'" for f in parquet_files(profiles))
    cols = []
    for s in strata:
        if s == SPARSITY_COLUMN:
            cols.append(f"{sparsity_sql(schema)} AS {SPARSITY_COLUMN}")
        elif s in schema.names:
            cols.append(f"coalesce(CAST(\"{s}\" AS VARCHAR), '<missing>') AS \"{s}\"")
        else:
            raise ValueError(
                f"coverage stratum {s!r} is neither a profile field nor {SPARSITY_COLUMN!r}; "
                f"fields: {schema.names}"
            )
    key = " || '|' || ".join(f'"{s}"' for s in strata) if strata else "'all'"
    select = ", ".join(["user_id", *cols])
    return (f"WITH seg AS (SELECT {select} FROM read_parquet([{files}])) "
            f"SELECT *, {key} AS stratum FROM seg")


def allocate(counts: dict[str, int], total: int) -> dict[str, int]:
    """Per-stratum quotas summing to ``total``: proportional, largest remainder first, and one
    for every non-empty stratum first when ``total`` allows it (rare segments are kept)."""
    n = sum(counts.values())
    total = max(0, min(total, n))
    keys = sorted(counts)
    quota = {k: 0 for k in keys}
    if total >= len(keys):
        quota = {k: 1 for k in keys}
    left = total - sum(quota.values())
    if left > 0:
        room = {k: counts[k] - quota[k] for k in keys}
        spare = sum(room.values())
        exact = {k: left * room[k] / spare for k in keys}
        for k in keys:
            quota[k] += int(exact[k])
        rest = total - sum(quota.values())
        by_remainder = sorted(keys, key=lambda k: (-(exact[k] - int(exact[k])), k))
        for k in by_remainder:
            if rest == 0:
                break
            if quota[k] < counts[k]:
                quota[k] += 1
                rest -= 1
    return quota


def select_coverage(
    profiles: Path,
    schema: ProfileSchema,
    fraction: float = 0.0732,
    strata: list[str] | None = None,
    seed: int = 0,
    max_users: int | None = None,
) -> pa.Table:
    """user_id, the strata columns and ``stratum`` of the selected users, sorted by user_id.

    round(fraction x population) users (at most ``max_users``), allocated to strata in
    proportion to their size (:func:`allocate`).
    """
    strata = list(strata if strata is not None else ["acquisition_channel", SPARSITY_COLUMN])
    if not 0 < fraction <= 1:
        raise ValueError(f"coverage fraction must be in (0, 1], got {fraction}")
    con = duckdb.connect()
    con.create_function(
        "user_hash01",
        lambda ids: pa.array(user_hash01(ids.to_numpy(zero_copy_only=False), seed, "coverage")),
        ["BIGINT"], "DOUBLE", type="arrow")
    try:
        seg = segment_table(profiles, schema, strata)
        con.sql(f"CREATE TEMP TABLE seg AS {seg}")
        counts = dict(con.sql("SELECT stratum, count(*) FROM seg GROUP BY stratum").fetchall())
        total = max(1, round(fraction * sum(counts.values())))
        if max_users is not None:
            total = min(total, max_users)
        quota = allocate(counts, total)
        con.register("quota", pa.table({"stratum": list(quota), "q": list(quota.values())}))
        sql = """
        WITH ranked AS (
            SELECT *, row_number() OVER (PARTITION BY stratum ORDER BY user_hash01(user_id), user_id) AS r
            FROM seg
        )
        SELECT ranked.* EXCLUDE (r) FROM ranked JOIN quota USING (stratum)
        WHERE r <= quota.q
        ORDER BY user_id
        """
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def population_segments(profiles: Path, schema: ProfileSchema, strata: list[str]) -> pa.Table:
    """The strata columns for every user: what the subset is compared with for drift."""
    con = duckdb.connect()
    try:
        return con.sql(segment_table(profiles, schema, strata)).to_arrow_table()
    finally:
        con.close()
