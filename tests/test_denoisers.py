"""Denoiser wrappers: prediction-type conversions, EDM preconditioning, counting, chunking,
NaN detection."""

from __future__ import annotations

import math

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import SamplerError
from samplerlab.samplers.denoisers import (
    ChunkedDenoiser,
    ClippedDenoiser,
    CountingDenoiser,
    EDMDenoiser,
    FiniteCheckDenoiser,
    NonFiniteError,
    VPDenoiser,
    chunked,
    from_eps,
    from_v,
    from_x0,
)
from samplerlab.samplers.schedules import ContinuousVP, karras

F64 = torch.float64


def _vp_model(gaussian, vp, kind: str, time_scale: float = 1.0):
    """A VP network ``f(x_vp, t)`` built from the exact denoiser."""

    def f(x_vp, t):
        sigma = vp.sigma(t.to(F64) / time_scale)
        alpha = (1 + sigma**2).rsqrt()[:, None]
        x = x_vp / alpha
        x0 = gaussian(x, sigma)
        eps = (x - x0) / sigma[:, None]
        if kind == "epsilon":
            return eps
        if kind == "v_prediction":  # v = alpha eps - sigma_vp x0
            return alpha * eps - alpha * sigma[:, None] * x0
        return x0

    return f


def _points(gaussian, n: int = 32):
    g = torch.Generator().manual_seed(0)
    sigma = torch.exp(torch.empty(n, dtype=F64).uniform_(-4, 4.5, generator=g))  # off-table too
    x = (
        gaussian.mu
        + torch.randn(n, gaussian.dim, generator=g, dtype=F64)
        * (gaussian.s**2 + sigma[:, None] ** 2).sqrt()
    )
    return x, sigma


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_reproduce_the_exact_denoiser(gaussian, kind):
    x, sigma = _points(gaussian)
    make = {"epsilon": from_eps, "v_prediction": from_v, "sample": from_x0}[kind]
    den = make(_vp_model(gaussian, gaussian.vp, kind), gaussian.vp.alphas_cumprod)
    assert den.prediction_type == kind and den.prior_std == 1.0
    assert torch.allclose(den(x, sigma), gaussian(x, sigma), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_continuous_vp_with_time_scale(gaussian, kind, schedule):
    vp = ContinuousVP(schedule)
    x, sigma = _points(gaussian)
    sigma = sigma.clamp(vp.sigma_min, vp.sigma_max)
    den = VPDenoiser(
        _vp_model(gaussian, vp, kind, 1000.0), vp, prediction_type=kind, time_scale=1000.0
    )
    assert torch.allclose(den(x, sigma), gaussian(x, sigma), rtol=1e-9, atol=1e-9)
    assert den.sigma_min == vp.sigma_min and den.sigma_max == vp.sigma_max


def test_vp_denoiser_feeds_the_model_vp_coordinates(gaussian):
    seen = {}

    def f(x_vp, t):
        seen["x"], seen["t"] = x_vp, t
        return torch.zeros_like(x_vp)

    den = from_eps(f, gaussian.vp.alphas_cumprod, quantize=True)
    table = gaussian.vp.sigmas
    sigma = table[torch.tensor([10, 500])] * torch.tensor([1.0001, 0.9999], dtype=F64)
    x = torch.ones(2, 4, dtype=F64)
    out = den(x, sigma)
    assert seen["t"].dtype == torch.long and seen["t"].tolist() == [10, 500]
    assert torch.allclose(seen["x"], x * (1 + sigma[:, None] ** 2).rsqrt())
    assert torch.equal(out, x)  # eps = 0 -> x0 = x


def test_clipping(gaussian):
    f = lambda x_vp, t: torch.zeros_like(x_vp)
    den = from_x0(lambda x_vp, t: 5 * torch.ones_like(x_vp), gaussian.vp.alphas_cumprod)
    den_clip = VPDenoiser(den.model_fn, gaussian.vp, prediction_type="sample", clip_denoised=True)
    x, sigma = torch.zeros(2, 4, dtype=F64), torch.tensor([1.0, 2.0], dtype=F64)
    assert float(den(x, sigma).max()) == 5.0 and float(den_clip(x, sigma).max()) == 1.0
    clipped = ClippedDenoiser(from_eps(f, gaussian.vp.alphas_cumprod), -0.5, 0.5)
    assert float(clipped(3 * torch.ones(2, 4, dtype=F64), sigma).max()) == 0.5
    assert torch.equal(clipped.vp.alphas_cumprod, gaussian.vp.alphas_cumprod)  # forwarded
    assert clipped.prior_std == 1.0


def test_edm_preconditioning_formula():
    calls = {}

    def net(x_in, c_noise):
        calls["x_in"], calls["c_noise"] = x_in, c_noise
        return torch.full_like(x_in, 2.0)

    sd = 0.5
    den = EDMDenoiser(net, sigma_data=sd, data_shape=(3,))
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 1.0]], dtype=F64)
    sigma = torch.tensor([0.3, 7.0], dtype=F64)
    out = den(x, sigma)
    for k in range(2):
        s = float(sigma[k])
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / math.sqrt(s**2 + sd**2)
        c_in = 1 / math.sqrt(s**2 + sd**2)
        assert torch.allclose(out[k], c_skip * x[k] + c_out * 2.0, rtol=1e-14)
        assert torch.allclose(calls["x_in"][k], c_in * x[k], rtol=1e-14)
        assert float(calls["c_noise"][k]) == pytest.approx(math.log(s) / 4, rel=1e-14)
    assert den.prior_std == 0.0 and den.vp is None
    raw = EDMDenoiser(lambda x, s: x * 0 + s[:, None], preconditioned=False)
    assert torch.equal(raw(x, sigma)[:, 0], sigma)


def test_edm_denoiser_is_exact_with_an_exact_network(gaussian):
    """Invert the preconditioning of the exact denoiser: the wrapper must give D back."""
    sd = 0.5

    def net(x_in, c_noise):
        s = torch.exp(4 * c_noise)[:, None]
        x = x_in * (s**2 + sd**2).sqrt()
        return (gaussian(x, s[:, 0]) - sd**2 / (s**2 + sd**2) * x) / (
            s * sd / (s**2 + sd**2).sqrt()
        )

    x, sigma = _points(gaussian)
    den = EDMDenoiser(net, sigma_data=sd)
    assert torch.allclose(den(x, sigma), gaussian(x, sigma), rtol=1e-10, atol=1e-10)


def test_counting_denoiser(gaussian):
    counter = CountingDenoiser(gaussian)
    x = torch.zeros(5, 4, dtype=F64)
    sl.SAMPLERS["edm_heun"](counter, x, karras(4, 0.01, 10.0))
    assert counter.rounds == 7 and counter.rows == 35 and counter.nfe(5) == 7
    assert counter.vp is gaussian.vp and counter.data_shape == (4,)
    counter.reset()
    assert counter.rounds == counter.rows == 0
    # Counting outside a chunked denoiser: one round, all rows; inside: one round per chunk.
    inner = CountingDenoiser(gaussian)
    outer = CountingDenoiser(chunked(inner, 2))
    outer(x, torch.ones(5, dtype=F64))
    assert (outer.rounds, outer.rows) == (1, 5)
    assert (inner.rounds, inner.rows) == (3, 5)


def test_sample_reports_rounds_and_nfe_for_per_row_work(gaussian):
    res = sl.sample(gaussian, "dpm_solver_3", steps=9, shape=(3, 4), dtype=F64)
    assert res.nfe == 9 and res.rounds == 9


def test_chunked_denoiser_checks_and_passes_through(gaussian):
    assert chunked(gaussian, None) is gaussian
    for bad in (0, -1, 2.5, None):
        with pytest.raises(SamplerError, match="max_rows must be an integer >= 1"):
            ChunkedDenoiser(gaussian, bad)
    x, sigma = _points(gaussian, 7)
    assert torch.equal(chunked(gaussian, 3)(x, sigma), gaussian(x, sigma))


def _nan_below(gaussian, threshold: float):
    def den(x, sigma):
        out = gaussian(x, sigma)
        bad = (sigma < threshold)[:, None]
        return torch.where(bad, torch.full_like(out, float("nan")), out)

    den.sigma_min, den.sigma_max, den.prior_std = 0.01, 10.0, 1.0
    return den


def test_nan_raises_naming_sampler_and_round(gaussian):
    den = _nan_below(gaussian, 1.0)
    grid = karras(8, 0.01, 10.0)
    first_bad = int((grid[:-1] < 1.0).nonzero()[0]) + 1  # 1-based round of Euler
    with pytest.raises(NonFiniteError, match=rf"sampler 'euler': round {first_bad} \(sigma") as e:
        sl.sample(den, "euler", steps=8, shape=(2, 4), dtype=F64)
    assert "network output is not finite" in str(e.value)
    assert isinstance(e.value, FloatingPointError)


def test_nan_in_the_state_is_named_too(gaussian):
    check = FiniteCheckDenoiser(gaussian, label="sampler 'x'")
    x = torch.zeros(2, 4, dtype=F64)
    check(x, torch.ones(2, dtype=F64))
    x[1, 2] = float("inf")
    with pytest.raises(NonFiniteError, match=r"sampler 'x': round 2 .*state entering the network"):
        check(x, torch.ones(2, dtype=F64))


def test_unknown_prediction_type(gaussian):
    with pytest.raises(SamplerError, match="unknown prediction_type 'eps'; valid: epsilon"):
        VPDenoiser(lambda x, t: x, gaussian.vp, prediction_type="eps")
    with pytest.raises(SamplerError, match="DiscreteVP table or a ContinuousVP"):
        VPDenoiser(lambda x, t: x, "linear")


def test_vp_denoiser_half_precision_keeps_timesteps_on_the_table():
    """In bf16 the schedule math stays float32: t = 999 must not round to 1000."""
    from samplerlab.samplers.denoisers import from_eps
    from samplerlab.samplers.schedules import DiscreteVP

    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    den = from_eps(eps_fn, ac, quantize=True)
    sigma = DiscreteVP(ac).sigma(torch.tensor([999.0, 500.0], dtype=torch.float64))
    x = torch.ones(2, 3, dtype=torch.bfloat16)
    out = den(x, sigma)
    assert out.dtype == torch.bfloat16
    assert seen[-1].tolist() == [999, 500]
    # float32 input: unchanged arithmetic (the same t as a float32 call always gave).
    den(x.float(), sigma)
    assert seen[-1].tolist() == [999, 500]
