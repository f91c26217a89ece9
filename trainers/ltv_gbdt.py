"""Row A-gbdt (DESIGN.md 4.10): gradient-boosted trees on the profile, the practitioner's baseline.

Tabular LTV in practice is boosted trees on the profile columns, so the comparison carries them
beside row A's MLP (:class:`trainers.ltv.LTVModel`): if the trees beat the MLP, every uplift is
read against them (``trainers.evaluate.aggregate``). scikit-learn's HistGradientBoosting, one
model per quantity:

- **Revenue** (zero-inflated value): a hurdle. A classifier for p(value > 0) and a regressor on
  log(value) of the paying users; the prediction is p * E[value | value > 0] with Duan's
  smearing, E[value | value > 0, x] = exp(f(x)) * mean(exp(residual)), the residuals being the
  held-out log errors of the validation payers (the training payers' when there are fewer than
  ``min_smearing_rows``: in-sample residuals are smaller, so that only under-corrects). Without
  the factor the regressor gives the conditional MEDIAN (exp of the mean log), about 40% below
  the mean at a log-scale spread of 1. Why the hurdle and not one regressor: HistGradientBoosting
  has no tweedie loss, poisson on the raw value is dominated by the few largest payers, and the
  hurdle gives p(payer), which the payer AUC reads, directly (as the MLP's ZILN gate does).
- **Activity** (``lt30``, active days, a count bounded by the horizon; 0/1 labels are the same
  code): a poisson regressor (log link, so a non-negative mean) clipped to [0, horizon], and a
  classifier for p(active days >= retained_threshold), the score the retained AUC reads.

Features: the MLP's own :class:`~scaletot_features.encoder.featurizer.Featurizer`, fitted on the
same fit rows, read as one dense matrix: categorical fields as native categories (the ids 0 =
missing, 1 = outside the domain, 2.. = the declared values; a field with more than 255 ids
enters as its integer code instead), numbers standardised with NaN where missing (trees split
on the missing values natively; the +-5 clip only merges the far tail), and for each text/tag
field the counts of its ``max_tokens`` most frequent tokens (the featuriser's vocabulary is
ordered by training frequency), its token count and its missing flag. No sentence embedding:
this is the profile-only row.

Early stopping on the MLP's validation users (:func:`trainers.ltv.validation_split`, the same
seed and rows), passed as HistGradientBoosting's fixed ``X_val``; never a test user. Trees have no
other randomness here (every feature, every row), so seeds differ only by their validation slice.
scikit-learn style: ``__init__`` stores parameters, ``fit`` returns self, learned attributes end
in ``_``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from scaletot_features.encoder.featurizer import Featurizer, Features
from scaletot_features.profile import ProfileSchema
from trainers.ltv import LTVPredictions, checked_labels, validation_split

__all__ = ["GBDTLTVModel", "smearing_factor", "tree_matrix"]

MAX_CATEGORIES = 255  # HistGradientBoosting's limit on a native categorical feature's values


def smearing_factor(residuals: np.ndarray) -> float:
    """Duan's smearing estimate of E[exp(e)] from log-scale residuals e (1.0 when there are none).

    exp(predicted log value) * this factor is the conditional mean under any residual
    distribution that does not depend on x; the lognormal's exp(sigma^2 / 2) is its special case.
    """
    r = np.asarray(residuals, dtype=np.float64)
    return float(np.mean(np.exp(r))) if r.size else 1.0


def tree_matrix(featurizer: Featurizer, feats: Features,
                max_tokens: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(matrix, categorical mask, column names) of featurised profiles, as the trees read them."""
    n = feats.rows
    cols: list[np.ndarray] = []
    cat: list[bool] = []
    names: list[str] = []
    for j, f in enumerate(featurizer.categorical):
        cols.append(feats.categorical[:, j].numpy().astype(np.float64))
        cat.append(f.size <= MAX_CATEGORIES)
        names.append(f.name)
    num = feats.numeric.numpy().astype(np.float64)
    for j, f in enumerate(featurizer.numeric):
        cols.append(np.where(num[:, 2 * j + 1] > 0, np.nan, num[:, 2 * j]))
        cat.append(False)
        names.append(f.name)
    for f, ids, offsets, empty in zip(featurizer.bags, feats.bag_ids, feats.bag_offsets,
                                      feats.bag_empty):
        ids_np = ids.numpy()
        lengths = np.diff(np.append(offsets.numpy(), ids_np.shape[0]))
        rows = np.repeat(np.arange(n), lengths)
        k = min(max_tokens, len(f.values))
        keep = (ids_np >= 1) & (ids_np <= k)  # id t = the t-th most frequent training token
        counts = np.zeros((n, k))
        np.add.at(counts, (rows[keep], ids_np[keep] - 1), 1.0)
        cols += list(counts.T) + [lengths.astype(np.float64),
                                  empty.numpy()[:, 0].astype(np.float64)]
        cat += [False] * (k + 2)
        names += [f"{f.name}={t}" for t in f.values[:k]] + [f"{f.name}#tokens", f"{f.name}#missing"]
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0)), np.array(cat, bool), names


class _Constant:
    """A degenerate target (one class, no payer): the training mean, as a fitted model would."""

    def __init__(self, value: float) -> None:
        self.value = float(value)
        self.n_iter_ = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value)


class GBDTLTVModel:
    """Hurdle revenue + poisson activity + two classifiers, boosted trees on the profile fields."""

    def __init__(self, schema: ProfileSchema, *, horizon_days: int = 30,
                 retained_threshold: int = 7, max_iter: int = 300, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 20,
                 l2_regularization: float = 0.0, n_iter_no_change: int = 20,
                 max_tokens: int = 32, min_token_count: int = 2, val_fraction: float = 0.1,
                 min_smearing_rows: int = 20, seed: int = 0) -> None:
        self.schema = schema
        self.horizon_days = horizon_days
        self.retained_threshold = retained_threshold
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.n_iter_no_change = n_iter_no_change
        self.max_tokens = max_tokens
        self.min_token_count = min_token_count
        self.val_fraction = val_fraction
        self.min_smearing_rows = min_smearing_rows
        self.seed = seed

    # -- helpers -----------------------------------------------------------------------------

    def _boost(self, kind: str, x: np.ndarray, y: np.ndarray, x_val: np.ndarray,
               y_val: np.ndarray, loss: str | None = None) -> Any:
        """One booster, early-stopped on (x_val, y_val) when there is a validation slice."""
        if kind == "classifier" and len(np.unique(y)) < 2:
            return _Constant(float(y[0]) if len(y) else 0.0)
        if len(y) == 0 or (loss == "poisson" and not y.sum() > 0):
            return _Constant(float(y.mean()) if len(y) else 0.0)
        cls = HistGradientBoostingClassifier if kind == "classifier" else \
            HistGradientBoostingRegressor
        extra = {} if loss is None else {"loss": loss}
        stop = len(y_val) > 0
        model = cls(learning_rate=self.learning_rate, max_iter=self.max_iter,
                    max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
                    l2_regularization=self.l2_regularization,
                    categorical_features=self.categorical_mask_, early_stopping=stop,
                    n_iter_no_change=self.n_iter_no_change, random_state=self.seed, **extra)
        if stop:
            return model.fit(x, y, X_val=x_val, y_val=y_val)
        return model.fit(x, y)

    @staticmethod
    def _prob(model: Any, x: np.ndarray) -> np.ndarray:
        if isinstance(model, _Constant):
            return model.predict(x)
        return model.predict_proba(x)[:, list(model.classes_).index(1)]

    def _matrix(self, profiles: pa.Table) -> np.ndarray:
        x, _, _ = tree_matrix(self.featurizer_, self.featurizer_.transform(profiles),
                              self.max_tokens)
        return x

    # -- fit / predict -----------------------------------------------------------------------

    def fit(self, profiles: pa.Table, revenue: np.ndarray, active: np.ndarray,
            dense: np.ndarray | None = None) -> "GBDTLTVModel":
        if dense is not None and dense.shape[1]:
            raise ValueError("the boosted-tree baseline is profile-only: no dense features")
        n = profiles.num_rows
        revenue, active = checked_labels(n, revenue, active, np.float64)
        t0 = time.perf_counter()
        fit_idx, val_idx = validation_split(profiles, self.val_fraction, self.seed)
        self.validation_index_ = val_idx
        self.featurizer_ = Featurizer.fit(profiles.take(pa.array(fit_idx)), self.schema,
                                          min_count=self.min_token_count)
        x_all, self.categorical_mask_, self.feature_names_ = tree_matrix(
            self.featurizer_, self.featurizer_.transform(profiles), self.max_tokens)
        x, xv = x_all[fit_idx], x_all[val_idx]
        rev, rev_v = revenue[fit_idx], revenue[val_idx]
        act, act_v = active[fit_idx], active[val_idx]

        self.payer_ = self._boost("classifier", x, (rev > 0).astype(int), xv,
                                  (rev_v > 0).astype(int))
        pos, pos_v = rev > 0, rev_v > 0
        self.value_ = self._boost("regressor", x[pos], np.log(rev[pos]), xv[pos_v],
                                  np.log(rev_v[pos_v]))
        held_out = int(pos_v.sum()) >= self.min_smearing_rows
        xs, ys = (xv[pos_v], rev_v[pos_v]) if held_out else (x[pos], rev[pos])
        self.smearing_ = smearing_factor(np.log(ys) - self.value_.predict(xs)) if len(ys) else 1.0
        self.smearing_rows_ = "validation" if held_out else "training"
        self.active_ = self._boost("regressor", x, act, xv, act_v, loss="poisson")
        self.retained_ = self._boost("classifier", x, (act >= self.retained_threshold).astype(int),
                                     xv, (act_v >= self.retained_threshold).astype(int))
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict(self, profiles: pa.Table, dense: np.ndarray | None = None) -> LTVPredictions:
        if dense is not None and dense.shape[1]:
            raise ValueError("the boosted-tree baseline is profile-only: no dense features")
        x = self._matrix(profiles)
        payer = self._prob(self.payer_, x)
        value = np.exp(self.value_.predict(x)) * self.smearing_
        return LTVPredictions(
            revenue=payer * value, payer_prob=payer,
            active=np.clip(self.active_.predict(x), 0.0, float(self.horizon_days)),
            retained_prob=self._prob(self.retained_, x))

    def summary(self) -> dict[str, Any]:
        return {"iterations": {k: int(getattr(self, f"{k}_").n_iter_)
                               for k in ("payer", "value", "active", "retained")},
                "smearing": round(self.smearing_, 6), "smearing_rows": self.smearing_rows_,
                "features": len(self.feature_names_),
                "categorical_features": int(self.categorical_mask_.sum()),
                "fit_seconds": round(self.fit_seconds_, 3)}
