"""What the on-demand feature view ``reasoning_live`` calls: the encoder on request-time profiles.

Feast rebuilds the view's UDF from its source text in a namespace that holds only ``pd`` and
``np`` (STACK.md), so the UDF imports :func:`encode_request` from here and passes the encoder
folder as a literal. This module must therefore be importable on its own, load the encoder once
per process (cached, reloaded when the artifact changes) and accept everything Feast sends:

- at ``apply``, made-up inputs ("hello world" for every string, 1.0 for every number): the
  encoder maps an unknown category to its out-of-domain id and an unknown word to its
  out-of-vocabulary row, so they go through;
- in ``get_historical_features``, None (or NaN) for a field an entity row lacks: missing is a
  first-class value for the encoder, never imputed here;
- a value of the wrong type (a string for a number, a number for a category, a bare string for a
  tag list) is refused with :class:`ProfileRequestError`, which Feast's own server answers with
  HTTP 422 (not 500). Domain and range checks belong to the validating server
  (``scaletot_features.store.server``): the made-up inputs at apply would fail them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from feast.errors import FeastError

from scaletot_features.dataset import (
    EMBEDDING, LIVE_PREFIX, live_column, live_columns, state_columns,
)
from scaletot_features.profile import ProfileField, ProfileValueError, check_value
from scaletot_features.runtime import torch_threads

if TYPE_CHECKING:  # pragma: no cover
    from scaletot_features.encoder.model import Encoder

ENCODER_DIR_ENV = "SCALETOT_ENCODER_DIR"
"""Overrides the encoder folder written into the registry (serving on another machine)."""
ENCODER_DEVICE_ENV = "SCALETOT_ENCODER_DEVICE"
"""Device for request-time encoding; default cpu (one row is faster there than on a GPU)."""
DEFAULT_PREFIX = "profile_"
OUTPUT_PREFIX = LIVE_PREFIX

_lock = threading.Lock()
_cache: dict[str, tuple[int, "Encoder"]] = {}


class ProfileRequestError(FeastError, ValueError):
    """A request-time profile value of the wrong type; HTTP 422 from ``feast serve``."""

    def http_status_code(self) -> int:
        return 422

    def grpc_status_code(self) -> Any:
        from grpc import StatusCode

        return StatusCode.INVALID_ARGUMENT


def resolve_encoder_dir(encoder_dir: str | os.PathLike[str] | None) -> Path:
    env = os.environ.get(ENCODER_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    if encoder_dir is None:
        raise FileNotFoundError(f"no encoder folder given and {ENCODER_DIR_ENV} is not set")
    return Path(encoder_dir).expanduser().resolve()


def get_encoder(encoder_dir: str | os.PathLike[str] | None) -> "Encoder":
    """The loaded encoder for a folder: loaded once per process, again if its manifest changes."""
    from scaletot_features.encoder.artifact import MANIFEST_FILE, load_encoder

    folder = resolve_encoder_dir(encoder_dir)
    manifest = folder / MANIFEST_FILE
    try:
        stamp = manifest.stat().st_mtime_ns
    except FileNotFoundError:
        raise FileNotFoundError(
            f"encoder artifact {folder} has no {MANIFEST_FILE}: train one (scaletot distill) "
            f"or point {ENCODER_DIR_ENV} at one") from None
    key = str(folder)
    hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with _lock:
        hit = _cache.get(key)
        if hit is None or hit[0] != stamp:
            device = os.environ.get(ENCODER_DEVICE_ENV, "cpu")
            encoder, _ = load_encoder(folder, device=device)
            _cache[key] = (stamp, encoder)
            hit = _cache[key]
    return hit[1]


def coerce_column(name: str, field: ProfileField, values: Sequence[Any]) -> list[Any]:
    """One request column (key ``name``) as the encoder's Arrow type wants it; a value of the
    wrong type raises (422). Lenient otherwise (``profile.check_value(strict=False)``)."""
    out: list[Any] = []
    for i, v in enumerate(values):
        try:
            out.append(check_value(field, v, strict=False))
        except ProfileValueError as e:
            raise ProfileRequestError(f"profile field {name!r} (row {i}): {e}") from None
    return out


def profile_columns(inputs: Mapping[str, Sequence[Any]], encoder: "Encoder",
                    prefix: str = DEFAULT_PREFIX) -> tuple[dict[str, list[Any]], int]:
    """The request's profile columns (``<prefix><field>``), coerced, keyed by field name.

    A field whose key is absent is missing for every row. Returns (columns, rows).
    """
    lengths = {len(v) for v in inputs.values() if hasattr(v, "__len__")}
    if len(lengths) > 1:
        raise ProfileRequestError(f"request columns have different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    cols = {}
    for f in encoder.featurizer.schema.fields:
        key = prefix + f.name
        values = inputs.get(key)
        values = [None] * n if values is None else list(values)
        cols[f.name] = coerce_column(key, f, values)
    return cols, n


# --------------------------------------------------------------------------- small batches
#
# Up to FAST_MAX_ROWS rows go through the featuriser's plain-Python twin (``Featurizer.fast``, in
# ``encoder/featurizer.py``): one profile through the vectorised Arrow path costs ~8 ms, which
# alone would break the 10 ms p99 target of the live view.

FAST_MAX_ROWS = 4096  # measured: 1000 rows in 9 ms here, vs ~200 ms through Arrow + 2 threads
_torch_lock = threading.Lock()


def predict_rows(encoder: "Encoder", cols: Mapping[str, list[Any]], n: int) -> tuple[Any, list]:
    """``encoder.predict`` for coerced columns: the plain-Python featuriser for small batches."""
    import pyarrow as pa
    import torch

    fast = encoder.featurizer.fast
    if fast is None or n > FAST_MAX_ROWS:
        schema = encoder.featurizer.schema
        table = pa.table({f.name: pa.array(cols[f.name], f.arrow_type) for f in schema.fields})
        return encoder.predict(table)
    splits = [len(t.value_names) for t in encoder.taxonomy.types]
    feats = fast.transform(cols, n).to(encoder.device)
    # One intra-op thread for request-sized batches: with two, every small matmul waits at an
    # OpenMP barrier for the other thread, which a busy machine schedules late (measured on 2
    # loaded cores: 26 ms vs 0.1 ms per forward pass of one row). The lock keeps the global
    # setting consistent when a server encodes several requests at once.
    with _torch_lock, torch_threads(1), torch.inference_mode():
        emb, logits = encoder.net(feats)
        probs = [torch.softmax(part.double(), dim=1).cpu().numpy()
                 for part in torch.split(logits, splits, dim=1)]
    return emb.float().cpu().numpy(), probs


def encode_request(inputs: Mapping[str, Sequence[Any]], encoder_dir: str | None,
                   prefix: str = DEFAULT_PREFIX) -> dict[str, list[Any]]:
    """The ``reasoning_live`` outputs for a batch of request-time profiles (dict of lists).

    Outputs: ``live_embedding`` (list of float32 values) and, per state type T, ``live_T`` (the
    most likely value), ``live_T_prob`` and ``live_T_probs`` (taxonomy order): the same numbers
    the batch embedding stage writes for the same profile.
    """
    encoder = get_encoder(encoder_dir)
    cols, n = profile_columns(inputs, encoder, prefix)
    out: dict[str, list[Any]] = {}
    if n == 0:
        return {name: [] for name in live_columns(encoder.taxonomy.type_names)}
    emb, probs = predict_rows(encoder, cols, n)
    out[live_column(EMBEDDING)] = emb.tolist()
    for t, p in zip(encoder.taxonomy.types, probs):
        idx = p.argmax(axis=1)
        names = t.value_names
        value, prob, dist = (live_column(c) for c in state_columns(t.name))
        out[value] = [names[i] for i in idx]
        out[prob] = p[range(len(idx)), idx].tolist()
        out[dist] = p.tolist()
    return out
