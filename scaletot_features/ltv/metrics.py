"""LTV evaluation metrics as small pure functions (numpy in, float out).

They follow google/lifetime_value's definitions (normalised Gini over the cumulative gain curve,
decile MAPE over prediction deciles) with two deliberate changes, so that every number is
deterministic and does not depend on the row order of the input:

- Ties in predictions are averaged: within a group of equal predictions the gain curve is the
  expectation over every order of that group (a straight segment), never an arbitrary sort order.
  A constant prediction therefore has Gini exactly 0, and a model is not rewarded by chance for
  the order in which the rows happened to arrive.
- Decile buckets come from average ranks, so equal predictions always share one bucket.

Undefined values (a Gini when every actual value is equal, a Spearman with a constant input, an
AUC with one class) are returned as NaN rather than raised: a thin evaluation slice (the
low-activity users, say) may legitimately have no payers, and a report should show that, not
crash. Malformed input (length mismatch, empty, NaN/inf) raises ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

__all__ = [
    "DecileTable",
    "auc",
    "decile_mape",
    "decile_table",
    "gain_curve",
    "normalized_gini",
    "payer_labels",
    "retained_labels",
    "spearman",
    "summarize",
]


def _vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and 1 in arr.shape:  # accept (n, 1) and (1, n) model outputs
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} has {bad} NaN/inf value(s)")
    return arr


def _pair(y_true: ArrayLike, y_pred: ArrayLike,
          names: tuple[str, str] = ("y_true", "y_pred")) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = _vector(y_true, names[0])
    p = _vector(y_pred, names[1])
    if t.shape != p.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {t.size} != {p.size}")
    return t, p


def gain_curve(y_true: ArrayLike, y_pred: ArrayLike,
               num_points: int | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Cumulative gain: share of total actual value captured by the top-x fraction by prediction.

    Returns (x, y) from (0, 0) to (1, 1), n + 1 points (or ``num_points`` evenly spaced in x, by
    exact linear interpolation, for plotting large populations). Tied predictions form a straight
    segment (the average over orders within the tie). Requires non-negative ``y_true`` with a
    positive sum: a share of a zero or negative total means nothing.
    """
    t, p = _pair(y_true, y_pred)
    if np.any(t < 0):
        raise ValueError("y_true must be non-negative for a gain curve")
    total = float(t.sum())
    if total <= 0:
        raise ValueError("y_true sums to 0: the gain curve is undefined")
    n = t.size
    order = np.argsort(-p, kind="stable")
    ps, ts = p[order], t[order]
    # Tie groups in descending-prediction order; each contributes its total spread evenly.
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_sums = np.add.reduceat(ts, starts)
    per_row = np.repeat(group_sums / sizes, sizes)
    y = np.r_[0.0, np.cumsum(per_row) / total]
    y[-1] = 1.0  # exact endpoint despite float summation
    x = np.arange(n + 1, dtype=np.float64) / n
    if num_points is not None:
        if num_points < 2:
            raise ValueError("num_points must be >= 2")
        grid = np.linspace(0.0, 1.0, num_points)
        return grid, np.interp(grid, x, y)
    return x, y


def _raw_gini(t: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    x, y = gain_curve(t, p)
    # The curve is piecewise linear between its points, so the trapezoid rule is exact.
    area = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)
    return 2.0 * area - 1.0


def normalized_gini(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Gini of the model's gain curve divided by the Gini of the perfect ordering.

    1 = ranks users as well as knowing the outcome, 0 = no better than random (a constant
    prediction is exactly 0), negative = worse than random (reversed ranking of distinct values
    is -1). Invariant to any strictly increasing transform of the predictions. NaN when every
    actual value is equal (nothing to rank), e.g. a slice with no revenue at all.
    """
    t, p = _pair(y_true, y_pred)
    if np.any(t < 0):
        raise ValueError("y_true must be non-negative for the normalised Gini")
    if t.sum() <= 0 or np.all(t == t[0]):
        return float("nan")
    return _raw_gini(t, p) / _raw_gini(t, t)


def _pearson(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(a, b) / denom, -1.0, 1.0))


def spearman(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Spearman rank correlation (Pearson on average ranks, so ties are handled as scipy does).

    NaN when either input is constant (the rank correlation is undefined, not 0).
    """
    t, p = _pair(y_true, y_pred)
    if t.size < 2:
        return float("nan")
    return _pearson(rankdata(t), rankdata(p))


def payer_labels(revenue: ArrayLike) -> NDArray[np.bool_]:
    """Binary payer label: revenue > 0."""
    return _vector(revenue, "revenue") > 0


def retained_labels(active_days: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """Binary retention label: active days in the horizon >= threshold."""
    return _vector(active_days, "active_days") >= threshold


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC by the rank (Mann-Whitney) formula; a tied positive/negative pair counts 1/2.

    ``labels`` must be binary (bool or 0/1). NaN when only one class is present.
    """
    lab, s = _pair(labels, scores, ("labels", "scores"))
    if not np.all((lab == 0) | (lab == 1)):
        raise ValueError("labels must be binary (0/1 or bool)")
    pos = lab == 1
    n_pos = int(pos.sum())
    n_neg = lab.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class DecileTable:
    """Per-bucket statistics behind decile MAPE (bucket 0 = lowest predictions)."""

    bucket: NDArray[np.int64]
    count: NDArray[np.int64]
    pred_mean: NDArray[np.float64]
    true_mean: NDArray[np.float64]
    ape: NDArray[np.float64]  # |pred_mean - true_mean| / |true_mean|; NaN where true_mean == 0


def decile_table(y_true: ArrayLike, y_pred: ArrayLike, buckets: int = 10) -> DecileTable:
    """Bucket users by prediction and compare mean prediction with mean outcome per bucket.

    Bucket of a user = floor(buckets * (r - 1) / n) with r the average rank of its prediction
    (1..n): equal-sized buckets when there are no ties (within one when n is not a multiple), and
    tied predictions always land in the same bucket, whatever the input order. Only non-empty
    buckets are returned, so a constant prediction gives a single bucket.
    """
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    t, p = _pair(y_true, y_pred)
    n = t.size
    r = rankdata(p)
    idx = np.minimum((buckets * (r - 1.0) / n).astype(np.int64), buckets - 1)
    count = np.bincount(idx, minlength=buckets)
    keep = np.flatnonzero(count)
    count = count[keep]
    pred_mean = np.bincount(idx, weights=p, minlength=buckets)[keep] / count
    true_mean = np.bincount(idx, weights=t, minlength=buckets)[keep] / count
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.where(true_mean != 0, np.abs(pred_mean - true_mean) / np.abs(true_mean), np.nan)
    return DecileTable(bucket=keep.astype(np.int64), count=count.astype(np.int64),
                       pred_mean=pred_mean, true_mean=true_mean, ape=ape)


def decile_mape(y_true: ArrayLike, y_pred: ArrayLike, buckets: int = 10) -> float:
    """Mean absolute percentage error between mean prediction and mean outcome per decile.

    This measures calibration across the ranking (google/lifetime_value's decile chart).
    Deciles whose actual mean is 0 are EXCLUDED from the average: a percentage error against 0 is
    infinite whatever the prediction, and zero-inflated revenue routinely has several all-zero
    bottom deciles, where one infinite term would drown every other decile. The excluded count is
    visible in ``decile_table`` (``ape`` is NaN there) and in ``summarize``. NaN when every decile
    has actual mean 0.
    """
    ape = decile_table(y_true, y_pred, buckets).ape
    ape = ape[~np.isnan(ape)]
    return float(ape.mean()) if ape.size else float("nan")


def summarize(y_true: ArrayLike, y_pred: ArrayLike, *,
              auc_threshold: float | None = None,
              auc_scores: ArrayLike | None = None,
              with_auc: bool = True,
              buckets: int = 10) -> dict[str, Any]:
    """All metrics for one target on one slice, as a flat dict ready for a report table.

    AUC labels: ``y_true > 0`` (payer) when ``auc_threshold`` is None, else ``y_true >=
    auc_threshold`` (retained). AUC scores: ``auc_scores`` if given (e.g. the model's
    p(positive), the natural score for "will pay"), else the point predictions. Without
    ``with_auc`` there is no ``auc`` key: a target whose values are all positive (a lognormal
    income) has no class to separate.
    """
    t, p = _pair(y_true, y_pred)
    labels = t > 0 if auc_threshold is None else t >= auc_threshold
    table = decile_table(t, p, buckets)
    ape = table.ape[~np.isnan(table.ape)]
    out = {
        "n": int(t.size),
        "mean_true": float(t.mean()),
        "mean_pred": float(p.mean()),
        "positive_rate": float(labels.mean()),
        "gini": normalized_gini(t, p) if np.all(t >= 0) else float("nan"),
        "spearman": spearman(t, p),
        "decile_mape": float(ape.mean()) if ape.size else float("nan"),
        "deciles_zero_actual": int(np.count_nonzero(np.isnan(table.ape))),
    }
    if with_auc:
        scores = p if auc_scores is None else _vector(auc_scores, "auc_scores")
        out["auc"] = auc(labels, scores)
    return out
