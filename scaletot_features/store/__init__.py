"""The Feast plugin: repository per dataset, materialization, retrieval, serving, lookalikes.

Importing this package is cheap (no Feast, no torch). The work is in ``repo.py`` (apply,
materialize, historical retrieval), ``lookalike.py`` (FAISS over the reasoning embedding),
``transforms.py`` (what the on-demand view runs) and ``server.py`` (the validating HTTP server);
the store's configuration (:class:`StoreConfig`, one class per online-store backend) lives in
``scaletot_features/config.py`` and is re-exported here.
"""

from __future__ import annotations

from scaletot_features.config import (
    PostgresOnlineStoreConfig,
    RedisOnlineStoreConfig,
    SqliteOnlineStoreConfig,
    StoreConfig,
    store_config,
)

__all__ = ["PostgresOnlineStoreConfig", "RedisOnlineStoreConfig", "SqliteOnlineStoreConfig",
           "StoreConfig", "store_config"]
