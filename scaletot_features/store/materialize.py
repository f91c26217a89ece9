"""Load the online store: gated, from the beginning of time on a view's first run, then incremental.

:func:`materialize` runs the gate it is given (the CLI passes the reasoning-feature suite) before
anything is written, and reads a few rows back: an engine that drops rows is an error, not holes.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from scaletot_features.config import StoreConfig, store_config
from scaletot_features.dataset import PART_GLOB, DatasetLayout, FeastLayout
from scaletot_features.profile import is_missing
from scaletot_features.store.repo import StoreError, apply_repo, get_store, repo_path

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureStore

    from scaletot_features.config import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class GateFailedError(StoreError):
    """The reasoning-feature suite failed: nothing was materialized."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class GateOutcome(Protocol):
    """What a gate returns (``validation.gate.GateResult`` is one)."""

    suite: str
    success: bool
    failed: list[Any]
    rows: int

    def failure_report(self) -> str:
        """One line per failing expectation, for the error message."""
        ...


Gate = Callable[[Path, "Settings | None"], GateOutcome]
"""Checks DIR's reasoning features before :func:`materialize` writes anything, e.g.
``validation.gate.reasoning_gate``: the library receives it as an argument and never imports
``validation/`` (the CLI layer passes it)."""


def _count_in_window(glob: str, ts_column: str, start: datetime, end: datetime) -> int:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return int(con.execute(
            f"SELECT count(*) FROM read_parquet(?) WHERE {ts_column} >= ? AND {ts_column} <= ?",
            [glob, start, end]).fetchone()[0])
    finally:
        con.close()


def _verify_online(fs: "FeatureStore", views: list[Any], end: datetime, sample: int = 5) -> None:
    """Read back a few of the newest rows of each view: a feature present offline must be online.

    Some engines log a failed online write and carry on (Feast 0.67's Ray engine does); this
    turns that into an error instead of an online store with holes.
    """
    import duckdb

    for fv in views:
        src = fv.batch_source
        names = [f.name for f in fv.features]
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            cols = ", ".join(f'"{n}"' for n in ["user_id", *names])
            ts = src.timestamp_field
            rows = con.sql(f"SELECT {cols} FROM read_parquet($1) WHERE {ts} <= $2 "
                           f"ORDER BY {ts} DESC, user_id LIMIT {int(sample)}",
                           params=[src.path, end]).to_arrow_table().to_pylist()
        finally:
            con.close()
        if not rows:
            continue
        got = fs.get_online_features(
            features=[f"{fv.name}:{n}" for n in names],
            entity_rows=[{"user_id": int(r["user_id"])} for r in rows]).to_dict()
        for n in names:
            for i, r in enumerate(rows):
                if not is_missing(r[n]) and got[n][i] is None:  # Feast stores [] as null
                    raise StoreError(
                        f"materialization of {fv.name!r} left {n!r} empty in the online store for "
                        f"user {r['user_id']} although the offline row has it: the batch engine "
                        "dropped rows (see its log)")


def materialize(data_dir: Path | str, settings: "Settings | None" = None,
                end: datetime | None = None, *, store: StoreConfig | None = None,
                repo_dir: Path | str | None = None, gate: Gate | None = None) -> dict[str, Any]:
    """Load the latest feature rows up to ``end`` (default now, UTC) into the online store.

    ``gate`` (e.g. ``validation.gate.reasoning_gate``, which the CLI passes unless
    ``store.gate`` is false) runs first on DIR's reasoning features: a failure raises
    :class:`GateFailedError` naming the failing expectations, and nothing is written; None
    materializes ungated. A view never materialized is loaded from the beginning of time
    (Feast's own ``materialize-incremental`` would start one year back for views without a TTL);
    later runs are incremental. Returns what was done: views, rows in the window, seconds, rows/s.
    """
    cfg = store_config(settings, store)
    data_dir = Path(data_dir).resolve()
    repo = repo_path(data_dir, repo_dir)
    if not FeastLayout(repo).registry.exists() and cfg.online_store.type != "postgres":
        apply_repo(data_dir, settings, store=cfg, repo_dir=repo)
    end = end or datetime.now(timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    report: dict[str, Any] = {"repo": str(repo), "end": end.isoformat(),
                              "online_store": cfg.online_store.type,
                              "batch_engine": cfg.batch_engine}
    table_dir = DatasetLayout(data_dir).features.reasoning
    if gate is not None and table_dir.exists():
        if not any(table_dir.glob(PART_GLOB)):
            raise StoreError(f"no reasoning features at {table_dir}: run the embed stage first")
        result = gate(data_dir, settings)
        report["gate"] = {"suite": result.suite, "success": result.success,
                          "failed": len(result.failed), "rows": result.rows}
        if not result.success:
            raise GateFailedError(
                "reasoning-feature suite failed; nothing was materialized:\n"
                + result.failure_report(), result)
    fs = get_store(data_dir, repo)
    views = [fv for fv in fs.list_feature_views() if fv.online]
    if not views:
        raise StoreError(f"no online feature views in {repo}: run apply first")
    fresh = [fv for fv in views if not fv.materialization_intervals]
    seen = [fv for fv in views if fv.materialization_intervals]
    rows: dict[str, int] = {}
    for fv in views:
        intervals = fv.materialization_intervals
        start = max(i[1] for i in intervals) if intervals else EPOCH
        src = fv.batch_source
        rows[fv.name] = _count_in_window(src.path, src.timestamp_field, start, end)
    t0 = time.perf_counter()
    if fresh:
        fs.materialize(EPOCH, end, feature_views=[fv.name for fv in fresh])
    if seen:
        fs.materialize_incremental(end, feature_views=[fv.name for fv in seen])
    seconds = time.perf_counter() - t0
    _verify_online(fs, views, end)
    total = sum(rows.values())
    report.update({"views": rows, "rows": total, "seconds": round(seconds, 3),
                   "rows_per_s": round(total / seconds, 1) if seconds > 0 else None})
    return report
