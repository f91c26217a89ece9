"""Read features back: point-in-time-correct training tables and online lookups.

Both check the requested service or ``view:feature`` references against the registry first, and
fill the on-demand view's request keys that a caller left out (an absent field is missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from scaletot_features.data.io import read_table, write_parquet_atomic
from scaletot_features.dataset import FeastLayout
from scaletot_features.store.repo import StoreError, get_store, repo_path

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureStore

DEFAULT_SERVICES = ("ltv_with_reasoning", "ltv_profile_only")


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
