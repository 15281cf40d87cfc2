"""Randomized midpoints: unbiased quadrature, parallel == sequential, PC corrector, API."""

from __future__ import annotations

import math

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import rmm
from samplerlab.samplers import rmm_parallel as rp
from samplerlab.samplers.core import SamplerError
from samplerlab.samplers.ddim import sample_ddim
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import GlobalNoise, PerSampleNoise
from samplerlab.samplers.schedules import get_sigmas

# These tests build tensors with the default dtype: float64 (restored afterwards).
pytestmark = pytest.mark.usefixtures("float64_default")


def karras(n: int, lo: float = 0.02, hi: float = 20.0) -> torch.Tensor:
    return get_sigmas("karras", n, sigma_min=lo, sigma_max=hi)


class TimeOnlyEps:
    """A 'model' whose eps depends on sigma only: eps = e0 f(sigma) (x-independent)."""

    def __init__(self, e0: torch.Tensor, f) -> None:
        self.e0, self.f = e0, f

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma[:, None] * self.f(sigma)[:, None] * self.e0


def test_frozen_score_exponential_form_is_unbiased():
    # Constant VP score s0: eps = -(sigma / sqrt(1 + sigma^2)) s0. The alpha-average of the
    # step equals the exponential-integrator step x_vp' = e^h x_vp + (e^h - 1) s0.
    n, s0 = 40000, torch.tensor([0.7, -1.3])
    den = TimeOnlyEps(-s0, lambda s: s / (1 + s**2).sqrt())
    sigma, sigma_next = torch.full((n,), 3.0), torch.full((n,), 1.2)
    x = torch.tensor([[0.4, 2.0]]).expand(n, -1)
    alpha = torch.rand(n, generator=torch.Generator().manual_seed(0))
    out = rmm.step_rmm(den, x, sigma, sigma_next, alpha, form="exponential")
    c, c_n = (1 + 3.0**2) ** -0.5, (1 + 1.2**2) ** -0.5
    eh = c_n / c
    ref = (eh * c * x[0] + (eh - 1) * s0) / c_n
    se = out.std(0) / math.sqrt(n)
    assert ((out.mean(0) - ref).abs() < 4 * se).all()
    assert (out.std(0) > 1e-3).all()  # the estimator is genuinely random


def test_time_only_drift_ddim_form_is_unbiased_and_frozen_eps_exact():
    # eps = e0 cos(sigma): the alpha-average equals the exact integral x + e0 (sin s' - sin s).
    n, e0 = 40000, torch.tensor([1.0, -0.5])
    den = TimeOnlyEps(e0, torch.cos)
    s, s_n = 2.5, 0.4
    x = torch.zeros(n, 2)
    alpha = torch.rand(n, generator=torch.Generator().manual_seed(1))
    out = rmm.step_rmm(den, x, torch.full((n,), s), torch.full((n,), s_n), alpha, form="ddim")
    ref = e0 * (math.sin(s_n) - math.sin(s))
    assert ((out.mean(0) - ref).abs() < 4 * out.std(0) / math.sqrt(n)).all()
    # Constant eps: every alpha gives exactly the DDIM step.
    const = TimeOnlyEps(e0, torch.ones_like)
    out = rmm.step_rmm(const, x, torch.full((n,), s), torch.full((n,), s_n), alpha, form="ddim")
    assert torch.allclose(out, (e0 * (s_n - s)).expand(n, -1), atol=1e-13)


def test_time_only_denoiser_data_form_is_unbiased_and_frozen_D_exact():
    # D = d0 cos(1/sigma): the alpha-average equals the exact solution of
    # d(x/sigma)/d(1/sigma) = D, i.e. x'/s' = x/s + d0 (sin(1/s') - sin(1/s)).
    n, d0 = 40000, torch.tensor([1.0, -0.5])
    den = lambda x, sigma: torch.cos(1 / sigma)[:, None] * d0
    s, s_n = 2.5, 0.4
    x = torch.tensor([[0.3, 1.0]]).expand(n, -1)
    alpha = torch.rand(n, generator=torch.Generator().manual_seed(2))
    out = rmm.step_rmm(den, x, torch.full((n,), s), torch.full((n,), s_n), alpha, form="data")
    ref = s_n * (x[0] / s + d0 * (math.sin(1 / s_n) - math.sin(1 / s)))
    assert ((out.mean(0) - ref).abs() < 4 * out.std(0) / math.sqrt(n)).all()
    assert (out.std(0) > 1e-3).all()
    # Constant D: every alpha gives exactly the DDIM step (s'/s) x + (1 - s'/s) d0.
    const = lambda x, sigma: d0.expand(x.shape[0], -1)
    out = rmm.step_rmm(const, x, torch.full((n,), s), torch.full((n,), s_n), alpha, form="data")
    ddim = (s_n / s) * x[0] + (1 - s_n / s) * d0
    assert torch.allclose(out, ddim.expand(n, -1), atol=1e-13)


@pytest.mark.parametrize("form", rmm.FORMS)
def test_rmm_convergence_and_equal_nfe_comparison(gaussian, form):
    # Error to the exact PF-ODE state at sigma_min (grids end at 0.02: no denoise step).
    x = 20 * torch.randn(128, gaussian.dim, generator=torch.Generator().manual_seed(0))
    exact = gaussian.ode_solution(x, 20.0, 0.02)
    grid = lambda n: karras(n)[:-1]
    err = lambda y: float((y - exact).norm(dim=1).mean())
    run = lambda n: rmm.sample_rmm(
        gaussian, x, grid(n), noise=PerSampleNoise(range(128)), form=form
    )
    e8, e32 = err(run(8)), err(run(32))
    assert e32 < e8 / 6  # faster than first order (DDIM: / 4); strong order ~1.5: / 8
    d8, d32 = err(sample_ddim(gaussian, x, grid(16))), err(sample_ddim(gaussian, x, grid(64)))
    assert d32 > d8 / 5
    if form != "exponential":  # at equal NFE (2 per rmm step) these forms beat DDIM
        assert e32 < 0.6 * d32


@pytest.mark.parametrize("form", rmm.FORMS)
def test_parallel_with_enough_rounds_equals_its_serial_form(gmm, form):
    x = 20 * torch.randn(5, gmm.dim, generator=torch.Generator().manual_seed(1))
    sig = karras(11)
    serial = rp.rmm_parallel_fixed_point(gmm, x, sig, noise=PerSampleNoise(range(5)), form=form)
    for R in (1, 3, 4, 10):
        par = rp.sample_rmm_parallel(
            gmm, x, sig, noise=PerSampleNoise(range(5)), form=form, R=R, K=R
        )
        assert torch.allclose(par, serial, atol=1e-10), R
    # Fewer rounds than R: approaches the serial form as K grows (triangular Picard).
    errs = [
        (
            rp.sample_rmm_parallel(
                gmm, x, sig, noise=PerSampleNoise(range(5)), form=form, R=10, K=k
            )
            - serial
        ).norm()
        for k in (2, 5, 8, 10)
    ]
    assert errs[-1] < 1e-10 < errs[2] < errs[1] < errs[0]


def test_parallel_only_midpoints_and_counts(gmm):
    x = 20 * torch.randn(4, gmm.dim, generator=torch.Generator().manual_seed(2))
    sig = karras(10)
    seen = []

    class Rec(CountingDenoiser):
        def __call__(self, x, sigma):
            seen.append(sigma.clone())
            return super().__call__(x, sigma)

    c1, c2 = Rec(gmm), CountingDenoiser(gmm)
    a = rp.sample_rmm_parallel(c1, x, sig, noise=PerSampleNoise(range(4)), R=4, K=3)
    b = rp.sample_rmm_parallel(c2, x, sig, noise=PerSampleNoise(range(4)), R=4, K=3, max_rows=5)
    assert torch.equal(a, b)
    # Windows of 4, 4 and 1 steps: 3, 3 and 1 rounds (a 1-step window is exact after 1).
    assert c1.rounds == rp.rmm_parallel_rounds(10, 4, 3) == 1 + (3 + 3 + 1) + 1 < 2 * 10 - 1
    assert c1.nfe(4) == rp.rmm_parallel_nfe(10, 4, 3)
    assert c2.rows == c1.rows and c2.rounds > c1.rounds  # chunks are sequential calls
    # Grid points are never evaluated: only the start, the midpoints and the last denoise.
    inner_calls = torch.cat(seen[1:-1])
    grid_pts = sig[1:-1]
    assert not torch.isin(inner_calls, grid_pts).any()
    # Defaults: K = ceil(log2 d) + 1 = 3 for d = 4, R = floor(3K/2) = 4.
    info = {}
    rp.sample_rmm_parallel(gmm, x, sig, noise=PerSampleNoise(range(4)), info=info)
    assert info == {"R": 4, "K": 3} and rp.default_rounds(64) == 7 and rp.default_rounds(3072) == 13
    res = sl.sample(gmm, "rmm_parallel", steps=10, shape=(4, gmm.dim), dtype=torch.float64)
    assert res.rounds == rp.rmm_parallel_rounds(10, dim=gmm.dim)
    assert res.nfe == rp.rmm_parallel_nfe(10, dim=gmm.dim)
    # Rounds beyond a window's length change nothing (triangular): K = 9 on windows of 4
    # steps is K = 4, bit for bit, at 4/9 of the rounds of an uncapped run.
    c3, c4 = CountingDenoiser(gmm), CountingDenoiser(gmm)
    k9 = rp.sample_rmm_parallel(c3, x, sig, noise=PerSampleNoise(range(4)), R=4, K=9)
    k4 = rp.sample_rmm_parallel(c4, x, sig, noise=PerSampleNoise(range(4)), R=4, K=4)
    assert torch.equal(k9, k4) and c3.rounds == c4.rounds == 1 + (4 + 4 + 1) + 1


def test_parallel_reaches_sequential_error_in_fewer_rounds():
    from samplerlab.analytic import panel

    m = panel("holdout-vp-d64-k8")["holdout-vp-d64-k8"]
    sig = sl.samplers.build_sigmas(m, sl.get_sampler("rmm"), 100)
    x = torch.randn(32, m.dim, generator=torch.Generator().manual_seed(0)) * float(
        (sig[0] ** 2 + 1).sqrt()
    )
    fine = get_sigmas("karras", 400, sigma_min=m.sigma_min, sigma_max=float(sig[0]))
    ref = sl.samplers.sample_edm_heun(m, x, fine)
    err = lambda y: float(((y - ref).pow(2).mean() / ref.pow(2).mean()).sqrt())
    c1, c2 = CountingDenoiser(m), CountingDenoiser(m)
    seq = rmm.sample_rmm(c1, x, sig, noise=PerSampleNoise(range(32)))
    par = rp.sample_rmm_parallel(c2, x, sig, noise=PerSampleNoise(range(32)))
    assert err(par) < 1.1 * err(seq)
    # K = 7 rounds per window of 10 steps (+2), against 2 calls per step sequentially.
    assert c2.rounds == rp.rmm_parallel_rounds(100, dim=64) == 72 < 0.4 * c1.rounds


def test_parallel_corrector(gmm):
    x = 3 * torch.randn(4, gmm.dim, generator=torch.Generator().manual_seed(2))
    sig = karras(8)
    c0, c1 = CountingDenoiser(gmm), CountingDenoiser(gmm)
    plain = rp.sample_rmm_parallel(c0, x, sig, noise=PerSampleNoise(range(4)), R=4, K=3)
    corr = rp.sample_rmm_parallel(
        c1, x, sig, noise=PerSampleNoise(range(4)), R=4, K=3, corrector_steps=2
    )
    assert (plain - corr).abs().max() > 1e-3  # the corrector acts
    # Two window ends (after steps 4 and 7 > 0): each 1 call + K rounds; and a fresh start.
    assert c1.rounds == c0.rounds + 2 * (1 + 3) + 1
    assert torch.isfinite(corr).all()


@pytest.mark.parametrize("name", ["rmm", "rmm_pc", "rmm_parallel"])
def test_batch_equals_row_by_row_and_nfe(gmm, name):
    seeds = [5, 2, 9]
    full = sl.sample(gmm, name, steps=6, shape=(3, gmm.dim), seeds=seeds, dtype=torch.float64)
    rows = [
        sl.sample(gmm, name, steps=6, shape=(1, gmm.dim), seeds=[s], dtype=torch.float64).x
        for s in seeds
    ]
    assert torch.allclose(full.x, torch.cat(rows), atol=1e-12)
    spec = sl.get_sampler(name)
    assert full.nfe == spec.nfe(
        6, {"K": rp.default_rounds(gmm.dim)} if name == "rmm_parallel" else {}
    )
    assert spec.nfe_exact == (name != "rmm_parallel") and not spec.deterministic()


@pytest.mark.parametrize("form", rmm.FORMS)
def test_per_row_grids(gmm, form):
    # Row 2's grid stops at 0.05 (no final denoise step): rows end differently in one call.
    g1, g2 = karras(6), get_sigmas("logsnr", 6, sigma_min=0.05, sigma_max=8.0)[:-1]
    g1 = torch.cat([g1[:3], g1[4:]])  # same length as g2: 6 entries each
    x = 5 * torch.randn(2, gmm.dim, generator=torch.Generator().manual_seed(3))
    for fn in (rmm.sample_rmm, rp.sample_rmm_parallel, rp.rmm_parallel_fixed_point):
        both = fn(gmm, x, torch.stack([g1, g2], 1), noise=PerSampleNoise([1, 2]), form=form)
        a = fn(gmm, x[:1], g1, noise=PerSampleNoise([1]), form=form)
        b = fn(gmm, x[1:], g2, noise=PerSampleNoise([2]), form=form)
        assert torch.allclose(both, torch.cat([a, b]), atol=1e-12)


@pytest.mark.parametrize("name", ["rmm", "rmm_pc"])
def test_gaussian_moments(name):
    from samplerlab.analytic import Gaussian

    mu, s = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.2, 1.0, 0.5])
    g, n = Gaussian(mu, s), 2000
    x = sl.sample(g, name, steps=20, shape=(n, 3), dtype=torch.float64, schedule="karras").x
    assert ((x.mean(0) - mu).abs() < 4 * s / math.sqrt(n)).all()
    assert ((x.var(0) / s**2 - 1).abs() < 4 * math.sqrt(2 / n) + 0.02).all()


def test_corrector_keeps_p_sigma_and_mixes():
    # At a fixed sigma the ULD corrector leaves p_sigma = N(mu, s^2 + sigma^2) (nearly)
    # invariant and pulls a wrong-variance start towards it.
    from samplerlab.analytic import Gaussian

    mu, s = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    g, n, sigma = Gaussian(mu, s), 4000, 1.5
    var = s**2 + sigma**2
    x0 = mu + 3 * var.sqrt() * torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    x = rmm.corrector_uld(
        g,
        x0,
        torch.full((n,), sigma),
        GlobalNoise(torch.Generator().manual_seed(5)),
        steps=40,
        gamma=2.0,
        step_size=0.3,
    )
    assert ((x.mean(0) - mu).abs() < 5 * var.sqrt() / math.sqrt(n)).all()
    assert ((x.var(0) / var - 1).abs() < 5 * math.sqrt(2 / n) + 0.03).all()


def test_bad_input(gmm):
    x = torch.zeros(2, gmm.dim)
    sig = karras(4)
    with pytest.raises(SamplerError, match="form"):
        rmm.sample_rmm(gmm, x, sig, form="heun")
    with pytest.raises(SamplerError, match="R"):
        rp.sample_rmm_parallel(gmm, x, sig, R=0)
    with pytest.raises(SamplerError, match="K"):
        rp.sample_rmm_parallel(gmm, x, sig, K=0)
    with pytest.raises(SamplerError, match="window"):
        rmm.sample_rmm_pc(gmm, x, sig, window=0)
    with pytest.raises(SamplerError, match="gamma"):
        rmm.sample_rmm_pc(gmm, x, sig, gamma=-1.0)
    with pytest.raises(SamplerError, match="max_rows"):
        rp.sample_rmm_parallel(gmm, x, sig, max_rows=0)
