"""Likelihood heads for the LTV target kinds (``ltv.targets``), each read from a small logit layer.

Three kinds, named as in the config: ``ziln`` (zero-inflated heavy-tailed value, 3 logits),
``hurdle_count`` (a bounded count, 3 logits) and ``lognormal`` (a plain positive value such as
income, 2 logits: the ZILN's lognormal part without its gate).

``revenue_30`` -- zero-inflated lognormal (ZILN), exactly as google/lifetime_value defines it
(Wang, Liu, Miao 2019): logit 0 is p(revenue > 0), logit 1 the lognormal's mu, logit 2 its
sigma through softplus with a floor of sqrt(1e-7) (Keras' epsilon). The loss is binary
cross-entropy on "is positive" plus the lognormal negative log-likelihood on the positives only.

``lt30`` -- a hurdle beta-binomial on the count of active days k in 0..n (n = the horizon, 30).
Why not ZILN on the count: the lognormal is continuous and unbounded, so its expectation can
exceed the horizon and its density on integers is not a likelihood of the data. Why not a
(zero-inflated) binomial: one daily rate per user forces variance n q (1 - q), while retention
counts are over-dispersed and often U-shaped (most users drift away after a few days, some use
the product almost daily); the beta-binomial's concentration captures exactly that, with the
same closed-form likelihood. Why a hurdle: zeros come only from the gate, so logit 0 keeps the
ZILN meaning "p(k > 0)" (returned at all / paid at all), the positive part is a beta-binomial
truncated to 1..n, and the expectation stays in [0, n]. Logit 1 is the beta mean m (sigmoid),
logit 2 the concentration phi (softplus + floor); a = m phi, b = (1 - m) phi. It is computed in
float64: lgamma differences cancel badly in float32 when a or b is small.

``lognormal`` -- a value that is always positive (nothing to gate): logit 0 is mu, logit 1 the
sigma through the same softplus and floor, loss = -log LogNormal(y; mu, sigma), prediction the
mean exp(mu + sigma^2 / 2). The ZILN is this plus the gate, and shares its code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "SCALE_FLOOR",
    "count_loss",
    "count_pmf",
    "count_predict",
    "count_tail_prob",
    "lognormal_loss",
    "lognormal_predict",
    "positive_prob",
    "ziln_loss",
    "ziln_predict",
]

SCALE_FLOOR = math.sqrt(1e-7)  # google/lifetime_value: sqrt(tf.keras.backend.epsilon())
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_MEAN_EPS = 1e-6  # keeps the beta mean strictly inside (0, 1)
_CONC_FLOOR = 1e-3  # keeps the beta concentration strictly positive
_LOG_HALF = -math.log(2.0)


def _check_logits(logits: torch.Tensor, width: int = 3) -> None:
    if logits.ndim < 1 or logits.shape[-1] != width:
        raise ValueError(f"logits must have a last dimension of {width}, got shape "
                         f"{tuple(logits.shape)}")


def _labels_like(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Labels as a tensor shaped like logits[..., 0] (accepts (n,) and (n, 1))."""
    labels = torch.as_tensor(labels, dtype=logits.dtype, device=logits.device)
    if labels.shape != logits.shape[:-1]:
        if labels.shape == logits.shape[:-1] + (1,):
            labels = labels[..., 0]
        else:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits "
                             f"shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(labels).all()):
        raise ValueError("labels contain NaN/inf")
    if bool((labels < 0).any()):
        raise ValueError("labels must be non-negative")
    return labels


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def positive_prob(logits: torch.Tensor) -> torch.Tensor:
    """p(target > 0) for either head: the natural score for payer / returned-at-all AUC."""
    _check_logits(logits)
    return torch.sigmoid(logits[..., 0])


def _scale(raw: torch.Tensor) -> torch.Tensor:
    """The lognormal's sigma: softplus with google/lifetime_value's floor."""
    return torch.clamp(F.softplus(raw), min=SCALE_FLOOR)


def _lognormal_log_prob(y: torch.Tensor, loc: torch.Tensor, raw_scale: torch.Tensor) -> torch.Tensor:
    """log LogNormal(y; loc, sigma), evaluated at 1 where y <= 0 (callers mask those out), so
    no log(0) ever enters the graph."""
    scale = _scale(raw_scale)
    log_y = torch.log(torch.where(y > 0, y, torch.ones_like(y)))
    return -log_y - torch.log(scale) - _HALF_LOG_2PI - 0.5 * ((log_y - loc) / scale) ** 2


def _lognormal_mean(loc: torch.Tensor, raw_scale: torch.Tensor) -> torch.Tensor:
    scale = _scale(raw_scale)
    return torch.exp(loc + 0.5 * scale * scale)


def ziln_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Zero-inflated lognormal negative log-likelihood (google/lifetime_value's loss).

    Per example: BCE(logit_0, y > 0) - 1[y > 0] * log LogNormal(y; mu, sigma).
    """
    _check_logits(logits)
    y = _labels_like(labels, logits)
    positive = (y > 0).to(logits.dtype)
    classification = F.binary_cross_entropy_with_logits(logits[..., 0], positive, reduction="none")
    log_prob = _lognormal_log_prob(y, logits[..., 1], logits[..., 2])
    return _reduce(classification - positive * log_prob, reduction)


def ziln_predict(logits: torch.Tensor) -> torch.Tensor:
    """Expected value p * exp(mu + sigma^2 / 2) (sigma floored as in the loss)."""
    _check_logits(logits)
    return torch.sigmoid(logits[..., 0]) * _lognormal_mean(logits[..., 1], logits[..., 2])


def lognormal_loss(logits: torch.Tensor, labels: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """Lognormal negative log-likelihood of a positive value; logits (..., 2) = (mu, raw sigma).

    A zero or negative label is refused: a lognormal puts no mass there (use ``ziln``)."""
    _check_logits(logits, 2)
    y = _labels_like(labels, logits)
    if bool((y <= 0).any()):
        raise ValueError("lognormal labels must be positive (a value that can be 0 is a ziln "
                         "target)")
    return _reduce(-_lognormal_log_prob(y, logits[..., 0], logits[..., 1]), reduction)


def lognormal_predict(logits: torch.Tensor) -> torch.Tensor:
    """The lognormal mean exp(mu + sigma^2 / 2) (sigma floored as in the loss)."""
    _check_logits(logits, 2)
    return _lognormal_mean(logits[..., 0], logits[..., 1])


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012); x is capped below 0."""
    x = torch.clamp(x, max=-1e-12)
    near_zero = torch.log(-torch.expm1(torch.clamp(x, min=_LOG_HALF)))
    far = torch.log1p(-torch.exp(torch.clamp(x, max=_LOG_HALF)))
    return torch.where(x > _LOG_HALF, near_zero, far)


def _lbeta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def _count_params(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p, log(1 - p), a, b) in float64."""
    _check_logits(logits)
    z = logits.to(torch.float64)
    m = _MEAN_EPS + (1.0 - 2.0 * _MEAN_EPS) * torch.sigmoid(z[..., 1])
    phi = F.softplus(z[..., 2]) + _CONC_FLOOR
    return F.logsigmoid(z[..., 0]), F.logsigmoid(-z[..., 0]), m * phi, (1.0 - m) * phi


def _log_bb(k: torch.Tensor, n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log BetaBinomial(k; n, a, b)."""
    log_choose = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return log_choose + _lbeta(k + a, n - k + b) - _lbeta(a, b)


def _log_positive_mass(n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log P_BB(k >= 1) = log(1 - B(a, n + b) / B(a, b))."""
    return _log1mexp(_lbeta(a, n + b) - _lbeta(a, b))


def _check_trials(n_trials: int) -> None:
    if int(n_trials) != n_trials or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")


def count_loss(logits: torch.Tensor, labels: torch.Tensor, n_trials: int = 30,
               reduction: str = "mean") -> torch.Tensor:
    """Hurdle beta-binomial negative log-likelihood for a count in 0..n_trials.

    Per example: k = 0 -> -log(1 - p); k >= 1 -> -log p - log BB(k) + log(1 - BB(0)).
    """
    _check_trials(n_trials)
    k = _labels_like(labels, logits).to(torch.float64)
    if bool((k != torch.round(k)).any()) or bool((k > n_trials).any()):
        raise ValueError(f"count labels must be integers in 0..{n_trials}")
    log_p, log_q, a, b = _count_params(logits)
    positive = k > 0
    k_safe = torch.where(positive, k, torch.ones_like(k))
    log_pos = log_p + _log_bb(k_safe, n_trials, a, b) - _log_positive_mass(n_trials, a, b)
    nll = -torch.where(positive, log_pos, log_q)
    return _reduce(nll, reduction).to(logits.dtype)


def count_pmf(logits: torch.Tensor, n_trials: int = 30) -> torch.Tensor:
    """Full distribution over 0..n_trials, shape (..., n_trials + 1); rows sum to 1."""
    _check_trials(n_trials)
    log_p, log_q, a, b = _count_params(logits)
    k = torch.arange(1, n_trials + 1, dtype=torch.float64, device=logits.device)
    log_pos = (log_p - _log_positive_mass(n_trials, a, b))[..., None] + _log_bb(
        k, n_trials, a[..., None], b[..., None])
    return torch.cat([log_q[..., None], log_pos], dim=-1).exp().to(logits.dtype)


def count_predict(logits: torch.Tensor, n_trials: int = 30) -> torch.Tensor:
    """Expected count p * n m / (1 - BB(0)), always within [0, n_trials]."""
    _check_trials(n_trials)
    log_p, _, a, b = _count_params(logits)
    log_mean = log_p + math.log(n_trials) + torch.log(a / (a + b)) - _log_positive_mass(n_trials, a, b)
    return torch.clamp(log_mean.exp(), max=float(n_trials)).to(logits.dtype)


def count_tail_prob(logits: torch.Tensor, threshold: int, n_trials: int = 30) -> torch.Tensor:
    """P(k >= threshold): the score for a "retained" AUC (lt30 >= threshold)."""
    pmf = count_pmf(logits, n_trials)
    start = max(0, int(math.ceil(threshold)))
    return pmf[..., start:].sum(dim=-1)
