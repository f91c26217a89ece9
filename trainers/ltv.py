"""The LTV model (DESIGN.md 4.10): profile fields (+ optional dense features) -> one likelihood
head per target (``ltv.targets``).

One network, one head per target on a shared trunk, because every target is read from the same
sparse profile and a trunk per target would multiply the cost of every comparison. The head is the
one the target's kind says (:class:`TargetHead`, likelihoods in ``scaletot_features/ltv/ziln.py``):

- ``ziln`` (``revenue_30``): zero-inflated lognormal (google/lifetime_value's loss); the point
  prediction is the ZILN mean, the payer AUC's score p(value > 0) its gate.
- ``hurdle_count`` (``lt30``): hurdle beta-binomial over 0..max (why not ZILN on a bounded count:
  see ziln.py); the retained AUC's score is p(count >= the retained threshold).
- ``lognormal`` (``annual_income``): a lognormal on a value that is always positive; no AUC.

The loss is the sum of the heads' losses; early stopping watches that sum.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from scaletot_features.config import LTVTarget
from scaletot_features.dataset import hash_mask
from scaletot_features.encoder.featurizer import NUMERIC_CLIP, Features, Featurizer
from scaletot_features.encoder.model import FieldInputs, NetworkShape
from scaletot_features.ltv.ziln import (
    count_loss,
    count_predict,
    count_tail_prob,
    lognormal_loss,
    lognormal_predict,
    positive_prob,
    ziln_loss,
    ziln_predict,
)
from scaletot_features.ltv.targets import retained_threshold, value_problem
from scaletot_features.profile import ID_COLUMN, ProfileSchema
from trainers.early_stopping import EarlyStopping

__all__ = ["LTVModel", "LTVNet", "LTVPredictions", "TargetHead", "TargetPrediction",
           "checked_labels", "validation_split"]


@dataclass(frozen=True)
class TargetPrediction:
    """One target's predictions for a set of users."""

    value: np.ndarray  # the expected value (the point prediction every metric ranks by)
    score: np.ndarray | None  # what its AUC reads (None: its kind has no AUC, see AUC_OF_KIND)


LTVPredictions = dict[str, TargetPrediction]
"""Target name -> its predictions, in the order of the targets."""


@dataclass(frozen=True)
class TargetHead:
    """One target's output width, loss and predictions, as its kind says.

    A lognormal target is modelled in units of ``scale``, its training values' geometric mean:
    Y / c is lognormal with mu - log c and the same sigma, so nothing changes but the start.
    Without it an income of 20,000 (log 10) starts ten sigmas from a fresh head's mu = 0, the
    first steps inflate sigma instead of moving mu, and exp(mu + sigma^2 / 2) overflows (measured).
    """

    target: LTVTarget
    retained_threshold: int = 7  # hurdle_count: the retained AUC's cut (capped at max)
    scale: float = 1.0  # lognormal: labels are divided by it, predictions multiplied

    @classmethod
    def for_labels(cls, target: LTVTarget, retained: int, y: np.ndarray) -> "TargetHead":
        """The head of ``target`` for training labels ``y`` (a lognormal one takes their scale)."""
        scale = float(np.exp(np.mean(np.log(y)))) if target.kind == "lognormal" and len(y) else 1.0
        return cls(target, retained, scale)

    @property
    def width(self) -> int:
        return 2 if self.target.kind == "lognormal" else 3

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.target.kind == "ziln":
            return ziln_loss(logits, y)
        if self.target.kind == "hurdle_count":
            return count_loss(logits, y, n_trials=self._max)
        return lognormal_loss(logits, y / self.scale)

    def predict(self, logits: torch.Tensor) -> TargetPrediction:
        numpy = lambda t: t.double().numpy()  # noqa: E731
        if self.target.kind == "ziln":
            return TargetPrediction(numpy(ziln_predict(logits)), numpy(positive_prob(logits)))
        if self.target.kind == "hurdle_count":
            threshold = retained_threshold(self.target, self.retained_threshold)
            return TargetPrediction(numpy(count_predict(logits, self._max)),
                                    numpy(count_tail_prob(logits, threshold, self._max)))
        return TargetPrediction(numpy(lognormal_predict(logits)) * self.scale, None)

    @property
    def _max(self) -> int:
        assert self.target.max is not None  # LTVTarget requires it for hurdle_count
        return self.target.max


class LTVNet(FieldInputs):
    """Profile field embeddings (+ projected dense extras) -> MLP -> one logit block per head."""

    def __init__(self, shape: NetworkShape, dense_in: int, dense_dim: int,
                 head_widths: Sequence[int]) -> None:
        super().__init__(shape)
        self.dense = nn.Linear(dense_in, dense_dim) if dense_in else None
        width = shape.input_dim + (dense_dim if dense_in else 0)
        self.trunk = nn.Sequential(
            nn.Linear(width, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
            nn.Linear(shape.hidden, shape.hidden), nn.ReLU(), nn.Dropout(shape.dropout),
        )
        self.heads = nn.ModuleList(nn.Linear(shape.hidden, w) for w in head_widths)

    def forward(self, x: Features, dense: torch.Tensor | None) -> list[torch.Tensor]:
        v = self.field_vector(x)
        if self.dense is not None:
            assert dense is not None
            v = torch.cat([v, self.dense(dense)], dim=1)
        h = self.trunk(v)
        return [head(h) for head in self.heads]


def checked_labels(n: int, labels: Mapping[str, np.ndarray], targets: Sequence[LTVTarget],
                   dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Each target's labels as a ``dtype`` array, refused unless one known value per profile
    row that the target's kind can model."""
    out = {}
    for t in targets:
        if t.name not in labels:
            raise ValueError(f"no labels for target {t.name!r} (given: {sorted(labels)})")
        y = np.asarray(labels[t.name], dtype=np.float64)
        if y.shape != (n,):
            raise ValueError(f"labels must have one value per profile row ({n}); target "
                             f"{t.name!r} has shape {y.shape}")
        if np.isnan(y).any():
            raise ValueError(f"labels of target {t.name!r} contain NaN (users without a known "
                             "label must be dropped)")
        problem = value_problem(t, y)
        if problem:
            raise ValueError(problem)
        out[t.name] = y.astype(dtype)
    return out


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
    """One likelihood head per target, on profile fields and optional dense features."""

    def __init__(self, schema: ProfileSchema, *, targets: Sequence[LTVTarget],
                 retained_threshold: int = 7, epochs: int = 40, learning_rate: float = 3e-3,
                 weight_decay: float = 1e-4, batch_size: int = 512, hidden: int = 64,
                 dense_dim: int = 32, dropout: float = 0.1, val_fraction: float = 0.1,
                 patience: int = 6, min_token_count: int = 2, seed: int = 0) -> None:
        self.schema = schema
        self.targets = list(targets)
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

    def _losses(self, feats: Features, dense: torch.Tensor | None,
                y: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head.loss(logits, yt)
                for head, logits, yt in zip(self.heads_, self.net_(feats, dense), y)]

    # -- fit / predict -----------------------------------------------------------------------

    def fit(self, profiles: pa.Table, labels: Mapping[str, np.ndarray],
            dense: np.ndarray | None = None) -> "LTVModel":
        """Fit on ``profiles`` and ``labels`` (target name -> one value per profile row)."""
        n = profiles.num_rows
        y = checked_labels(n, labels, self.targets)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        train_idx, val_idx = validation_split(profiles, self.val_fraction, self.seed)
        self.validation_index_ = val_idx
        self.heads_ = [TargetHead.for_labels(t, self.retained_threshold,
                                             y[t.name][train_idx].astype(np.float64))
                       for t in self.targets]

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
                           self.dense_dim, [h.width for h in self.heads_])
        feats = self.featurizer_.transform(profiles)
        x_dense = self._dense(None if dense is None else np.asarray(dense, np.float64), n)
        ys = [torch.from_numpy(y[t.name]) for t in self.targets]
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
                losses = self._losses(feats.take(idx), None if x_dense is None else x_dense[idx],
                                      [yt[idx] for yt in ys])
                opt.zero_grad(set_to_none=True)
                sum(losses).backward()
                opt.step()
            self.net_.eval()
            with torch.no_grad():
                losses = self._losses(watch_feats, watch_dense, [yt[watch] for yt in ys])
            loss = float(sum(losses))
            self.history_.append({"epoch": epoch, **{f"{t.name}_loss": float(v)
                                                     for t, v in zip(self.targets, losses)}})
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
        logits = self.net_(self.featurizer_.transform(profiles), x_dense)
        return {h.target.name: h.predict(block) for h, block in zip(self.heads_, logits)}

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch_, "epochs_run": len(self.history_),
                "val_loss": round(self.val_loss_, 6),
                "parameters": sum(p.numel() for p in self.net_.parameters())}
