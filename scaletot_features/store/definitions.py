"""The Feast objects of one dataset: entity, sources, views, the on-demand view, services.

A Feast repository's ``features.py`` (the one shipped in ``store/feast_repo/``, copied into
``DIR/feast/`` by ``scaletot features apply`` and kept as the project's ``feature_repo/``) holds
two lines: ``globals().update(define_repo(__file__))``. Feast collects the module-level objects.

Every schema is read from the dataset itself, so your own profile fields and your own taxonomy
need no edits: profile fields from ``DIR/manifest.json``, typed state fields and the embedding
size from the ``DIR/features/reasoning_features`` table, the live view's state types from the
encoder's manifest. Data paths in the registry are absolute: after moving DIR, apply again.
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.data_format import ParquetFormat
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType

from scaletot_features.dataset import (
    EMBEDDING,
    LABEL_TIMESTAMP,
    PART_GLOB,
    DatasetLayout,
    FeastLayout,
    demo_data_dir,
    encoder_manifest,
    label_source,
    live_column,
    state_columns,
    state_types,
)

ENCODER_DIR_ENV = "SCALETOT_ENCODER_DIR"
"""Serve the live view from another encoder artifact than ``DIR/encoder``."""
REQUEST_PREFIX = "profile_"
"""Request-data key of profile field ``f``: ``profile_<f>``. A key equal to a feature name
(``age``) would be shadowed by that feature when both are asked for."""
KIND_TYPES = {"categorical": String, "numeric": Float64, "text": String, "tags": Array(String)}
STATE_FIELD_TYPES = (String, Float64, Array(Float64))
"""Per state type, the Feast types of its columns: value, probability, distribution."""
LABEL_TYPES = {pa.int32(): Int32, pa.int64(): Int64, pa.float32(): Float32,
               pa.float64(): Float64, pa.bool_(): Bool}
"""Arrow type of a label column -> its Feast type (labels are numbers: counts, values)."""


class DefinitionsError(FileNotFoundError):
    """The repository points at no dataset; the message says which command makes one."""


def repo_data_dir(repo_dir: Path | str) -> Path:
    """The dataset a repository folder serves.

    A generated repository sits in ``DIR/feast/`` (its parent holds the dataset's manifest);
    the project's ``feature_repo/`` serves the demo's output, ``runs/demo/data`` beside it.
    """
    repo_dir = Path(repo_dir).resolve()
    if DatasetLayout(repo_dir.parent).manifest.exists():
        return repo_dir.parent
    return demo_data_dir(repo_dir.parent / "runs" / "demo").resolve()


def batch_engine_type(repo_dir: Path | str) -> str:
    """The batch engine type of the feature_store.yaml in use (the repository's, or Feast's -f)."""
    import yaml

    path = Path(os.environ.get("FEAST_FS_YAML_FILE_PATH") or FeastLayout(Path(repo_dir)).config)
    try:
        engine = (yaml.safe_load(path.read_text()) or {}).get("batch_engine", "local")
    except OSError:
        return "local"
    return engine.get("type", "local") if isinstance(engine, dict) else str(engine)


def define_repo(features_file: Path | str) -> dict[str, Any]:
    """The objects of the repository whose ``features.py`` is ``features_file``."""
    repo_dir = Path(features_file).resolve().parent
    data_dir = repo_data_dir(repo_dir)
    encoder_dir = os.environ.get(ENCODER_DIR_ENV)
    return define(data_dir, encoder_dir=Path(encoder_dir) if encoder_dir else None,
                  batch_engine=batch_engine_type(repo_dir))


def _source(name: str, table: Path, timestamp_field: str, description: str) -> FileSource:
    # DuckDB reads a glob of parts; the hidden temporary files of atomic writes never match it.
    return FileSource(name=name, path=str(table / PART_GLOB), file_format=ParquetFormat(),
                      timestamp_field=timestamp_field, description=description)


def reasoning_layout(table: Path) -> tuple[list[str], int] | None:
    """State type names and embedding size of a reasoning-features table (None: no parts)."""
    parts = sorted(table.glob(PART_GLOB))
    if not parts:
        return None
    types = state_types(pq.read_schema(parts[0]).names)
    first = pq.ParquetFile(parts[0]).read_row_group(0, columns=[EMBEDDING]).column(0)
    dim = next((len(v) for v in first.to_pylist() if v is not None), 0)
    return types, dim


def label_fields(labels: Path, names: list[str]) -> list[Field]:
    """A Feast field per label column the manifest lists, typed as the labels table stores it.

    Event-derived labels are ``lt{H}`` (int32) and ``revenue_{H}`` (float64); a labels file's
    outcomes are float64. A listed column the table lacks, or of a type no label has, is refused
    here rather than left for a training frame to miss."""
    parts = sorted(labels.glob(PART_GLOB))
    if not parts:
        raise DefinitionsError(f"{labels} holds no label parts: ingest or generate again")
    schema = pq.read_schema(parts[0])
    fields = []
    for name in names:
        if name not in schema.names:
            raise DefinitionsError(f"the manifest lists label {name!r}, but {labels} has only "
                                   f"{schema.names}")
        arrow = schema.field(name).type
        if arrow not in LABEL_TYPES:
            raise DefinitionsError(f"label {name!r} in {labels} is {arrow}; labels are numbers")
        fields.append(Field(name=name, dtype=LABEL_TYPES[arrow]))
    return fields


def udf_source(encoder_dir: Path) -> str:
    """The on-demand view's UDF as text.

    Feast rebuilds the UDF from this text in a namespace holding only pd and np, so the import
    lives inside and the encoder folder is a literal.
    """
    return (
        "def reasoning_live(inputs):\n"
        "    from scaletot_features.store.transforms import encode_request\n"
        f"    return encode_request(inputs, {str(encoder_dir)!r}, {REQUEST_PREFIX!r})\n"
    )


def define(data_dir: Path | str, *, encoder_dir: Path | None = None,
           batch_engine: str = "local") -> dict[str, Any]:
    """Every Feast object for the dataset ``data_dir``, by the name Feast registers it under.

    Views over tables that do not exist yet are left out with a warning: no reasoning features,
    only profile and label views; no encoder artifact, no live view and no ``ltv_live``.
    """
    layout = DatasetLayout(Path(data_dir).resolve())
    if not layout.manifest.exists():
        raise DefinitionsError(
            f"no dataset at {layout.root} (no manifest.json): run `scaletot demo` first, or "
            "`scaletot features apply DIR` for your own dataset directory")
    manifest = json.loads(layout.manifest.read_text())
    encoder_dir = Path(encoder_dir or layout.encoder).resolve()
    profile_fields = [(f["name"], f["kind"]) for f in manifest["profile_schema"]["fields"]]
    out: dict[str, Any] = {}

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
                  description="A user of the app (low-activity users included).")
    profiles_source = _source("profiles_source", layout.profiles, "event_timestamp",
                              "Sparse static profiles (one snapshot per user).")
    labels_source = _source("labels_source", layout.labels, LABEL_TIMESTAMP,
                            "LTV labels, stamped when they become known (first_seen + horizon, "
                            "or the labels file's label_timestamp).")
    user_profile = FeatureView(
        name="user_profile", entities=[user], ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64)]
        + [Field(name=n, dtype=KIND_TYPES[k]) for n, k in profile_fields],
        source=profiles_source, online=True,
        description="Static profile fields; missing stays null.", tags={"stage": "profile"})
    ltv_labels = FeatureView(
        name="ltv_labels", entities=[user], ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64)]
        + label_fields(layout.labels, list(manifest["label_names"])),
        source=labels_source,
        online=False,  # labels are for training; never served
        description=f"Training labels ({', '.join(manifest['label_names'])}); join on "
                    "label_timestamp so a label is only seen once it is known.",
        tags={"stage": "labels", "source": label_source(manifest)})
    ltv_profile_only = FeatureService(name="ltv_profile_only", features=[user_profile],
                                      description="LTV model inputs (A): profile fields only.")
    out.update(user=user, user_profile=user_profile, ltv_labels=ltv_labels,
               ltv_profile_only=ltv_profile_only)

    reasoning = reasoning_layout(layout.features.reasoning)
    if reasoning is None:
        warnings.warn(f"{layout.features.reasoning} holds no parts: only profile and label views "
                      "are defined; run the embed stage, then apply again", stacklevel=2)
        return out
    types, dim = reasoning
    reasoning_source = _source("reasoning_source", layout.features.reasoning, "event_timestamp",
                               "Encoder output for every user: embedding + typed states.")
    user_states = FeatureView(
        name="user_states", entities=[user], ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64)]
        + [Field(name=c, dtype=d) for t in types
           for c, d in zip(state_columns(t), STATE_FIELD_TYPES)]
        + [Field(name="provenance", dtype=String), Field(name="model_version", dtype=String)],
        source=reasoning_source, online=True,
        description="Typed user-state fields: value, its probability and the full distribution "
                    "per state type, with provenance (teacher | student | encoder).",
        tags={"stage": "reasoning"})
    # Feast 0.67's Ray engine hands fixed-length float32 lists to the online writer as Ray
    # tensor columns, which the vector-length check refuses (the rows are silently dropped):
    # under ray.engine the embedding is declared without vector-index metadata (lookalikes use
    # FAISS either way).
    indexed = batch_engine != "ray.engine"
    user_embedding = FeatureView(
        name="user_embedding", entities=[user], ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=Int64),
                Field(name=EMBEDDING, dtype=Array(Float32), vector_index=indexed,
                      vector_length=dim if indexed else 0,
                      vector_search_metric="L2" if indexed else None,
                      description="reasoning embedding (lookalikes: FAISS over this field)")],
        source=reasoning_source, online=True,
        description="The reasoning embedding, with vector-index metadata for lookalike search.",
        tags={"stage": "reasoning", "vector_index": "faiss", "dim": str(dim)})
    ltv_with_reasoning = FeatureService(
        name="ltv_with_reasoning", features=[user_profile, user_states, user_embedding],
        description="LTV model inputs (C/D): profile + ScaleToT reasoning features.")
    out.update(user_states=user_states, user_embedding=user_embedding,
               ltv_with_reasoning=ltv_with_reasoning)

    if not encoder_manifest(encoder_dir).exists():
        warnings.warn(f"no encoder artifact at {encoder_dir}: the on-demand view reasoning_live "
                      "and the service ltv_live are not defined", stacklevel=2)
        return out
    profile_request = RequestSource(
        name="profile_request",
        schema=[Field(name=REQUEST_PREFIX + n, dtype=KIND_TYPES[k]) for n, k in profile_fields],
        description="A profile sent with the request (cold-start users nobody has embedded): "
                    f"one key per profile field, named {REQUEST_PREFIX}<field>.")
    # The live view's types come from the encoder that computes them.
    live_types = [t["name"] for t in
                  json.loads(encoder_manifest(encoder_dir).read_text())["taxonomy"]["types"]]
    udf_text = udf_source(encoder_dir)
    namespace: dict[str, Any] = {"__name__": "__main__"}  # dill pickles __main__ functions by value
    exec(udf_text, namespace)  # noqa: S102 - our own template, the same text Feast stores
    reasoning_live = OnDemandFeatureView(
        name="reasoning_live", sources=[profile_request],
        schema=[Field(name=live_column(EMBEDDING), dtype=Array(Float32))]
        + [Field(name=live_column(c), dtype=d) for t in live_types
           for c, d in zip(state_columns(t), STATE_FIELD_TYPES)],
        mode="python", udf=namespace["reasoning_live"], udf_string=udf_text,
        description="Runs the profile encoder on request-time profile fields.",
        tags={"stage": "reasoning", "encoder_dir": str(encoder_dir)})
    ltv_live = FeatureService(
        name="ltv_live", features=[reasoning_live],
        description="Reasoning features computed live from a request-time profile (cold start): "
                    "send the profile fields as request data.")
    out.update(reasoning_live=reasoning_live, ltv_live=ltv_live)
    return out
