"""One Feast repository per dataset directory: apply, materialize, historical retrieval.

``apply_repo(DIR)`` writes ``DIR/feast/``: a ``feature_store.yaml`` generated from the store
configuration (offline DuckDB; online SQLite, Redis or Postgres; local or Ray materialization)
and the ``features.py`` shipped in this package (``store/feast_repo/``), which reads every schema
from DIR through ``store/definitions.py``. That folder is a complete Feast repository: ``cd
DIR/feast && feast apply && feast materialize-incremental $(date -u +%FT%T) && feast serve``
works with no environment variables, and so do the functions here. Registry and online store live inside it (relative paths, so the
dataset directory can move).

Functions for the CLI (signatures in docs/feast.md): :func:`apply_repo`, :func:`materialize`
(with the gate it is given: the CLI passes the reasoning-feature suite),
:func:`historical_features` (point-in-time correct, written atomically), :func:`online_features`;
lookalikes are in ``lookalike.py``.
Feast is imported inside the functions: it costs about 8 s (it imports torch).
"""

from __future__ import annotations

import importlib.util
from importlib import resources
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

import yaml

from scaletot_features.config import StoreConfig, store_config
from scaletot_features.data.io import read_table, write_parquet_atomic
from scaletot_features.dataset import (
    FEAST_DEFINITIONS,
    ONLINE_STORE_FILE,
    PART_GLOB,
    REGISTRY_FILE,
    DatasetLayout,
    FeastLayout,
)
from scaletot_features.profile import is_missing

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureStore

    from scaletot_features.config import Settings

SHIPPED_REPO = "feast_repo"
"""The Feast repository that ships inside this package (its ``features.py``)."""
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DEFAULT_SERVICES = ("ltv_with_reasoning", "ltv_profile_only")


class StoreError(RuntimeError):
    """A dataset or request the feature store cannot serve; the message says what to do."""


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


# --------------------------------------------------------------------------- paths and config


def shipped_definitions() -> str:
    """The ``features.py`` every generated repository gets: package data of this package."""
    return (resources.files(__package__) / SHIPPED_REPO / FEAST_DEFINITIONS).read_text()


def repo_path(data_dir: Path | str, repo_dir: Path | str | None = None) -> Path:
    """The dataset's Feast repository folder (``DIR/feast`` unless given)."""
    return Path(repo_dir).resolve() if repo_dir is not None else \
        DatasetLayout(Path(data_dir).resolve()).feast.root


def render_config(cfg: StoreConfig) -> dict[str, Any]:
    """The ``feature_store.yaml`` content for a store configuration."""
    online: dict[str, Any]
    backend = cfg.online_store
    if backend.type == "sqlite":
        online = {"type": "sqlite", "path": ONLINE_STORE_FILE}
    elif backend.type == "redis":
        online = {"type": "redis", "connection_string": backend.connection_string}
    else:
        pg = backend
        online = {"type": "postgres", "host": pg.host, "port": pg.port, "database": pg.database,
                  "db_schema": pg.db_schema, "user": pg.user,
                  "password": "${" + pg.password_env + "}", "sslmode": pg.sslmode,
                  "vector_enabled": cfg.lookalike_backend == "pgvector"}
    engine: Any = "local"
    if cfg.batch_engine == "ray":
        engine = {"type": "ray.engine"}
        if cfg.ray_address:
            engine["ray_address"] = cfg.ray_address
        else:  # local Ray: our own session folder and a bounded object store
            tmp = cfg.ray_tmpdir or str(Path(tempfile.gettempdir()) / f"scaletot-ray-{os.getuid()}")
            engine["ray_conf"] = {"_temp_dir": str(Path(tmp).resolve()),
                                  "object_store_memory": cfg.ray_object_store_mb * 1024 * 1024}
    return {
        "project": cfg.project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": REGISTRY_FILE, "cache_ttl_seconds": 60},
        "offline_store": {"type": "duckdb"},
        "online_store": online,
        "batch_engine": engine,
        "entity_key_serialization_version": 3,
    }


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_repo(data_dir: Path | str, cfg: StoreConfig | None = None,
               repo_dir: Path | str | None = None) -> Path:
    """Write (or refresh) the dataset's repository folder: feature_store.yaml + features.py."""
    data_dir = Path(data_dir).resolve()
    if not DatasetLayout(data_dir).manifest.exists():
        raise StoreError(f"{data_dir} is not a dataset directory (no manifest.json)")
    cfg = cfg or StoreConfig()
    repo = repo_path(data_dir, repo_dir)
    if repo.parent != data_dir:
        raise StoreError(f"the repository folder {repo} must sit directly inside {data_dir}: "
                         "features.py finds the dataset as its parent")
    repo.mkdir(parents=True, exist_ok=True)
    config = render_config(cfg)
    ray_conf = config["batch_engine"].get("ray_conf") if isinstance(config["batch_engine"], dict) \
        else None
    if ray_conf:
        Path(ray_conf["_temp_dir"]).mkdir(parents=True, exist_ok=True)
    header = ("# Generated by scaletot_features.store.repo.write_repo: edit the store settings\n"
              "# (online_store, batch_engine, ...) and run `scaletot features apply` again.\n")
    _write_text_atomic(FeastLayout(repo).config, header + yaml.safe_dump(config, sort_keys=False))
    _write_text_atomic(FeastLayout(repo).definitions,
                       shipped_definitions())
    return repo


def _feast_objects(module: Any) -> list[Any]:
    from feast import Entity, FeatureService, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService)
    seen: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, kinds) and not any(value is s for s in seen):
            seen.append(value)
    return seen


def load_definitions(repo: Path) -> list[Any]:
    """Import a repository's ``features.py`` (under a fresh module name) and collect its objects.

    Feast's own ``feast apply`` imports it as module ``features`` and changes the working
    directory; this keeps the process as it was, so several datasets can be applied in one.
    """
    name = f"scaletot_feature_repo_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(name, FeastLayout(repo).definitions)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError as e:
        raise StoreError(str(e)) from e
    finally:
        sys.modules.pop(name, None)
    return _feast_objects(module)


def get_store(data_dir: Path | str, repo_dir: Path | str | None = None) -> "FeatureStore":
    """A FeatureStore on the dataset's repository (run :func:`apply_repo` first)."""
    from feast import FeatureStore

    repo = repo_path(data_dir, repo_dir)
    if not FeastLayout(repo).config.exists():
        raise StoreError(f"no Feast repository at {repo}: run `scaletot features apply "
                         f"{Path(data_dir)}` first")
    return FeatureStore(repo_path=str(repo))


# --------------------------------------------------------------------------- apply


def apply_repo(data_dir: Path | str, settings: "Settings | None" = None, *,
               store: StoreConfig | None = None, repo_dir: Path | str | None = None) -> Path:
    """Write the dataset's repository and register its definitions (``feast apply``).

    Objects defined before but gone from ``features.py`` (e.g. the live view once the encoder
    is removed) are deleted from the registry. Returns the repository folder.
    """
    cfg = store_config(settings, store)
    repo = write_repo(data_dir, cfg, repo_dir)
    objects = load_definitions(repo)
    fs = get_store(data_dir, repo)
    wanted = {(type(o).__name__, o.name) for o in objects}
    current = (list(fs.list_feature_services()) + list(fs.list_on_demand_feature_views())
               + list(fs.list_feature_views()) + list(fs.list_entities()))
    stale = [o for o in current if (type(o).__name__, o.name) not in wanted]
    fs.apply(objects, objects_to_delete=stale, partial=False)
    return repo


# --------------------------------------------------------------------------- materialize


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


# --------------------------------------------------------------------------- retrieval


def resolve_features(fs: "FeatureStore", features: str | Sequence[str] | None,
                     with_labels: bool = False) -> Any:
    """A feature service or a list of ``view:feature`` references, checked against the registry.

    ``None`` = the richest LTV service defined (``ltv_with_reasoning``, else
    ``ltv_profile_only``); a string without ``:`` names a service; ``view`` alone = all its
    features. ``with_labels`` adds the label view's features (a service is expanded for that).
    """
    services = {s.name: s for s in fs.list_feature_services()}
    if features is None:
        name = next((n for n in DEFAULT_SERVICES if n in services), None)
        if name is None:
            raise StoreError("no LTV feature service is registered: run apply first")
        features = name
    refs: list[str]
    if isinstance(features, str) and ":" not in features:
        if features not in services:
            raise StoreError(f"unknown feature service {features!r}; known: {sorted(services)}")
        if not with_labels:
            return services[features]
        refs = [f"{p.name_to_use()}:{f.name}" for p in services[features].feature_view_projections
                for f in p.features]
    else:
        refs = [features] if isinstance(features, str) else list(features)
    views = {v.name: v for v in list(fs.list_feature_views())
             + list(fs.list_on_demand_feature_views())}
    if with_labels:
        views.update({v.name: v for v in fs.list_feature_views() if v.name == "ltv_labels"})
    out: list[str] = []
    for ref in refs:
        view, _, feat = ref.partition(":")
        if view not in views:
            raise StoreError(f"unknown feature view {view!r} in {ref!r}; known: {sorted(views)}")
        names = [f.name for f in views[view].features]
        if not feat:
            out += [f"{view}:{n}" for n in names]
        elif feat not in names:
            raise StoreError(f"unknown feature {feat!r} in view {view!r}; known: {names}")
        else:
            out.append(ref)
    if with_labels:
        out += [f"ltv_labels:{f.name}" for f in views["ltv_labels"].features
                if f"ltv_labels:{f.name}" not in out]
    return out


def _entity_frame(entity_df_or_path: "pd.DataFrame | Path | str",
                  timestamp_column: str | None) -> "pd.DataFrame":
    import pandas as pd

    if isinstance(entity_df_or_path, (str, Path)):
        path = Path(entity_df_or_path)
        if not path.exists():
            raise StoreError(f"entity table {path} does not exist")
        df = read_table(path).to_pandas()
    else:
        df = entity_df_or_path.copy()
    if "user_id" not in df.columns:
        raise StoreError(f"the entity table needs a user_id column; it has {list(df.columns)}")
    candidates = [timestamp_column] if timestamp_column else ["event_timestamp", "timestamp"]
    ts = next((c for c in candidates if c in df.columns), None)
    if ts is None:
        raise StoreError(f"the entity table needs a timestamp column ({' or '.join(candidates)}); "
                         f"it has {list(df.columns)}")
    if ts != "event_timestamp":
        if "event_timestamp" in df.columns:
            raise StoreError("the entity table has both event_timestamp and "
                             f"{ts!r}; keep one")
        df = df.rename(columns={ts: "event_timestamp"})
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    if df["user_id"].isna().any() or df["event_timestamp"].isna().any():
        raise StoreError("the entity table has null user_id or timestamp values")
    df["user_id"] = df["user_id"].astype("int64")
    return df


def historical_features(data_dir: Path | str, entity_df_or_path: "pd.DataFrame | Path | str",
                        features: str | Sequence[str] | None = None,
                        out_path: Path | str | None = None, *,
                        timestamp_column: str | None = None, with_labels: bool = False,
                        full_feature_names: bool = False,
                        repo_dir: Path | str | None = None) -> Path:
    """Point-in-time-correct training features for an entity table, written to parquet.

    ``entity_df_or_path``: a DataFrame or parquet file/folder with ``user_id`` and a timestamp
    (``event_timestamp`` or ``timestamp``, or ``timestamp_column``); each row gets, per feature
    view, the latest row stamped at or before its timestamp (labels: once ``label_timestamp``
    has passed), else null. Extra columns pass through (``profile_*`` columns feed the live
    encoder view; absent ones are missing fields). ``features``: a service name,
    ``view:feature`` references, or None (the LTV service). Rows come back in the entity
    table's order. Default ``out_path``: DIR/feast/training/features.parquet. Returns the
    written path.
    """
    import pyarrow.compute as pc

    data_dir = Path(data_dir).resolve()
    fs = get_store(data_dir, repo_dir)
    wanted = resolve_features(fs, features, with_labels)
    df = _entity_frame(entity_df_or_path, timestamp_column)
    for key in request_keys(fs, wanted):  # absent profile fields are missing for the live view
        if key not in df.columns:
            df[key] = None
    order = "__scaletot_row"
    df[order] = range(len(df))
    job = fs.get_historical_features(entity_df=df, features=wanted,
                                     full_feature_names=full_feature_names)
    table = job.to_arrow()
    table = table.take(pc.sort_indices(table, [(order, "ascending")])).drop_columns(order)
    out = Path(out_path) if out_path is not None else \
        FeastLayout(repo_path(data_dir, repo_dir)).training_features
    return write_parquet_atomic(table, out)


def online_features(data_dir: Path | str, entity_rows: Iterable[dict[str, Any]] | Sequence[int],
                    features: str | Sequence[str] | None = None, *,
                    repo_dir: Path | str | None = None) -> dict[str, list[Any]]:
    """``get_online_features`` for user ids (or entity rows with request data): dict of lists."""
    fs = get_store(data_dir, repo_dir)
    wanted = resolve_features(fs, features)
    rows: list[dict[str, Any]] = [dict(r) if isinstance(r, dict) else {"user_id": int(r)}
                                  for r in entity_rows]
    for key in request_keys(fs, wanted):  # Feast wants every key; an absent field is missing
        for r in rows:
            r.setdefault(key, None)
    return fs.get_online_features(features=wanted, entity_rows=rows).to_dict()


def request_keys(fs: "FeatureStore", wanted: Any) -> list[str]:
    """The request-data keys the on-demand views among ``wanted`` read (``profile_*``)."""
    views = {p.name_to_use() for p in wanted.feature_view_projections} \
        if not isinstance(wanted, list) else {r.partition(":")[0] for r in wanted}
    return [f.name for odfv in fs.list_on_demand_feature_views() if odfv.name in views
            for src in odfv.source_request_sources.values() for f in src.schema]
