"""The profile encoder's network and the loaded encoder (DESIGN.md 4.7).

The featuriser (``featurizer.py``) turns profile fields into tensors; here they become field
embeddings, concatenated -> Linear -> ReLU -> Linear -> ReLU -> two heads: the reasoning
embedding (``dim``) and, per state type, logits over its values (softmax -> distribution).
:class:`Encoder` holds featuriser, network and taxonomy and turns profiles into feature rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from scaletot_features.dataset import state_columns
from scaletot_features.encoder.featurizer import TEXT_MODEL_DIM, Features, Featurizer, _as_array
from scaletot_features.profile import ID_COLUMN, TIMESTAMP_COLUMN
from scaletot_features.taxonomy import Taxonomy

PROVENANCE = "encoder"


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
        """The reasoning-feature rows (dataset.reasoning_feature_schema) for these profile rows."""
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
