"""One Feast repository per dataset directory: write it, register its definitions.

``apply_repo(DIR)`` writes ``DIR/feast/``: a ``feature_store.yaml`` generated from the store
configuration (offline DuckDB; online SQLite, Redis or Postgres; local or Ray materialization)
and the ``features.py`` shipped in this package (``store/feast_repo/``), which reads every schema
from DIR through ``store/definitions.py``. That folder is a complete Feast repository: ``cd
DIR/feast && feast apply && feast materialize-incremental $(date -u +%FT%T) && feast serve``
works with no environment variables, and so do the functions here. Registry and online store live inside it (relative paths, so the
dataset directory can move).

Here: :func:`apply_repo`, :func:`get_store`; loading the online store is in ``materialize.py``,
reading features (historical, online) in ``retrieval.py``, lookalikes in ``lookalike.py``
(signatures in docs/feast.md).
Feast is imported inside the functions: it costs about 8 s (it imports torch).
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from scaletot_features.config import StoreConfig, store_config
from scaletot_features.data.io import write_text_atomic
from scaletot_features.dataset import (
    FEAST_DEFINITIONS,
    ONLINE_STORE_FILE,
    REGISTRY_FILE,
    DatasetLayout,
    FeastLayout,
)
from scaletot_features.ray_engine import default_tmpdir

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureStore

    from scaletot_features.config import Settings

SHIPPED_REPO = "feast_repo"
"""The Feast repository that ships inside this package (its ``features.py``)."""


class StoreError(RuntimeError):
    """A dataset or request the feature store cannot serve; the message says what to do."""


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
            tmp = cfg.ray_tmpdir or str(default_tmpdir())
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
    write_text_atomic(header + yaml.safe_dump(config, sort_keys=False), FeastLayout(repo).config)
    write_text_atomic(shipped_definitions(), FeastLayout(repo).definitions)
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


