"""ZILN and hurdle beta-binomial heads: hand-computed likelihoods, closed forms, tiny fits."""

import math

import numpy as np
import pytest
import torch

from scaletot_features.ltv.ziln import (
    SCALE_FLOOR,
    count_loss,
    count_pmf,
    count_predict,
    count_tail_prob,
    lognormal_loss,
    lognormal_predict,
    positive_prob,
    ziln_loss,
    ziln_predict,
)
from scaletot_features.runtime import torch_threads

LOGITS = [[0.5, 1.0, 0.3], [-1.0, 0.2, -0.5], [2.0, -0.3, 1.2]]
LABELS = [2.5, 0.0, 0.7]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ziln_by_hand(logit: list[float], y: float) -> float:
    l0, mu, l2 = logit
    if y == 0:
        return _softplus(l0)  # -log(1 - sigmoid(l0))
    s = max(_softplus(l2), math.sqrt(1e-7))
    nll = math.log(y) + math.log(s) + 0.5 * math.log(2 * math.pi) + (math.log(y) - mu) ** 2 / (2 * s * s)
    return _softplus(-l0) + nll  # -log sigmoid(l0) + lognormal NLL


# ---------- ZILN ----------

def test_ziln_loss_matches_hand_computation():
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    per = ziln_loss(logits, torch.tensor(LABELS, dtype=torch.float64), reduction="none")
    expected = [_ziln_by_hand(lg, y) for lg, y in zip(LOGITS, LABELS)]
    np.testing.assert_allclose(per.numpy(), expected, rtol=1e-12)
    mean = ziln_loss(logits, torch.tensor(LABELS, dtype=torch.float64).reshape(-1, 1))
    assert mean.item() == pytest.approx(sum(expected) / 3, rel=1e-12)


def test_ziln_scale_floor():
    # sigma = max(softplus(-40), sqrt(1e-7)) = sqrt(1e-7); y = 1 = exp(mu): only the constants remain.
    loss = ziln_loss(torch.tensor([[0.0, 0.0, -40.0]], dtype=torch.float64), torch.tensor([1.0]))
    assert SCALE_FLOOR == math.sqrt(1e-7)
    assert loss.item() == pytest.approx(math.log(2) + math.log(SCALE_FLOOR) + 0.5 * math.log(2 * math.pi))


def test_ziln_loss_agrees_with_torch_lognormal():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(64, generator=g) < 0.4, torch.rand(64, generator=g) * 10 + 0.01,
                    torch.zeros(64, dtype=torch.float64))
    pos = y > 0
    scale = torch.nn.functional.softplus(logits[:, 2])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], pos.double(), reduction="none")
    ref[pos] -= torch.distributions.LogNormal(logits[pos, 1], scale[pos]).log_prob(y[pos])
    torch.testing.assert_close(ziln_loss(logits, y, reduction="none"), ref)


def test_ziln_gradients_finite_on_extreme_inputs():
    logits = torch.tensor([[50.0, 10.0, -30.0], [-50.0, -10.0, 30.0], [0.0, 0.0, 0.0], [-30.0, 5.0, 0.0]],
                          requires_grad=True)
    loss = ziln_loss(logits, torch.tensor([1e6, 0.0, 1e-8, 3.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ziln_predict_closed_form_and_monte_carlo():
    pred = ziln_predict(torch.tensor(LOGITS, dtype=torch.float64))
    expected = [_sigmoid(l0) * math.exp(mu + 0.5 * max(_softplus(l2), SCALE_FLOOR) ** 2)
                for l0, mu, l2 in LOGITS]
    np.testing.assert_allclose(pred.numpy(), expected, rtol=1e-12)
    torch.manual_seed(0)
    l0, mu, l2 = LOGITS[0]
    n = 400_000
    draws = torch.distributions.LogNormal(mu, _softplus(l2)).sample((n,)) * (torch.rand(n) < _sigmoid(l0))
    assert draws.mean().item() == pytest.approx(expected[0], rel=0.02)
    assert positive_prob(torch.tensor(LOGITS))[0].item() == pytest.approx(_sigmoid(l0), rel=1e-6)


def test_ziln_rejects_bad_input():
    with pytest.raises(ValueError, match="last dimension of 3"):
        ziln_loss(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="does not match"):
        ziln_loss(torch.zeros(4, 3), torch.zeros(5))
    with pytest.raises(ValueError, match="non-negative"):
        ziln_loss(torch.zeros(2, 3), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="NaN"):
        ziln_loss(torch.zeros(2, 3), torch.tensor([1.0, float("nan")]))


def _fit(loss_fn, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> torch.nn.Linear:
    """Full-batch Adam on one thread: tensors this small run ~10x slower when two threads contend."""
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 3).double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch_threads(1):
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
    return model


def test_linear_model_with_ziln_recovers_p_and_mu():
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(size=(n, 2))
    true_logit = 0.8 * x[:, 0] - 0.5
    true_mu = 1.0 - 0.3 * x[:, 0] + 0.6 * x[:, 1]
    paid = rng.random(n) < 1 / (1 + np.exp(-true_logit))
    y = np.where(paid, np.exp(true_mu + 0.7 * rng.normal(size=n)), 0.0)
    xt = torch.tensor(x)
    model = _fit(ziln_loss, xt, torch.tensor(y), steps=150, lr=0.1)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    np.testing.assert_allclose([*w[0], b[0]], [0.8, 0.0, -0.5], atol=0.12)
    np.testing.assert_allclose([*w[1], b[1]], [-0.3, 0.6, 1.0], atol=0.08)
    with torch.no_grad():
        out = model(xt)
        sigma = torch.nn.functional.softplus(out[:, 2])
        p_hat = positive_prob(out).numpy()
    assert sigma.mean().item() == pytest.approx(0.7, abs=0.05)
    assert np.abs(p_hat - 1 / (1 + np.exp(-true_logit))).mean() < 0.03
    with torch.no_grad():
        assert ziln_predict(out).mean().item() == pytest.approx(y.mean(), rel=0.1)


# ---------- lognormal for a plain positive value (income) ----------

def test_lognormal_loss_and_predict_match_hand_computation_on_tiny_inputs():
    logits = [[1.0, 0.3], [0.2, -0.5], [-0.3, -40.0]]  # the last sigma hits the floor
    labels = [2.5, 0.7, 1.0]
    per = lognormal_loss(torch.tensor(logits, dtype=torch.float64),
                         torch.tensor(labels, dtype=torch.float64), reduction="none")
    by_hand = []
    for (mu, raw), y in zip(logits, labels):
        s = max(_softplus(raw), math.sqrt(1e-7))
        by_hand.append(math.log(y) + math.log(s) + 0.5 * math.log(2 * math.pi)
                       + (math.log(y) - mu) ** 2 / (2 * s * s))
    np.testing.assert_allclose(per.numpy(), by_hand, rtol=1e-12)
    # it is the ZILN's positive part: ZILN = -log sigmoid(gate) + lognormal on a positive label
    gate = torch.full((3, 1), 0.4, dtype=torch.float64)
    ziln = ziln_loss(torch.cat([gate, torch.tensor(logits, dtype=torch.float64)], dim=1),
                     torch.tensor(labels, dtype=torch.float64), reduction="none")
    np.testing.assert_allclose(ziln.numpy(), per.numpy() + _softplus(-0.4), rtol=1e-12)
    mean = lognormal_predict(torch.tensor(logits, dtype=torch.float64))
    expected = [math.exp(mu + 0.5 * max(_softplus(raw), SCALE_FLOOR) ** 2) for mu, raw in logits]
    np.testing.assert_allclose(mean.numpy(), expected, rtol=1e-12)


def test_lognormal_refuses_what_it_cannot_model():
    with pytest.raises(ValueError, match="positive"):
        lognormal_loss(torch.zeros(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="last dimension of 2"):
        lognormal_loss(torch.zeros(2, 3), torch.tensor([1.0, 2.0]))


def test_linear_model_with_lognormal_recovers_mu_and_sigma():
    rng = np.random.default_rng(1)
    n = 2000
    x = rng.normal(size=(n, 1))
    y = np.exp(2.0 + 0.5 * x[:, 0] + 0.4 * rng.normal(size=n))
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 2).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    xt, yt = torch.tensor(x), torch.tensor(y)
    with torch_threads(1):
        for _ in range(600):
            opt.zero_grad()
            lognormal_loss(model(xt), yt).backward()
            opt.step()
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    np.testing.assert_allclose([w[0, 0], b[0]], [0.5, 2.0], atol=0.05)
    with torch.no_grad():
        out = model(xt)
    assert torch.nn.functional.softplus(out[:, 1]).mean().item() == pytest.approx(0.4, abs=0.03)
    assert lognormal_predict(out).mean().item() == pytest.approx(y.mean(), rel=0.05)


# ---------- hurdle beta-binomial for the active-day count ----------

def _count_pmf_by_hand(logit: list[float], n: int) -> list[float]:
    l0, l1, l2 = logit
    p = _sigmoid(l0)
    m = 1e-6 + (1 - 2e-6) * _sigmoid(l1)
    phi = _softplus(l2) + 1e-3
    a, b = m * phi, (1 - m) * phi

    def lbeta(u: float, v: float) -> float:
        return math.lgamma(u) + math.lgamma(v) - math.lgamma(u + v)

    bb = [math.comb(n, k) * math.exp(lbeta(k + a, n - k + b) - lbeta(a, b)) for k in range(n + 1)]
    return [1 - p] + [p * bb[k] / (1 - bb[0]) for k in range(1, n + 1)]


COUNT_LOGITS = [[0.3, -0.4, 0.8], [-1.2, 1.5, -2.0], [2.5, -2.0, 3.0]]


def test_count_loss_and_pmf_match_hand_computation():
    logits = torch.tensor(COUNT_LOGITS, dtype=torch.float64)
    pmf = count_pmf(logits, n_trials=30)
    assert pmf.shape == (3, 31)
    for row, lg in zip(pmf.numpy(), COUNT_LOGITS):
        np.testing.assert_allclose(row, _count_pmf_by_hand(lg, 30), rtol=1e-9, atol=1e-15)
        assert row.sum() == pytest.approx(1.0, abs=1e-12)
    for k in (0, 1, 7, 30):
        labels = torch.full((3,), float(k), dtype=torch.float64)
        per = count_loss(logits, labels, reduction="none")
        expected = [-math.log(_count_pmf_by_hand(lg, 30)[k]) for lg in COUNT_LOGITS]
        np.testing.assert_allclose(per.numpy(), expected, rtol=1e-9)


def test_count_predict_and_tail_are_consistent_with_the_pmf():
    logits = torch.tensor(COUNT_LOGITS, dtype=torch.float64)
    pmf = count_pmf(logits)
    mean = (pmf * torch.arange(31, dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(count_predict(logits), mean)
    torch.testing.assert_close(count_tail_prob(logits, 0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(count_tail_prob(logits, 7), pmf[:, 7:].sum(-1))
    extreme = torch.tensor([[40.0, 40.0, 40.0], [40.0, -40.0, 40.0], [-40.0, 0.0, -40.0]])
    pred = count_predict(extreme)
    assert torch.all(pred >= 0) and torch.all(pred <= 30)
    assert pred[0].item() == pytest.approx(30.0, rel=1e-4)  # sure to return, beta mean ~1: every day
    assert pred[1].item() >= 1.0 - 1e-6  # sure to return: at least one day
    assert pred[2].item() < 1e-15  # sure not to return


def test_count_gradients_finite_on_extreme_inputs():
    logits = torch.tensor([[40.0, 40.0, -40.0], [-40.0, -40.0, 40.0], [0.0, 30.0, -30.0],
                           [5.0, -30.0, -30.0], [5.0, 0.0, 50.0]], requires_grad=True)
    loss = count_loss(logits, torch.tensor([30.0, 1.0, 0.0, 1.0, 15.0]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_count_loss_rejects_labels_outside_the_support():
    logits = torch.zeros(2, 3)
    for bad in ([0.0, 31.0], [0.0, 2.5], [0.0, -1.0]):
        with pytest.raises(ValueError):
            count_loss(logits, torch.tensor(bad))
    with pytest.raises(ValueError, match="n_trials"):
        count_loss(logits, torch.zeros(2), n_trials=0)


def test_intercept_only_count_model_recovers_gate_and_mean():
    rng = np.random.default_rng(1)
    n, p, m, phi = 4000, 0.6, 0.25, 2.0
    q = rng.beta(m * phi, (1 - m) * phi, size=4 * n)
    k = rng.binomial(30, q)
    positives = k[k > 0][:n]  # the beta-binomial truncated to 1..30
    y = np.where(rng.random(n) < p, positives, 0).astype(np.float64)
    # Intercept only: fit on the distinct labels weighted by their frequency (same likelihood, fast).
    values, freq = np.unique(y, return_counts=True)
    labels, weights = torch.tensor(values), torch.tensor(freq / n)
    x = torch.ones(values.size, 1, dtype=torch.float64)
    model = _fit(lambda out, lab: (count_loss(out, lab, reduction="none") * weights).sum(),
                 x, labels, steps=300, lr=0.05)
    with torch.no_grad():
        out = model(x[:1])
        m_hat = torch.sigmoid(out[0, 1]).item()
        pred = count_predict(out).item()
    assert positive_prob(out).item() == pytest.approx((y > 0).mean(), abs=0.01)
    assert m_hat == pytest.approx(m, abs=0.04)
    assert pred == pytest.approx(y.mean(), rel=0.03)
