"""Langevin Monte Carlo and its Poisson-midpoint forms (OLMC, ULMC), RM-ULD step."""

from __future__ import annotations

import math

import pytest
import torch

from samplerlab.samplers import langevin as L
from samplerlab.samplers.core import SamplerError
from samplerlab.samplers.noise import GlobalNoise, PerSampleNoise

# These tests build tensors with the default dtype: float64 (restored afterwards).
pytestmark = pytest.mark.usefixtures("float64_default")


def gen(seed: int = 0) -> GlobalNoise:
    return GlobalNoise(torch.Generator().manual_seed(seed))


# A non-log-concave 1-D target: 0.3 N(-1.2, 0.4^2) + 0.7 N(1, 0.5^2).
W = torch.tensor([0.3, 0.7])
MU = torch.tensor([-1.2, 1.0])
SD = torch.tensor([0.4, 0.5])


def mix_drift(x: torch.Tensor) -> torch.Tensor:
    lp = -0.5 * ((x - MU) / SD) ** 2 - SD.log() + W.log()
    return (torch.softmax(lp, -1) * (-(x - MU) / SD**2)).sum(-1, keepdim=True)


def mix_sample(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(W, n, replacement=True, generator=g)
    return (MU[k] + SD[k] * torch.randn(n, generator=g, dtype=torch.float64))[:, None]


def test_plmc_k1_is_lmc_and_ulmc():
    x = torch.randn(5, 3)
    drift = lambda y: -(y**3) + y
    a = L.lmc(drift, x, 0.1, 7, PerSampleNoise(range(5)))
    b = L.plmc_olmc(drift, x, 0.1, 1, 7, PerSampleNoise(range(5)))
    assert torch.equal(a, b)
    v = torch.randn(5, 3)
    xa, va = L.ulmc(drift, x, v, 0.1, 7, PerSampleNoise(range(5)), gamma=1.5)
    xb, vb = L.plmc_ulmc(drift, x, v, 0.1, 1, 7, PerSampleNoise(range(5)), gamma=1.5)
    assert torch.equal(xa, xb) and torch.equal(va, vb)


def test_plmc_constant_drift_is_the_frozen_path():
    # Constant drift: the midpoint corrections vanish; PLMC == LMC with the fine step and
    # the same increments, written out by hand.
    K, h = 6, 0.3
    x = torch.randn(4, 2)
    drift = lambda y: torch.full_like(y, 0.7)
    out = L.plmc_olmc(drift, x, h, K, 1, gen(1))
    z = torch.randn((4, K, 2), generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    for i in range(K):
        ref = ref + (h / K) * 0.7 + math.sqrt(2 * h / K) * z[:, i]
    assert torch.allclose(out, ref, atol=1e-14)


def test_batch_equals_row_by_row():
    x = torch.randn(4, 2)
    full = L.plmc_olmc(mix_drift_2d, x, 0.2, 5, 6, PerSampleNoise([3, 1, 4, 1]))
    rows = [
        L.plmc_olmc(mix_drift_2d, x[i : i + 1], 0.2, 5, 6, PerSampleNoise([s]))
        for i, s in enumerate([3, 1, 4, 1])
    ]
    assert torch.allclose(full, torch.cat(rows), atol=1e-13)


def mix_drift_2d(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([mix_drift(x[:, :1]), -x[:, 1:]], 1)


def test_olmc_gaussian_stationary_moments():
    # Target N(m, s^2); coarse LMC with step h has variance s^2 / (1 - h/(2 s^2)) (biased);
    # PLMC with K sub-steps approximates LMC with step h/K.
    m, s2, h, K, n = 0.5, 1.0, 0.2, 10, 20000
    drift = lambda y: -(y - m) / s2
    x0 = m + math.sqrt(s2) * torch.randn(n, 1, generator=torch.Generator().manual_seed(3))
    x = L.plmc_olmc(drift, x0, h, K, 40, gen(0))
    se = math.sqrt(2 / n) * s2
    assert abs(x.mean() - m) < 4 * math.sqrt(s2 / n)
    lmc_bias = s2 / (1 - h / (2 * s2)) - s2
    assert abs(x.var() - s2) < 0.5 * lmc_bias  # measured: 0.03 (fine LMC: 0.01), se 0.01
    xl = L.lmc(drift, x0, h, 40, gen(0))
    assert abs(xl.var() - s2 / (1 - h / (2 * s2))) < 4 * se  # the baseline's known bias


def test_ulmc_gaussian_stationary_moments():
    m, s2, h, K, n = -1.0, 0.5, 0.2, 8, 10000
    drift = lambda y: -(y - m) / s2
    x0 = m + math.sqrt(s2) * torch.randn(n, 1, generator=torch.Generator().manual_seed(3))
    v0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(4))
    x, v = L.plmc_ulmc(drift, x0, v0, h, K, 30, gen(0), gamma=2.0)
    se = math.sqrt(2 / n)
    assert abs(x.mean() - m) < 4 * math.sqrt(s2 / n)
    assert abs(x.var() / s2 - 1) < 4 * se + 0.02
    assert abs(v.var() - 1) < 4 * se + 0.02


@pytest.mark.parametrize("kind", ["olmc", "ulmc"])
def test_non_log_concave_mixture(kind):
    # Started at the exact law, the chains must stay close to it (moments + histogram).
    n = 8000
    x0 = mix_sample(n, 5)
    if kind == "olmc":
        x = L.plmc_olmc(mix_drift, x0, 0.05, 10, 40, gen(0))
    else:
        v0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(1))
        x, _ = L.plmc_ulmc(mix_drift, x0, v0, 0.1, 10, 30, gen(0), gamma=2.0)
    m1, m2 = float((W * MU).sum()), float((W * (MU**2 + SD**2)).sum())
    assert abs(float(x.mean()) - m1) < 0.06
    assert abs(float((x**2).mean()) - m2) < 0.08
    ref = mix_sample(n, 9)
    edges = torch.linspace(-3, 3, 25)
    ha = torch.histogram(x.flatten(), edges).hist / n
    hb = torch.histogram(ref.flatten(), edges).hist / n
    assert 0.5 * (ha - hb).abs().sum() < 0.06  # total variation of the binned laws


def test_uld_midpoint_covariance_matches_quadrature():
    # Cov(W1, W2, W3) from the Brownian integrals, by a fine midpoint-rule quadrature.
    d, g, al = 0.7, 1.3, 0.35
    L3 = L.uld_midpoint_cholesky(torch.tensor([d]), torch.tensor([g]), torch.tensor([al]))[0]
    C = L3 @ L3.T
    M = 200000
    s = (torch.arange(M) + 0.5) * d / M
    k1 = torch.where(s < al * d, (1 - torch.exp(-g * (al * d - s))) / g, torch.zeros_like(s))
    k2 = (1 - torch.exp(-g * (d - s))) / g
    k3 = torch.exp(-g * (d - s))
    Kmat = torch.stack([k1, k2, k3])
    ref = 2 * g * (Kmat @ Kmat.T) * d / M
    assert torch.allclose(C, ref, rtol=1e-4, atol=1e-9)


def test_uld_midpoint_step_unbiased_for_constant_score():
    # Constant score: E_alpha of the step equals the exact OU step with a constant drift.
    n, d, g = 40000, 0.4, 1.5
    x = torch.zeros(n, 1)
    v = torch.ones(n, 1)
    alpha = torch.rand(n, generator=torch.Generator().manual_seed(0))
    z = torch.zeros(n, 3, 1)  # noise off: only the quadrature is random
    s0 = 0.8
    xn, vn = L.uld_randomized_midpoint_step(
        lambda y: torch.full_like(y, s0), x, v, torch.full((n,), d), torch.full((n,), g), alpha, z
    )
    c = L.ulmc_coefficients(d, g)
    assert abs(float(xn.mean()) - (c["phi1"] * 1 + c["phi2"] * s0)) < 3e-4
    assert abs(float(vn.mean()) - (c["decay"] * 1 + c["phi1"] * s0)) < 3e-3


def test_bad_input():
    x = torch.zeros(2, 1)
    with pytest.raises(SamplerError, match="K"):
        L.plmc_olmc(lambda y: y, x, 0.1, 0, 1)
    with pytest.raises(SamplerError, match="midpoints"):
        L.plmc_olmc(lambda y: y, x, 0.1, 2, 1, midpoints="poisson")
    with pytest.raises(SamplerError, match="gamma"):
        L.ulmc(lambda y: y, x, x, 0.1, 1, gamma=0.0)
    with pytest.raises(SamplerError, match="step"):
        L.lmc(lambda y: y, x, -0.1, 1)


def test_parallel_uld_equals_sequential_corrector_after_2M_rounds():
    from samplerlab.analytic import GaussianMixture
    from samplerlab.samplers.denoisers import CountingDenoiser
    from samplerlab.samplers.langevin import parallel_uld
    from samplerlab.samplers.noise import PerSampleNoise
    from samplerlab.samplers.rmm import corrector_uld

    gmm = GaussianMixture.default(dim=4, components=3, seed=1)
    x = 0.7 * torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((3,), 0.7, dtype=torch.float64)
    M = 3
    kw = dict(steps=M, gamma=2.0, step_size=0.3)
    seq = corrector_uld(gmm, x, sigma, PerSampleNoise([1, 2, 3]), **kw)
    c = CountingDenoiser(gmm)
    par = parallel_uld(c, x, sigma, PerSampleNoise([1, 2, 3]), rounds=2 * M, **kw)
    assert torch.allclose(par, seq, atol=1e-12, rtol=0)
    assert c.rounds == 1 + 2 * M and c.rows == 3 * (1 + 2 * M * 2 * M)
    # Fewer rounds: close, not equal (the test can fail), error shrinking with rounds
    # (exact from 2M - 1 on: the first point's score is exact from the start).
    errs = [
        (parallel_uld(gmm, x, sigma, PerSampleNoise([1, 2, 3]), rounds=r, **kw) - seq).norm()
        for r in (0, 1, 3)
    ]
    assert errs[2] < errs[1] < errs[0] and errs[2] > 0
