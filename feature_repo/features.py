"""Feast definitions for ScaleToT features: entity, sources, views, on-demand view, services.

Which dataset this repository serves (the data directory DIR written by ``generate``/``ingest``,
``embed`` and friends):

- a generated copy in ``DIR/feast/`` (written by ``scaletot features apply DIR``) serves DIR:
  this file then sits one level below the dataset's ``manifest.json``;
- this folder, ``feature_repo/`` in the project checkout, serves the demo's output
  ``runs/demo/data`` (its feature_store.yaml keeps registry and online store in
  ``runs/demo/data/feast/``, the same ones ``scaletot features apply runs/demo/data`` uses), so
  ``cd feature_repo && feast apply`` works after ``scaletot demo``.

Data paths in the registry are absolute: after moving DIR, apply again.

Every schema is read from the dataset itself, so your own profile fields and your own taxonomy
need no edits here: profile fields from ``DIR/manifest.json``, typed state fields and the
embedding size from the ``DIR/features/reasoning_features`` parquet schema.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.data_format import ParquetFormat
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Array, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType

from scaletot_features.dataset import (
    EMBEDDING,
    PART_GLOB,
    DatasetLayout,
    FeastLayout,
    demo_data_dir,
    encoder_manifest,
    live_column,
    state_columns,
    state_types,
)


def _data_dir() -> Path:
    here = Path(__file__).resolve().parent
    if DatasetLayout(here.parent).manifest.exists():  # the generated copy in DIR/feast/
        return here.parent
    return demo_data_dir(here.parent / "runs" / "demo").resolve()  # feature_repo/ -> the demo


DATA_DIR = _data_dir()
LAYOUT = DatasetLayout(DATA_DIR)
if not LAYOUT.manifest.exists():
    raise FileNotFoundError(
        f"no dataset at {DATA_DIR} (no manifest.json): run `scaletot demo` first, or "
        "`scaletot features apply DIR` for your own dataset directory"
    )
MANIFEST = json.loads(LAYOUT.manifest.read_text())
REASONING_DIR = LAYOUT.features.reasoning
ENCODER_DIR = Path(os.environ.get("SCALETOT_ENCODER_DIR") or LAYOUT.encoder).resolve()

_KIND_TYPES = {"categorical": String, "numeric": Float64, "text": String, "tags": Array(String)}
_STATE_TYPES = (String, Float64, Array(Float64))  # per state type: value, prob, distribution
PROFILE_FIELDS: list[tuple[str, str]] = [
    (f["name"], f["kind"]) for f in MANIFEST["profile_schema"]["fields"]
]

REQUEST_PREFIX = "profile_"  # request-data key of profile field f: profile_<f>

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A user of the app (low-activity users included).")


def _source(name: str, table: Path, timestamp_field: str, description: str) -> FileSource:
    # DuckDB reads a glob of parts; the hidden temporary files of atomic writes never match it.
    return FileSource(name=name, path=str(table / PART_GLOB),
                      file_format=ParquetFormat(), timestamp_field=timestamp_field,
                      description=description)


profiles_source = _source("profiles_source", LAYOUT.profiles, "event_timestamp",
                          "Sparse static profiles (one snapshot per user).")
labels_source = _source("labels_source", LAYOUT.labels, "label_timestamp",
                        "LTV labels, stamped when they become known (first_seen + horizon).")

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64)]
    + [Field(name=n, dtype=_KIND_TYPES[k]) for n, k in PROFILE_FIELDS],
    source=profiles_source,
    online=True,
    description="Static profile fields; missing stays null.",
    tags={"stage": "profile"},
)

_active, _revenue = MANIFEST["label_names"]
ltv_labels = FeatureView(
    name="ltv_labels",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="user_id", dtype=Int64), Field(name=_active, dtype=Int32),
            Field(name=_revenue, dtype=Float64)],
    source=labels_source,
    online=False,  # labels are for training; never served
    description=f"Training labels at a {MANIFEST['horizon_days']}-day horizon; join on "
                "label_timestamp so a label is only seen once it is known.",
    tags={"stage": "labels"},
)

# Feast collects module-level objects only: every service gets its own name here.
ltv_profile_only = FeatureService(name="ltv_profile_only", features=[user_profile],
                                  description="LTV model inputs (A): profile fields only.")


def _batch_engine() -> str:
    """The batch engine type of the feature_store.yaml in use (this folder's, or -f's)."""
    import yaml

    path = Path(os.environ.get("FEAST_FS_YAML_FILE_PATH")
                or FeastLayout(Path(__file__).resolve().parent).config)
    try:
        engine = (yaml.safe_load(path.read_text()) or {}).get("batch_engine", "local")
    except OSError:
        return "local"
    return engine.get("type", "local") if isinstance(engine, dict) else str(engine)


def _reasoning_layout() -> tuple[list[str], int] | None:
    """State type names and embedding size, read from the reasoning-features parquet."""
    parts = sorted(REASONING_DIR.glob(PART_GLOB))
    if not parts:
        return None
    types = state_types(pq.read_schema(parts[0]).names)
    first = pq.ParquetFile(parts[0]).read_row_group(0, columns=[EMBEDDING]).column(0)
    dim = next((len(v) for v in first.to_pylist() if v is not None), 0)
    return types, dim


def _udf_source(encoder_dir: Path) -> str:
    # Feast rebuilds the UDF from this text in a namespace holding only pd and np, so the
    # import lives inside and the encoder folder is a literal (SCALETOT_ENCODER_DIR overrides).
    return (
        "def reasoning_live(inputs):\n"
        "    from scaletot_features.store.transforms import encode_request\n"
        f"    return encode_request(inputs, {str(encoder_dir)!r}, {REQUEST_PREFIX!r})\n"
    )


_layout = _reasoning_layout()
if _layout is None:
    import warnings

    warnings.warn(f"{REASONING_DIR} holds no parts: only profile and label views are defined; "
                  "run the embed stage, then apply again", stacklevel=1)
else:
    STATE_TYPES, EMBEDDING_DIM = _layout
    reasoning_source = _source("reasoning_source", REASONING_DIR, "event_timestamp",
                               "Encoder output for every user: embedding + typed states.")
    user_states = FeatureView(
        name="user_states",
        entities=[user],
        ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64)]
        + [Field(name=c, dtype=d) for t in STATE_TYPES
           for c, d in zip(state_columns(t), _STATE_TYPES)]
        + [Field(name="provenance", dtype=String), Field(name="model_version", dtype=String)],
        source=reasoning_source,
        online=True,
        description="Typed user-state fields: value, its probability and the full distribution "
                    "per state type, with provenance (teacher | student | encoder).",
        tags={"stage": "reasoning"},
    )
    # Feast 0.67's Ray engine hands fixed-length float32 lists to the online writer as Ray
    # tensor columns, which the vector-length check refuses (the rows are silently dropped): under
    # ray.engine the embedding is declared without vector-index metadata (lookalikes use FAISS
    # either way).
    _VECTOR_INDEX = _batch_engine() != "ray.engine"
    user_embedding = FeatureView(
        name="user_embedding",
        entities=[user],
        ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64),
                Field(name=EMBEDDING, dtype=Array(Float32), vector_index=_VECTOR_INDEX,
                      vector_length=EMBEDDING_DIM if _VECTOR_INDEX else 0,
                      vector_search_metric="L2" if _VECTOR_INDEX else None,
                      description="reasoning embedding (lookalikes: FAISS over this field)")],
        source=reasoning_source,
        online=True,
        description="The reasoning embedding, with vector-index metadata for lookalike search.",
        tags={"stage": "reasoning", "vector_index": "faiss", "dim": str(EMBEDDING_DIM)},
    )
    ltv_with_reasoning = FeatureService(
        name="ltv_with_reasoning", features=[user_profile, user_states, user_embedding],
        description="LTV model inputs (C/D): profile + ScaleToT reasoning features.")

    if not encoder_manifest(ENCODER_DIR).exists():
        import warnings

        warnings.warn(f"no encoder artifact at {ENCODER_DIR}: the on-demand view reasoning_live "
                      "and the service ltv_live are not defined", stacklevel=1)
    else:
        # Request keys carry a prefix: a request key equal to a feature name (``age``) would be
        # shadowed by that feature when both are asked for: the encoder would see a wrong value.
        profile_request = RequestSource(
            name="profile_request",
            schema=[Field(name=REQUEST_PREFIX + n, dtype=_KIND_TYPES[k])
                    for n, k in PROFILE_FIELDS],
            description="A profile sent with the request (cold-start users nobody has embedded): "
                        f"one key per profile field, named {REQUEST_PREFIX}<field>.",
        )
        # The live view's types come from the encoder that computes them.
        _encoder_manifest = json.loads(encoder_manifest(ENCODER_DIR).read_text())
        LIVE_TYPES = [t["name"] for t in _encoder_manifest["taxonomy"]["types"]]
        _udf_text = _udf_source(ENCODER_DIR)
        _ns: dict = {"__name__": "__main__"}  # dill pickles __main__ functions by value
        exec(_udf_text, _ns)  # noqa: S102 - our own template, the same text Feast stores
        reasoning_live = OnDemandFeatureView(
            name="reasoning_live",
            sources=[profile_request],
            schema=[Field(name=live_column(EMBEDDING), dtype=Array(Float32))]
            + [Field(name=live_column(c), dtype=d) for t in LIVE_TYPES
               for c, d in zip(state_columns(t), _STATE_TYPES)],
            mode="python",
            udf=_ns["reasoning_live"],
            udf_string=_udf_text,
            description="Runs the profile encoder on request-time profile fields.",
            tags={"stage": "reasoning", "encoder_dir": str(ENCODER_DIR)},
        )
        ltv_live = FeatureService(
            name="ltv_live", features=[reasoning_live],
            description="Reasoning features computed live from a request-time profile "
                        "(cold start): send the profile fields as request data.")
