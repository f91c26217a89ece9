"""Row A-gbdt (DESIGN.md 4.10): gradient-boosted trees on the profile, the practitioner's baseline.

Tabular LTV in practice is boosted trees on the profile columns, so the comparison carries them
beside row A's MLP (:class:`trainers.ltv.LTVModel`): if the trees beat the MLP, every uplift is
read against them (``trainers.evaluate.aggregate``). scikit-learn's HistGradientBoosting, one
model per quantity, per target as its kind (``ltv.targets``) says:

- **ziln** (zero-inflated value, revenue): a hurdle. A classifier for p(value > 0) and a regressor on
  log(value) of the paying users; the prediction is p * E[value | value > 0] with Duan's
  smearing, E[value | value > 0, x] = exp(f(x)) * mean(exp(residual)), the residuals being the
  held-out log errors of the validation payers (the training payers' when there are fewer than
  ``min_smearing_rows``: in-sample residuals are smaller, so that only under-corrects). Without
  the factor the regressor gives the conditional MEDIAN (exp of the mean log), about 40% below
  the mean at a log-scale spread of 1. Why the hurdle and not one regressor: HistGradientBoosting
  has no tweedie loss, poisson on the raw value is dominated by the few largest payers, and the
  hurdle gives p(payer), which the payer AUC reads, directly (as the MLP's ZILN gate does).
- **hurdle_count** (``lt30``, active days, a count bounded by max; 0/1 labels are the same
  code): a poisson regressor (log link, so a non-negative mean) clipped to [0, max], and a
  classifier for p(count >= retained_threshold), the score the retained AUC reads.
- **lognormal** (a positive value, income): the ziln's value regressor alone, on log(value) of
  every user, with the same smearing (no gate: every value is positive).

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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from scaletot_features.config import LTVTarget
from scaletot_features.encoder.featurizer import Featurizer, Features
from scaletot_features.ltv.targets import retained_threshold
from scaletot_features.profile import ProfileSchema
from trainers.ltv import LTVPredictions, TargetPrediction, checked_labels, validation_split

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
    """Boosted trees on the profile fields, per target the models its kind says."""

    def __init__(self, schema: ProfileSchema, *, targets: Sequence[LTVTarget],
                 retained_threshold: int = 7, max_iter: int = 300, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 31, min_samples_leaf: int = 20,
                 l2_regularization: float = 0.0, n_iter_no_change: int = 20,
                 max_tokens: int = 32, min_token_count: int = 2, val_fraction: float = 0.1,
                 min_smearing_rows: int = 20, seed: int = 0) -> None:
        self.schema = schema
        self.targets = list(targets)
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

    def _log_value(self, name: str, x: np.ndarray, y: np.ndarray, xv: np.ndarray,
                   yv: np.ndarray) -> None:
        """A regressor on log(y) of positive values and its smearing factor, from the
        validation rows' held-out residuals (the training rows' when there are too few)."""
        value = self._boost("regressor", x, np.log(y), xv, np.log(yv))
        held_out = len(yv) >= self.min_smearing_rows
        xs, ys = (xv, yv) if held_out else (x, y)
        self.boosters_[f"{name}.value"] = value
        self.smearing_[name] = smearing_factor(np.log(ys) - value.predict(xs)) if len(ys) else 1.0
        self.smearing_rows_[name] = "validation" if held_out else "training"

    def _fit_target(self, t: LTVTarget, x: np.ndarray, xv: np.ndarray, y: np.ndarray,
                    yv: np.ndarray) -> None:
        if t.kind == "ziln":
            self.boosters_[f"{t.name}.payer"] = self._boost(
                "classifier", x, (y > 0).astype(int), xv, (yv > 0).astype(int))
            pos, pos_v = y > 0, yv > 0
            self._log_value(t.name, x[pos], y[pos], xv[pos_v], yv[pos_v])
        elif t.kind == "hurdle_count":
            cut = retained_threshold(t, self.retained_threshold)
            self.boosters_[f"{t.name}.count"] = self._boost("regressor", x, y, xv, yv,
                                                            loss="poisson")
            self.boosters_[f"{t.name}.retained"] = self._boost(
                "classifier", x, (y >= cut).astype(int), xv, (yv >= cut).astype(int))
        else:
            self._log_value(t.name, x, y, xv, yv)

    def _predict_target(self, t: LTVTarget, x: np.ndarray) -> TargetPrediction:
        b = self.boosters_
        if t.kind == "ziln":
            payer = self._prob(b[f"{t.name}.payer"], x)
            value = np.exp(b[f"{t.name}.value"].predict(x)) * self.smearing_[t.name]
            return TargetPrediction(payer * value, payer)
        if t.kind == "hurdle_count":
            assert t.max is not None
            return TargetPrediction(np.clip(b[f"{t.name}.count"].predict(x), 0.0, float(t.max)),
                                    self._prob(b[f"{t.name}.retained"], x))
        return TargetPrediction(np.exp(b[f"{t.name}.value"].predict(x)) * self.smearing_[t.name],
                                None)

    # -- fit / predict -----------------------------------------------------------------------

    def fit(self, profiles: pa.Table, labels: Mapping[str, np.ndarray],
            dense: np.ndarray | None = None) -> "GBDTLTVModel":
        """Fit on ``profiles`` and ``labels`` (target name -> one value per profile row)."""
        if dense is not None and dense.shape[1]:
            raise ValueError("the boosted-tree baseline is profile-only: no dense features")
        n = profiles.num_rows
        y = checked_labels(n, labels, self.targets, np.float64)
        t0 = time.perf_counter()
        fit_idx, val_idx = validation_split(profiles, self.val_fraction, self.seed)
        self.validation_index_ = val_idx
        self.featurizer_ = Featurizer.fit(profiles.take(pa.array(fit_idx)), self.schema,
                                          min_count=self.min_token_count)
        x_all, self.categorical_mask_, self.feature_names_ = tree_matrix(
            self.featurizer_, self.featurizer_.transform(profiles), self.max_tokens)
        x, xv = x_all[fit_idx], x_all[val_idx]
        self.boosters_: dict[str, Any] = {}
        self.smearing_: dict[str, float] = {}
        self.smearing_rows_: dict[str, str] = {}
        for t in self.targets:
            self._fit_target(t, x, xv, y[t.name][fit_idx], y[t.name][val_idx])
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def predict(self, profiles: pa.Table, dense: np.ndarray | None = None) -> LTVPredictions:
        if dense is not None and dense.shape[1]:
            raise ValueError("the boosted-tree baseline is profile-only: no dense features")
        x = self._matrix(profiles)
        return {t.name: self._predict_target(t, x) for t in self.targets}

    def summary(self) -> dict[str, Any]:
        return {"iterations": {k: int(b.n_iter_) for k, b in self.boosters_.items()},
                "smearing": {k: round(v, 6) for k, v in self.smearing_.items()},
                "smearing_rows": dict(self.smearing_rows_),
                "features": len(self.feature_names_),
                "categorical_features": int(self.categorical_mask_.sum()),
                "fit_seconds": round(self.fit_seconds_, 3)}
