"""The Feast plugin: repository per dataset, materialization, retrieval, serving, lookalikes.

Importing this package is cheap (no Feast, no torch): the configuration lives here, the work in
``repo.py`` (apply, materialize, historical retrieval), ``lookalike.py`` (FAISS over the
reasoning embedding), ``transforms.py`` (what the on-demand view runs) and ``server.py`` (the
validating HTTP server).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PostgresConfig(BaseModel):
    """A PostgreSQL server with the pgvector extension (Feast's ``postgres`` online store)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    database: str = "feast"
    user: str = "feast"
    password_env: str = Field("SCALETOT_PG_PASSWORD",
                              description="environment variable holding the password")
    db_schema: str = "public"
    sslmode: str = "disable"


class StoreConfig(BaseModel):
    """Where and how Feast stores and serves the features (DESIGN.md 4.8, 4.11).

    The defaults are the one-machine set-up: DuckDB offline, SQLite online, local materialization,
    FAISS lookalikes. ``online_store: redis`` and ``batch_engine: ray`` are the production and
    scale-out choices; ``lookalike_backend: pgvector`` uses Feast's own vector search on a
    Postgres online store.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    project: str = Field("scaletot", pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")
    online_store: Literal["sqlite", "redis", "postgres"] = "sqlite"
    redis_connection: str = Field("127.0.0.1:6379", description="host:port[,db=N,password=...]")
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    batch_engine: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="None = a local Ray started in-process")
    ray_tmpdir: str | None = Field(None, description="local Ray's session folder (default: "
                                   "<tmp>/scaletot-ray-<uid>)")
    ray_object_store_mb: int = Field(512, ge=64, description="local Ray's object store")
    gate: bool = Field(True, description="the CLI and the demo gate materialize with the "
                       "reasoning-feature suite")
    lookalike_backend: Literal["faiss", "pgvector"] = "faiss"
    exact_max_users: int = Field(100_000, ge=1, description="exact IndexFlat up to this size")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(200, ge=8)
    hnsw_ef_search: int = Field(256, ge=8)
    recall_queries: int = Field(1_000, ge=10, description="queries for HNSW recall vs exact")
    host: str = "127.0.0.1"
    port: int = Field(6566, ge=1, le=65535)


def store_config(settings: object | None = None,
                 override: StoreConfig | None = None) -> StoreConfig:
    """The store section of ``settings`` (``settings.store``) or the defaults; ``override`` wins."""
    if override is not None:
        return override
    found = getattr(settings, "store", None) if settings is not None else None
    return found if isinstance(found, StoreConfig) else StoreConfig()


__all__ = ["PostgresConfig", "StoreConfig", "store_config"]
