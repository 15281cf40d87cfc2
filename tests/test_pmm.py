"""Poisson Midpoint Method over the DDPM chain: exact equivalences and statistics."""

from __future__ import annotations

import math

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import pmm
from samplerlab.samplers.core import SamplerError, append_dims, to_d
from samplerlab.samplers.ddpm import ddpm_coefficients, sample_ddpm
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.schedules import get_sigmas

# These tests build tensors with the default dtype: float64 (restored afterwards).
pytestmark = pytest.mark.usefixtures("float64_default")


def fine_grid(den, n: int) -> torch.Tensor:
    return get_sigmas("karras", n, sigma_min=0.01, sigma_max=10.0)


@pytest.mark.parametrize("variant", ["posterior", "fixed_large", "sde"])
def test_k1_is_ddpm(gmm, variant):
    sig = fine_grid(gmm, 12)
    x = 10 * torch.randn(5, gmm.dim)
    a = sample_ddpm(gmm, x, sig, noise=PerSampleNoise(range(5)), variant=variant)
    b = pmm.sample_pmm(gmm, x, sig, noise=PerSampleNoise(range(5)), K=1, variant=variant)
    assert torch.equal(a, b)


def test_correction_vanishes_for_constant_drift():
    # eps_hat = 0 exactly (D(x) = x): every c_i is exactly 0, so x_K == xh_K bit for bit.
    K, B = 7, 3
    sig = fine_grid(None, K)[:, None].expand(-1, B)
    x = torch.randn(B, 2)
    z = torch.randn(K, B, 2)
    H = torch.ones(B, K, dtype=torch.bool)
    xK, xhK = pmm.step_pmm(lambda y, s: y, x, sig, z, H, float(K))
    assert torch.equal(xK, xhK)
    # The generic core with a constant nonzero drift: same.
    b0 = torch.full_like(x, 0.3)
    xK, xhK = pmm.poisson_midpoint_step(
        lambda p, r, i: b0[r], x, b0, lambda i, s: 0.9 * s, lambda i, b: 0.1 * b, z, H, float(K)
    )
    assert torch.equal(xK, xhK)


def test_step_matches_the_written_out_recursion(gmm):
    # x_{i+1} = A_i x_i + G_i (b0 + K H_i c_i) + Gamma_i Z_i, c_i = eps(xh_i, sigma_i) - b0,
    # xh the frozen-drift interpolant with the SAME Z_i (Kandasamy & Nagaraj 2024), by hand.
    K, B = 6, 4
    sig = fine_grid(gmm, 30)[10 : 10 + K + 1][:, None].expand(-1, B)
    x = 2 * torch.randn(B, gmm.dim)
    z = torch.randn(K, B, gmm.dim)
    H = torch.rand(B, K, generator=torch.Generator().manual_seed(2)) < 0.5
    H[:, 0] = False
    eps = lambda y, s: to_d(y, s, gmm(y, s))
    a = lambda v: append_dims(v, 2)
    b0 = eps(x, sig[0])
    xh = [x]
    for i in range(K):
        A, G, Gm = ddpm_coefficients(sig[i], sig[i + 1], "posterior")
        xh.append(a(A) * xh[i] + a(G) * b0 + a(Gm) * z[i])
    ref = x
    for i in range(K):
        A, G, Gm = ddpm_coefficients(sig[i], sig[i + 1], "posterior")
        c = torch.where(a(H[:, i]), eps(xh[i], sig[i]) - b0, torch.zeros_like(x))
        ref = a(A) * ref + a(G) * (b0 + K * c) + a(Gm) * z[i]
    xK, xhK = pmm.step_pmm(gmm, x, sig, z, H, float(K))
    assert torch.allclose(xK, ref, atol=1e-12)
    assert torch.allclose(xhK, xh[-1], atol=1e-12)
    assert not torch.allclose(xK, xhK, atol=1e-3)  # the correction is not trivially zero


@pytest.mark.parametrize("midpoints", pmm.MIDPOINTS)
def test_midpoint_weighting_is_unbiased(gmm, midpoints):
    # E_H[x_K] = one Picard sweep (every midpoint with weight 1): many replicas of one state.
    K, n = 5, 20000
    sig1 = fine_grid(gmm, 20)[5 : 5 + K + 1]
    x = (2 * torch.randn(1, gmm.dim)).expand(n, -1)
    z = torch.randn(K, 1, gmm.dim).expand(-1, n, -1)
    H, w = pmm.draw_midpoints(PerSampleNoise(range(n)), n, K, midpoints)
    xK, _ = pmm.step_pmm(gmm, x, sig1[:, None].expand(-1, n), z, H, w)
    full = torch.ones(1, K, dtype=torch.bool)
    sweep, _ = pmm.step_pmm(gmm, x[:1], sig1[:, None], z[:, :1], full, 1.0)
    se = xK.std(0) / math.sqrt(n)
    assert ((xK.mean(0) - sweep[0]).abs() < 4.5 * se + 1e-12).all()


@pytest.mark.parametrize("midpoints,K", [("bernoulli", 8), ("single", 8), ("bernoulli", 1)])
def test_realised_nfe(gmm, midpoints, K):
    N, n = 5, 3000
    counter = CountingDenoiser(gmm)
    x = 10 * torch.randn(n, gmm.dim)
    pmm.sample_pmm(
        counter, x, fine_grid(gmm, N * K), noise=PerSampleNoise(range(n)), K=K, midpoints=midpoints
    )
    per_step = counter.nfe(n) / N
    expected = pmm.expected_nfe(N, K, midpoints) / N
    if midpoints == "single" or K == 1:
        assert per_step == expected
    else:
        assert expected == 1 + (K - 1) / K
        sd = math.sqrt((K - 1) * (1 / K) * (1 - 1 / K) / (N * n))  # Binomial(K-1, 1/K)
        assert abs(per_step - expected) < 4 * sd
    assert counter.rounds == N * (2 if K > 1 else 1)  # one batched midpoint call per step


def test_registry_plan_uses_the_full_table_chain(gaussian):
    spec = sl.get_sampler("pmm")
    assert spec.plan(25) == (1000, {"K": 40})
    assert spec.plan(30) == (990, {"K": 33})
    assert spec.nfe(25) == pytest.approx(25 * (1 + 39 / 40)) and not spec.nfe_exact
    res = sl.sample(gaussian, "pmm", steps=25, shape=(2, gaussian.dim), dtype=torch.float64)
    assert torch.allclose(res.sigmas[:-1], gaussian.vp.sigmas.flip(0), rtol=1e-12)
    assert res.sigmas[-1] == 0 and 25 <= res.rounds <= 50  # a step with no midpoint: 1 round


def test_gaussian_moments():
    # N(mu, s^2) with s >= 0.3: with N = 50 coarse steps (K = 20) each coarse step is in
    # PMM's regime (step x Lipschitz < 1). Narrower modes / fewer steps: see the benchmark.
    from samplerlab.analytic import Gaussian

    mu = torch.tensor([0.5, -1.0, 2.0, 0.0])
    s = torch.tensor([0.5, 1.0, 0.3, 1.5])
    g, n = Gaussian(mu, s), 1500
    x = sl.sample(g, "pmm", steps=50, shape=(n, 4), dtype=torch.float64).x
    assert ((x.mean(0) - mu).abs() < 4 * s / math.sqrt(n)).all()
    assert ((x.var(0) / s**2 - 1).abs() < 4 * math.sqrt(2 / n) + 0.03).all()


def test_batch_equals_row_by_row(gmm):
    seeds = [7, 3, 11]
    full = sl.sample(gmm, "pmm", steps=5, shape=(3, gmm.dim), seeds=seeds, dtype=torch.float64)
    rows = [
        sl.sample(gmm, "pmm", steps=5, shape=(1, gmm.dim), seeds=[s], dtype=torch.float64).x
        for s in seeds
    ]
    assert torch.allclose(full.x, torch.cat(rows), atol=1e-12)


def test_per_row_grids(gmm):
    # Two rows with different fine grids in one call == each row alone.
    K = 4
    g1, g2 = fine_grid(gmm, 3 * K), get_sigmas("logsnr", 3 * K, sigma_min=0.02, sigma_max=5.0)
    x = 3 * torch.randn(2, gmm.dim)
    both = pmm.sample_pmm(gmm, x, torch.stack([g1, g2], 1), noise=PerSampleNoise([1, 2]), K=K)
    a = pmm.sample_pmm(gmm, x[:1], g1, noise=PerSampleNoise([1]), K=K)
    b = pmm.sample_pmm(gmm, x[1:], g2, noise=PerSampleNoise([2]), K=K)
    assert torch.allclose(both, torch.cat([a, b]), atol=1e-12)


def test_bad_input(gmm):
    x = torch.zeros(2, gmm.dim)
    sig = fine_grid(gmm, 6)
    with pytest.raises(SamplerError, match="K"):
        pmm.sample_pmm(gmm, x, sig, K=0)
    with pytest.raises(SamplerError, match="multiple of K=4"):
        pmm.sample_pmm(gmm, x, sig, K=4)
    with pytest.raises(SamplerError, match=r"variant.*posterior"):
        pmm.sample_pmm(gmm, x, sig, K=2, variant="ddim")
    with pytest.raises(SamplerError, match=r"midpoints.*bernoulli"):
        pmm.sample_pmm(gmm, x, sig, K=2, midpoints="poisson")
    with pytest.raises(SamplerError, match="K"):
        sl.sample(gmm, "pmm", steps=3, shape=(2, gmm.dim), K=0)
    # An explicit K plans a fine grid of steps * K sub-steps (not a regrouped 1000-step one).
    res = sl.sample(gmm, "pmm", steps=3, shape=(2, gmm.dim), K=7, dtype=torch.float64)
    assert len(res.sigmas) - 1 == 21


def test_k_zero_is_a_sampler_error_not_a_crash():
    from samplerlab.samplers.registry import get_sampler

    spec = get_sampler("pmm")
    assert spec.steps_for_nfe(50, {"K": 0}) is None  # every step count rejected
    with pytest.raises(SamplerError, match="K"):
        spec.plan(10, {"K": 0})
