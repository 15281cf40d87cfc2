from __future__ import annotations

import itertools

import pytest
import torch
from helpers_parallel import sample_paradigms

import samplerlab.samplers as ss
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import PerSampleNoise

N = 20


def _x(gmm, n=3, steps=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    sig = ss.get_sigmas("karras", steps, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(n, gmm.dim, generator=g, dtype=torch.float64) * float(sig[0])
    return x, sig


@pytest.mark.parametrize("inner", ["ddim", "euler", "edm_heun", "dpm_solver_3", "dpmpp_2m"])
def test_tol_zero_equals_serial(gmm, inner):
    x, sig = _x(gmm)
    ref = ss.get_sampler(inner)(gmm, x, sig)
    out = sample_paradigms(gmm, x, sig, inner=inner, tol=0.0, window=6)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "inner, opts", [("ddpm", {}), ("ddpm", {"variant": "sde"}), ("ddim", {"eta": 0.7})]
)
def test_stochastic_inner_same_seeds(gmm, inner, opts):
    x, sig = _x(gmm, n=2)
    ref = ss.get_sampler(inner)(gmm, x, sig, noise=PerSampleNoise([3, 9]), **opts)
    out = sample_paradigms(
        gmm, x, sig, noise=PerSampleNoise([3, 9]), inner=inner, inner_options=opts, tol=0.0
    )
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    other = ss.get_sampler(inner)(gmm, x, sig, noise=PerSampleNoise([4, 10]), **opts)
    assert (other - ref).abs().max() > 1e-3  # the noise matters (the test can fail)


def test_window_never_advances_more_than_window(gmm):
    x, sig = _x(gmm, steps=40)
    for window in (1, 3, 8):
        info = {}
        sample_paradigms(gmm, x, sig, window=window, tol=0.5, info=info)
        per_sample = list(zip(*info["windows"], strict=True))
        for wins in per_sample:
            for (b0, e0), (b1, _) in itertools.pairwise(wins):
                assert 0 <= b1 - b0 <= window and e0 - b0 <= window
        if window == 1:
            assert max(info["iterations"]) == 40  # window 1 is the serial sampler


def test_tol_positive_fewer_rounds_small_error(gmm):
    x, sig = _x(gmm, steps=50)
    ref = ss.sample_ddim(gmm, x, sig)
    c = CountingDenoiser(gmm)
    out = sample_paradigms(c, x, sig, window=16, tol=1e-3)
    assert c.rounds < 50 / 2
    rel = ((out - ref).pow(2).mean() / ref.pow(2).mean()).sqrt()
    assert rel < 1e-3
    # A looser tolerance costs fewer rounds.
    c2 = CountingDenoiser(gmm)
    sample_paradigms(c2, x, sig, window=16, tol=1e-1)
    assert c2.rounds < c.rounds


def _rel(a, ref):
    return ((a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max()


@pytest.mark.parametrize("inner", ["ddim", "edm_heun", "dpmpp_2m"])
def test_error_vs_serial_bounded_by_tol(gmm, inner):
    # A state is accepted when its relative change between iterates is <= tol; accepted
    # states carry errors of that order, which add up along the trajectory: the final
    # per-sample relative error against the serial solve stays below a few tol (measured
    # <= 3 tol on the analytic mixtures at N <= 200).
    x, sig = _x(gmm, n=16, steps=64, seed=4)
    ref = ss.get_sampler(inner)(gmm, x, sig)
    for tol in (1e-2, 1e-3, 1e-4):
        c = CountingDenoiser(gmm)
        out = sample_paradigms(c, x, sig, inner=inner, tol=tol)
        assert _rel(out, ref) <= 4 * tol, (tol, float(_rel(out, ref)))
        assert c.rounds < (2 * 64 - 1 if inner == "edm_heun" else 64)


def test_multistep_history_from_neighbours(gmm):
    # dpmpp_2m inside: the window's first state takes the D of its predecessor from the
    # buffer, so tol=0 is the serial multistep solve for every window size; a first-order
    # restart at each window start (the reference's variant) would differ.
    x, sig = _x(gmm)
    ref = ss.sample_dpmpp_2m(gmm, x, sig)
    for window in (1, 3, 7, 20):
        out = sample_paradigms(gmm, x, sig, inner="dpmpp_2m", tol=0.0, window=window)
        assert torch.allclose(out, ref, atol=1e-12, rtol=0), window
    # The history matters: DDIM (first order everywhere) is far from it.
    assert (ss.sample_ddim(gmm, x, sig) - ref).abs().max() > 1e-3


def test_chunked_and_batch_invariance(gmm):
    x, sig = _x(gmm, n=3)
    full = sample_paradigms(gmm, x, sig, tol=1e-3, window=5)
    chunk = sample_paradigms(gmm, x, sig, tol=1e-3, window=5, max_rows=4)
    assert torch.allclose(full, chunk, atol=1e-12, rtol=0)
    rows = torch.cat(
        [sample_paradigms(gmm, x[k : k + 1], sig, tol=1e-3, window=5) for k in range(3)]
    )
    assert torch.allclose(full, rows, atol=1e-12, rtol=0)


def test_deterministic_flag():
    spec = ss.get_sampler("paradigms")
    assert spec.deterministic()
    assert not spec.deterministic({"inner": "ddpm"})
    assert not spec.deterministic({"inner": "ddim", "inner_options": {"eta": 1.0}})
    assert spec.deterministic({"inner": "edm_heun"})
    assert not spec.nfe_exact


@pytest.mark.parametrize(
    "opts, msg",
    [
        ({"window": 0}, "window must be an integer >= 1"),
        ({"tol": -0.1}, "tol must be a finite number >= 0"),
        ({"tol": "x"}, "tol must be a number >= 0"),
        ({"inner": "dpmpp_2m", "inner_options": {"lower_order_final": True}}, "not supported"),
        ({"inner": "nope"}, "unknown or unsupported inner solver 'nope'; valid: euler, ddim"),
        ({"inner": "srds"}, "unknown or unsupported inner solver 'srds'"),
        ({"inner": "edm_heun", "inner_options": {"s_churn": 2.0}}, "deterministic inner solver"),
        ({"inner_options": {"eta": 1.0, "zzz": 1}}, "unknown option 'zzz' for sampler 'ddim'"),
        ({"max_rows": 0}, "max_rows must be an integer >= 1"),
    ],
)
def test_bad_input(gmm, opts, msg):
    x, sig = _x(gmm)
    with pytest.raises(ss.SamplerError) as e:
        sample_paradigms(gmm, x, sig, **opts)
    assert msg in str(e.value)
