"""``teach --engine ray``: the teacher's searches on Ray Data actors, checkpointed by the cache.

The driver does what needs one process: it selects the coverage, primes the calibration once
(every actor then scores with the same offsets, so the chains do not depend on which actor
searched them, and the teacher key that addresses the chain cache is the driver's), decides which
distinct profile texts need a search (not cached, first of their kind) and finally writes the
users' rows exactly as the local engine does. The searches in between are ``map_batches`` over
actors that each load the teacher once (:mod:`scaletot_features.ray_engine`); every finished
batch is published to the chain cache at once, so a killed job resumes with those texts as cache
hits and never searches one twice. Hence the ray engine needs the chain cache on.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from scaletot_features.config import Settings
from scaletot_features.profile import ProfileSchema
from scaletot_features.reasoning.scoring import NodeScorer

RESULT_SCHEMA = pa.schema([("key", pa.string()), ("entry", pa.string()), ("error", pa.string())])
"""What an actor returns per searched text: the cache entry as JSON, or why the search failed."""


def teacher_search_fn(settings_json: str, offsets: dict[str, list[float]], tkey: str,
                      demonstrations: str = "") -> Callable[[pa.Table], pa.Table]:
    """One loaded teacher searching batches of (key, text, row): a Ray actor's work."""
    from trainers.teach import _search_part, make_backend, search_config

    settings = Settings.model_validate_json(settings_json)
    taxonomy, schema, tc = settings.taxonomy(), settings.profile_schema(), settings.teacher
    backend = make_backend(settings)
    scorer = NodeScorer(backend, taxonomy, tc.scoring, tc.calibration, demonstrations)
    scorer.offsets = {k: np.asarray(v, dtype=np.float64) for k, v in offsets.items()}
    cfg = search_config(settings)

    def run(batch: pa.Table) -> pa.Table:
        keys = batch.column("key").to_pylist()
        texts = batch.column("text").to_pylist()
        rows = [json.loads(r) for r in batch.column("row").to_pylist()]
        found, _ = _search_part(texts, keys, tkey, schema, rows, scorer, backend, taxonomy, cfg,
                                tc)
        return pa.table({"key": keys,
                         "entry": [json.dumps(f, default=_plain) if isinstance(f, dict) else None
                                   for f in found],
                         "error": [f if isinstance(f, str) else None for f in found]},
                        schema=RESULT_SCHEMA)

    return run


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a cache entry, as JSON takes them."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def search_on_ray(settings: Settings, scorer: NodeScorer, tkey: str, keys: list[str],
                  texts: list[str], rows: list[dict], schema: ProfileSchema,
                  publish: Callable[[list[dict]], Any],
                  progress: Callable[[int, int], None] | None = None) -> dict[str, dict | str]:
    """Search the given distinct texts on Ray Data; each finished batch's entries are published
    (to the chain cache) before the next is taken. Returns key -> entry, or the failure's reason.
    """
    from scaletot_features.ray_engine import stream_map

    fields = schema.names
    inputs = pa.table({
        "key": pa.array(keys, pa.string()), "text": pa.array(texts, pa.string()),
        "row": pa.array([json.dumps({f: r.get(f) for f in fields}) for r in rows], pa.string())})
    offsets = {k: np.asarray(v).tolist() for k, v in scorer.offsets.items()}
    make = functools.partial(teacher_search_fn, settings.model_dump_json(), offsets, tkey,
                             scorer.demonstrations)
    results: dict[str, dict | str] = {}
    for batch in stream_map(inputs, make, settings.ray, RESULT_SCHEMA):
        entries = []
        for key, entry, error in zip(batch.column("key").to_pylist(),
                                     batch.column("entry").to_pylist(),
                                     batch.column("error").to_pylist()):
            if entry is not None:
                entries.append(json.loads(entry))
                results[key] = entries[-1]
            else:
                results[key] = error or "no result"
        publish(entries)
        if progress is not None:
            progress(len(results), len(keys))
    return results


def check_ray_teach(settings: Settings) -> None:
    """Refuse an engine/cache combination that cannot checkpoint, before any model is loaded."""
    from scaletot_features.ray_engine import require_ray

    if settings.teacher.chain_cache is False:
        raise ValueError("teacher.engine: ray checkpoints its searches in the chain cache; set "
                         "teacher.chain_cache to true (DIR/teacher/chain_cache) or a folder")
    require_ray()

