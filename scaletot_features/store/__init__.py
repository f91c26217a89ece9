"""The Feast plugin: repository per dataset, materialization, retrieval, serving, lookalikes.

Importing this package is cheap (no Feast, no torch). The work is in ``definitions.py`` (the
Feast objects of a dataset; ``feast_repo/features.py`` is the repository file that ships with
them), ``repo.py`` (write and apply a repository), ``materialize.py`` (the gated online load),
``retrieval.py`` (historical and online reads), ``lookalike.py`` (FAISS over the reasoning
embedding), ``transforms.py`` (what the on-demand view runs) and ``server.py`` (the validating
HTTP server); the store's configuration (:class:`StoreConfig`, one class per online-store
backend) lives in ``scaletot_features/config.py`` and is re-exported here.
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
