"""Lookalikes: the k users whose reasoning embedding is nearest to a given user's.

No Feast-native vector store works on these machines (STACK.md), so the embedding stays a Feast
feature (``user_embedding:embedding``), is pulled with ``get_historical_features`` and indexed
in-process with FAISS:

- up to ``exact_max_users`` users (default 100k): ``IndexFlatL2``, exact (about 2.5 ms per query
  at 100k x 64 on 2 cores);
- beyond: ``IndexHNSWFlat`` (M, efConstruction, efSearch configurable), with its recall@k
  measured against the exact index on a sample of queries when it is built, and recorded.

The index is cached in ``DIR/feast/lookalike/`` and rebuilt when the reasoning features change.
The query user's vector comes from the online store; the neighbours' features too
(``get_online_features``). With ``lookalike_backend: pgvector`` and a Postgres online store with
the pgvector extension, Feast's own ``retrieve_online_documents_v2`` does the search instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from scaletot_features.config import StoreConfig, store_config
from scaletot_features.data.io import atomic_dir, read_table
from scaletot_features.dataset import PART_GLOB, DatasetLayout, FeastLayout, is_probs_column
from scaletot_features.store.repo import StoreError, get_store, repo_path
from scaletot_features.store.retrieval import resolve_features

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureStore

    from scaletot_features.config import Settings

EMBEDDING_REF = "user_embedding:embedding"
RECALL_K = 10


@dataclass
class IndexInfo:
    """What an index is and how good it is (``meta.json`` beside the index)."""

    kind: str  # "exact" | "hnsw"
    users: int
    dim: int
    fingerprint: str
    build_seconds: float
    recall_at_k: float | None = None  # HNSW vs exact, on recall_queries sampled users
    recall_k: int = RECALL_K
    recall_queries: int = 0
    params: dict[str, Any] = field(default_factory=dict)


class LookalikeIndex:
    """A FAISS index over user embeddings; positions map to ``user_ids``."""

    def __init__(self, index: Any, user_ids: np.ndarray, info: IndexInfo) -> None:
        self.index = index
        self.user_ids = np.asarray(user_ids, dtype=np.int64)
        self.info = info
        self._position = {int(u): i for i, u in enumerate(self.user_ids)}

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, user_ids: np.ndarray, vectors: np.ndarray, *, exact_max_users: int = 100_000,
              hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 256,
              recall_queries: int = 1_000, recall_k: int = RECALL_K, seed: int = 0,
              fingerprint: str = "") -> "LookalikeIndex":
        """Exact up to ``exact_max_users`` rows, HNSW beyond (recall measured against exact)."""
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(user_ids):
            raise ValueError(f"vectors {x.shape} do not match {len(user_ids)} user ids")
        n, d = x.shape
        t0 = time.perf_counter()
        index: Any
        if n <= exact_max_users:
            index = faiss.IndexFlatL2(d)
            index.add(x)
            info = IndexInfo("exact", n, d, fingerprint, 0.0, params={})
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m)
            index.hnsw.efConstruction = ef_construction
            index.add(x)
            index.hnsw.efSearch = ef_search
            info = IndexInfo("hnsw", n, d, fingerprint, 0.0,
                             params={"M": hnsw_m, "efConstruction": ef_construction,
                                     "efSearch": ef_search})
        info.build_seconds = round(time.perf_counter() - t0, 3)
        out = cls(index, user_ids, info)
        if info.kind == "hnsw":
            q = min(recall_queries, n)
            rows = np.random.default_rng(seed).choice(n, size=q, replace=False)
            info.recall_at_k = out.recall_against_exact(x, x[rows], recall_k)
            info.recall_k, info.recall_queries = recall_k, q
        return out

    def recall_against_exact(self, base: np.ndarray, queries: np.ndarray, k: int) -> float:
        """Mean fraction of the exact top-k that this index also returns."""
        import faiss

        exact = faiss.IndexFlatL2(base.shape[1])
        exact.add(np.ascontiguousarray(base, dtype=np.float32))
        _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        _, got = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        hits = [len(set(t[t >= 0]) & set(g[g >= 0])) / max(1, int((t >= 0).sum()))
                for t, g in zip(truth, got)]
        return round(float(np.mean(hits)), 4)

    # -- searching -----------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(user ids [q, k], squared L2 distances [q, k]); missing neighbours are -1 / inf."""
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.info.dim:
            raise StoreError(f"query has {q.shape[1]} dimensions, the index {self.info.dim}")
        dist, pos = self.index.search(q, k)
        ids = np.where(pos >= 0, self.user_ids[np.clip(pos, 0, None)], -1)
        return ids, np.where(pos >= 0, dist, np.inf)

    def neighbours(self, vector: np.ndarray, k: int, exclude: int | None = None
                   ) -> list[tuple[int, float]]:
        """The k nearest users to ``vector`` (``exclude``, usually the query user, left out)."""
        ids, dist = self.search(vector, min(k + 1, len(self.user_ids)))
        out = [(int(u), float(d)) for u, d in zip(ids[0], dist[0]) if u >= 0 and u != exclude]
        return out[:k]

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        import faiss

        with atomic_dir(Path(folder), overwrite=True) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "user_ids.npy", self.user_ids)
            (tmp / "meta.json").write_text(json.dumps(asdict(self.info), indent=2))
        return Path(folder)

    @classmethod
    def load(cls, folder: Path) -> "LookalikeIndex":
        import faiss

        folder = Path(folder)
        info = IndexInfo(**json.loads((folder / "meta.json").read_text()))
        index = faiss.read_index(str(folder / "index.faiss"))
        if info.kind == "hnsw":
            index.hnsw.efSearch = int(info.params.get("efSearch", 256))
        return cls(index, np.load(folder / "user_ids.npy"), info)


# --------------------------------------------------------------------------- from Feast


def reasoning_fingerprint(data_dir: Path, cfg: StoreConfig) -> str:
    """Changes when the reasoning-feature parts or the index settings change."""
    table = DatasetLayout(data_dir).features.reasoning
    parts = sorted(table.glob(PART_GLOB))
    if not parts:
        raise StoreError(f"no reasoning features at {table}")
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in parts]
    knobs = [cfg.exact_max_users, cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_search,
             cfg.recall_queries]
    return hashlib.sha256(json.dumps([stamp, knobs]).encode()).hexdigest()[:16]


def embedding_matrix(fs: "FeatureStore", user_ids: Sequence[int] | np.ndarray,
                     as_of: datetime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The users' embeddings as of ``as_of`` (default now), pulled from Feast's offline store."""
    import pandas as pd
    import pyarrow.compute as pc

    as_of = as_of or datetime.now(timezone.utc)
    entity = pd.DataFrame({"user_id": np.asarray(user_ids, dtype=np.int64),
                           "event_timestamp": pd.Timestamp(as_of)})
    table = fs.get_historical_features(entity_df=entity, features=[EMBEDDING_REF]).to_arrow()
    table = table.filter(pc.is_valid(table.column("embedding")))
    if table.num_rows == 0:
        raise StoreError("no user has an embedding in the offline store")
    col = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) != 1:
        raise StoreError(f"embeddings of different lengths {sorted(set(lengths.tolist()))}")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    ids = table.column("user_id").to_numpy().astype(np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], flat.reshape(len(ids), int(lengths[0]))[order]


def load_or_build_index(data_dir: Path | str, settings: "Settings | None" = None, *,
                        store: StoreConfig | None = None, repo_dir: Path | str | None = None,
                        rebuild: bool = False) -> LookalikeIndex:
    """The dataset's FAISS index: loaded from DIR/feast/lookalike/, built when stale or absent."""
    cfg = store_config(settings, store)
    data_dir = Path(data_dir).resolve()
    folder = FeastLayout(repo_path(data_dir, repo_dir)).lookalike
    fingerprint = reasoning_fingerprint(data_dir, cfg)
    if not rebuild and (folder / "meta.json").exists():
        index = LookalikeIndex.load(folder)
        if index.info.fingerprint == fingerprint:
            return index
    fs = get_store(data_dir, repo_dir)
    ids = read_table(DatasetLayout(data_dir).features.reasoning,
                     columns=["user_id"]).column(0).to_numpy()
    user_ids, vectors = embedding_matrix(fs, np.unique(ids))
    index = LookalikeIndex.build(user_ids, vectors, exact_max_users=cfg.exact_max_users,
                                 hnsw_m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                                 ef_search=cfg.hnsw_ef_search, recall_queries=cfg.recall_queries,
                                 fingerprint=fingerprint)
    index.save(folder)
    return index


def default_features(fs: "FeatureStore") -> list[str]:
    """Each neighbour's typed states (value and probability) and provenance."""
    names = [f.name for f in fs.get_feature_view("user_states").features]
    return [f"user_states:{n}" for n in names if not is_probs_column(n)
            and n != "model_version"]


def _query_vector(fs: "FeatureStore", user_id: int) -> np.ndarray:
    got = fs.get_online_features(features=[EMBEDDING_REF],
                                 entity_rows=[{"user_id": int(user_id)}]).to_dict()
    vec = got["embedding"][0]
    if vec is None:
        raise StoreError(f"user {user_id} has no embedding in the online store (unknown user, or "
                         "not materialized yet)")
    return np.asarray(vec, dtype=np.float32)


def _pgvector_neighbours(fs: "FeatureStore", vector: np.ndarray, k: int, exclude: int
                         ) -> list[tuple[int, float]]:
    resp = fs.retrieve_online_documents_v2(features=[EMBEDDING_REF], query=vector.tolist(),
                                           top_k=k + 1, distance_metric="L2").to_dict()
    ids = resp.get("user_id") or []
    dist = resp.get("distance") or [None] * len(ids)
    out = [(int(u), float(d) if d is not None else float("nan")) for u, d in zip(ids, dist)
           if u is not None and int(u) != exclude]
    return out[:k]


def lookalikes(data_dir: Path | str, user_id: int, k: int = 10,
               features: Sequence[str] | None = None, settings: "Settings | None" = None, *,
               store: StoreConfig | None = None, repo_dir: Path | str | None = None
               ) -> "pd.DataFrame":
    """The k users most similar to ``user_id`` by reasoning embedding, with their features.

    Columns: ``rank`` (1 = nearest), ``user_id``, ``distance`` (squared L2 between reasoning
    embeddings), then ``features`` (``view:feature`` references; default: the typed states) read
    from the online store. The query user is left out.
    """
    import pandas as pd

    if k < 1:
        raise StoreError(f"k must be >= 1, got {k}")
    cfg = store_config(settings, store)
    fs = get_store(data_dir, repo_dir)
    vector = _query_vector(fs, user_id)
    if cfg.lookalike_backend == "pgvector":
        if cfg.online_store.type != "postgres":
            raise StoreError("lookalike_backend pgvector needs online_store: postgres")
        found = _pgvector_neighbours(fs, vector, k, int(user_id))
    else:
        index = load_or_build_index(data_dir, settings, store=cfg, repo_dir=repo_dir)
        found = index.neighbours(vector, k, exclude=int(user_id))
    refs = list(features) if features is not None else default_features(fs)
    refs = resolve_features(fs, refs) if refs else []
    frame = pd.DataFrame({"rank": np.arange(1, len(found) + 1, dtype=np.int64),
                          "user_id": np.array([u for u, _ in found], dtype=np.int64),
                          "distance": np.array([d for _, d in found], dtype=np.float64)})
    if refs and len(found):
        got = fs.get_online_features(features=refs,
                                     entity_rows=[{"user_id": u} for u, _ in found]).to_dict()
        for ref in refs:  # in the order asked for
            name = ref.partition(":")[2]
            if name in got and name not in frame.columns:
                frame[name] = got[name]
    return frame
