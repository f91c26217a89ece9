"""The LTV model (DESIGN.md 4.10): profile fields (+ optional dense features) -> two likelihood heads.

One network, two heads on a shared trunk, because both targets are read from the same sparse
profile and a second trunk would double the cost of every comparison:

- ``revenue`` (``revenue_30``): zero-inflated lognormal, :func:`scaletot_features.ltv.ziln.ziln_loss`
  (google/lifetime_value's loss); the point prediction is the ZILN mean and p(payer) its gate.
- ``active`` (``lt30``): hurdle beta-binomial over 0..horizon active days,
  :func:`scaletot_features.ltv.ziln.count_loss` (why not ZILN on a bounded count: see ziln.py).

The profile is read exactly as the encoder reads it (:class:`FieldInputs` over a
:class:`Featurizer` fitted on the training users: categorical embeddings, standardised numbers with
missing flags, bags of words for text and tags), so feature set A is a strong profile-only model,
not a strawman. Dense extras (a sentence embedding, reasoning features) are standardised on the
training users, clipped to +-5 like the featuriser's numbers, and enter through one linear layer.

scikit-learn style: ``__init__`` stores parameters, ``fit`` returns self, learned attributes end
in ``_``. Early stopping on a seeded validation slice of the training users keeps the best epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from scaletot_features.dataset import hash_mask
from scaletot_features.encoder.featurizer import NUMERIC_CLIP, Features, Featurizer
from scaletot_features.encoder.model import FieldInputs, NetworkShape
from scaletot_features.ltv.ziln import (
    count_loss,
    count_predict,
    count_tail_prob,
    positive_prob,
    ziln_loss,
    ziln_predict,
)
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from trainers.early_stopping import EarlyStopping

__all__ = ["LTVModel", "LTVNet", "LTVPredictions", "checked_labels", "validation_split"]


class LTVNet(FieldInputs):
    """Profile field embeddings (+ projected dense extras) -> MLP -> (revenue logits, count logits)."""

    def __init__(self, shape: NetworkShape, dense_in: int, dense_dim: int) -> None:
        super().__init__(shape)
        self.dense = nn.Linear(dense_in, dense_dim) if dense_in else None
        width = shape.input_dim + (dense_dim if dense_in else 0)
        self.trunk = nn.Sequential(
            nn.Linear(width, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
            nn.Linear(shape.hidden, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
        )
        self.revenue_head = nn.Linear(shape.hidden, 3)
        self.count_head = nn.Linear(shape.hidden, 3)

    def forward(self, x: Features, dense: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.field_vector(x)
        if self.dense is not None:
            assert dense is not None
            v = torch.cat([v, self.dense(dense)], dim=1)
        h = self.trunk(v)
        return self.revenue_head(h), self.count_head(h)


@dataclass(frozen=True)
class LTVPredictions:
    revenue: np.ndarray  # expected revenue over the horizon
    payer_prob: np.ndarray  # p(revenue > 0)
    active: np.ndarray  # expected active days
    retained_prob: np.ndarray  # p(active days >= retained_threshold)


def checked_labels(n: int, revenue: np.ndarray, active: np.ndarray,
                   dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(revenue, active) as ``dtype`` arrays, refused unless one known value per profile row."""
    revenue = np.asarray(revenue, dtype=dtype)
    active = np.asarray(active, dtype=dtype)
    if revenue.shape != (n,) or active.shape != (n,):
        raise ValueError(f"labels must have one value per profile row ({n})")
    if np.isnan(revenue).any() or np.isnan(active).any():
        raise ValueError("labels contain NaN (users without a known label must be dropped)")
    return revenue, active


def validation_split(profiles: pa.Table, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of the training users: a seeded slice by user id for early
    stopping.

    Every LTV model (this MLP, the boosted trees of ``trainers.ltv_gbdt``) takes the same slice
    for the same seed and users, so their validation scores compare like with like. Below 20
    users there is no validation slice (empty)."""
    if ID_COLUMN not in profiles.column_names:
        raise ValueError(f"profiles need a {ID_COLUMN!r} column (the validation split is by "
                         "user id)")
    n = profiles.num_rows
    ids = profiles.column(ID_COLUMN).to_numpy(zero_copy_only=False)
    val = hash_mask(ids, fraction, seed, "ltv_val") if n >= 20 else np.zeros(n, bool)
    return np.flatnonzero(~val), np.flatnonzero(val)


class LTVModel:
    """ZILN revenue + hurdle beta-binomial activity, on profile fields and optional dense features."""

    def __init__(self, schema: ProfileSchema, *, horizon_days: int = 30,
                 retained_threshold: int = 7, epochs: int = 40, learning_rate: float = 3e-3,
                 weight_decay: float = 1e-4, batch_size: int = 512, hidden: int = 64,
                 dense_dim: int = 32, dropout: float = 0.1, val_fraction: float = 0.1,
                 patience: int = 6, min_token_count: int = 2, seed: int = 0) -> None:
        self.schema = schema
        self.horizon_days = horizon_days
        self.retained_threshold = retained_threshold
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.hidden = hidden
        self.dense_dim = dense_dim
        self.dropout = dropout
        self.val_fraction = val_fraction
        self.patience = patience
        self.min_token_count = min_token_count
        self.seed = seed

    # -- helpers -----------------------------------------------------------------------------

    def _dense(self, dense: np.ndarray | None, n: int) -> torch.Tensor | None:
        if self.dense_mean_ is None:
            if dense is not None and dense.shape[1]:
                raise ValueError("this model was fitted without dense features")
            return None
        if dense is None or dense.shape != (n, self.dense_mean_.shape[0]):
            got = None if dense is None else dense.shape
            raise ValueError(f"dense features must have shape ({n}, {self.dense_mean_.shape[0]}), "
                             f"got {got}")
        if not np.isfinite(dense).all():
            raise ValueError("dense features contain NaN or inf")
        # clipped like the featuriser's numbers: a near-constant column (a state value the
        # encoder almost never gives) has a tiny std, and one unusual user at z = 50 made the
        # ZILN mean explode (a 2.7M prediction against a mean revenue of 1.5, measured)
        z = np.clip((dense - self.dense_mean_) / self.dense_std_, -NUMERIC_CLIP, NUMERIC_CLIP)
        return torch.from_numpy(z.astype(np.float32))

    def _losses(self, feats: Features, dense: torch.Tensor | None, revenue: torch.Tensor,
                active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rev_logits, cnt_logits = self.net_(feats, dense)
        return (ziln_loss(rev_logits, revenue),
                count_loss(cnt_logits, active, n_trials=self.horizon_days))

    # -- fit / predict -----------------------------------------------------------------------

    def fit(self, profiles: pa.Table, revenue: np.ndarray, active: np.ndarray,
            dense: np.ndarray | None = None) -> "LTVModel":
        n = profiles.num_rows
        revenue, active = checked_labels(n, revenue, active)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        train_idx, val_idx = validation_split(profiles, self.val_fraction, self.seed)
        self.validation_index_ = val_idx

        self.featurizer_ = Featurizer.fit(profiles.take(pa.array(train_idx)), self.schema,
                                          min_count=self.min_token_count)
        if dense is not None and dense.shape[1]:
            d = np.asarray(dense, dtype=np.float64)[train_idx]
            self.dense_mean_ = d.mean(axis=0)
            std = d.std(axis=0)
            self.dense_std_ = np.where(std > 1e-8, std, 1.0)
        else:
            self.dense_mean_ = self.dense_std_ = None
        shape = NetworkShape.for_featurizer(self.featurizer_, None, dim=0, hidden=self.hidden,
                                            dropout=self.dropout)
        self.net_ = LTVNet(shape, 0 if self.dense_mean_ is None else self.dense_mean_.shape[0],
                           self.dense_dim)
        feats = self.featurizer_.transform(profiles)
        x_dense = self._dense(None if dense is None else np.asarray(dense, np.float64), n)
        rev, act = torch.from_numpy(revenue), torch.from_numpy(active)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.learning_rate,
                                weight_decay=self.weight_decay)
        watch = val_idx if len(val_idx) else train_idx
        watch_feats = feats.take(watch)
        watch_dense = None if x_dense is None else x_dense[watch]

        stopper, self.history_ = EarlyStopping(self.patience, min_delta=1e-5), []
        for epoch in range(1, self.epochs + 1):
            self.net_.train()
            order = rng.permutation(train_idx)
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                r_loss, c_loss = self._losses(feats.take(idx),
                                              None if x_dense is None else x_dense[idx],
                                              rev[idx], act[idx])
                opt.zero_grad(set_to_none=True)
                (r_loss + c_loss).backward()
                opt.step()
            self.net_.eval()
            with torch.no_grad():
                r_loss, c_loss = self._losses(watch_feats, watch_dense, rev[watch], act[watch])
            loss = float(r_loss + c_loss)
            self.history_.append({"epoch": epoch, "revenue_loss": float(r_loss),
                                  "active_loss": float(c_loss)})
            if stopper.step(loss, lambda: copy.deepcopy(self.net_.state_dict())):
                break
        assert stopper.best_state is not None
        self.net_.load_state_dict(stopper.best_state)
        self.net_.eval()
        self.best_epoch_ = stopper.best_epoch
        self.val_loss_ = stopper.best_loss
        return self

    @torch.inference_mode()
    def predict(self, profiles: pa.Table, dense: np.ndarray | None = None) -> LTVPredictions:
        n = profiles.num_rows
        x_dense = self._dense(None if dense is None else np.asarray(dense, np.float64), n)
        rev_logits, cnt_logits = self.net_(self.featurizer_.transform(profiles), x_dense)
        return LTVPredictions(
            revenue=ziln_predict(rev_logits).double().numpy(),
            payer_prob=positive_prob(rev_logits).double().numpy(),
            active=count_predict(cnt_logits, self.horizon_days).double().numpy(),
            retained_prob=count_tail_prob(cnt_logits, self.retained_threshold,
                                          self.horizon_days).double().numpy(),
        )

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch_, "epochs_run": len(self.history_),
                "val_loss": round(self.val_loss_, 6),
                "parameters": sum(p.numel() for p in self.net_.parameters())}
