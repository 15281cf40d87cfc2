from __future__ import annotations

import pytest
import torch

import samplerlab as sl
import samplerlab.samplers as ss
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.srds import sample_srds, serial_blockwise, srds_iterates

N = 16
B = 4


def _x(gmm, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sig = ss.get_sigmas("karras", N, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(n, gmm.dim, generator=g, dtype=torch.float64) * float(sig[0])
    return x, sig


def _serial(gmm, x, sig, inner, **opts):
    spec = ss.get_sampler(inner)
    return spec(gmm, x.clone(), sig, **opts)


@pytest.mark.parametrize("inner", ["ddim", "edm_heun", "euler", "dpm_solver_2"])
def test_exact_after_B_iterations_single_step(gmm, inner):
    x, sig = _x(gmm)
    ref = _serial(gmm, x, sig, inner)
    out = sample_srds(gmm, x, sig, inner=inner, blocks=B, tol=0.0)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    # The coarse solve alone is far from it (the test can fail).
    coarse = sample_srds(gmm, x, sig, inner=inner, blocks=B, tol=0.0, max_iters=0)
    assert (coarse - ref).abs().max() > 1e-4


def test_exact_multistep_inner_block_restarted(gmm):
    x, sig = _x(gmm)
    ref = serial_blockwise(gmm, x, sig, inner="dpmpp_2m", blocks=B)
    out = sample_srds(gmm, x, sig, inner="dpmpp_2m", blocks=B, tol=0.0)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    # With one block the fine solve is the plain serial multistep run.
    one = serial_blockwise(gmm, x, sig, inner="dpmpp_2m", blocks=1)
    assert torch.allclose(one, _serial(gmm, x, sig, "dpmpp_2m"), atol=1e-12, rtol=0)


def test_serial_blockwise_equals_serial_for_single_step(gmm):
    x, sig = _x(gmm)
    for inner in ("ddim", "edm_heun"):
        ref = _serial(gmm, x, sig, inner)
        assert torch.allclose(serial_blockwise(gmm, x, sig, inner=inner, blocks=B), ref, atol=1e-12)


def test_boundary_states_exact_at_iteration_p(gmm):
    x, sig = _x(gmm)
    K = N // B
    # Serial boundary states.
    exact = [x]
    for i in range(B):
        exact.append(ss.sample_ddim(gmm, exact[-1], sig[i * K : (i + 1) * K + 1]))
    its = srds_iterates(gmm, x, sig, blocks=B)
    assert len(its) == B + 1
    for p, states in enumerate(its):
        for i in range(B + 1):
            err = (states[i] - exact[i]).abs().max()
            if i <= p:
                assert err < 1e-12, (p, i)
            elif i == p + 1 and p < B:
                assert err > 1e-8, (p, i)  # not yet exact


def test_pipelined_equals_plain_with_fewer_rounds(gmm):
    x, sig = _x(gmm)
    for inner, tol in (("ddim", 0.0), ("ddim", 1e-4), ("edm_heun", 0.0)):
        c1, c2 = CountingDenoiser(gmm), CountingDenoiser(gmm)
        i1, i2 = {}, {}
        a = sample_srds(c1, x, sig, inner=inner, blocks=B, tol=tol, info=i1)
        b = sample_srds(c2, x, sig, inner=inner, blocks=B, tol=tol, pipelined=True, info=i2)
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
        assert i1["iterations"] == i2["iterations"]
        assert c2.rounds < c1.rounds, (inner, tol, c1.rounds, c2.rounds)


def test_rounds_plain_formula(gmm):
    # Coarse init B rounds; iteration p: K fine rounds + (B - p) coarse rounds.
    x, sig = _x(gmm)
    c = CountingDenoiser(gmm)
    sample_srds(c, x, sig, blocks=B, tol=0.0)
    K = N // B
    assert c.rounds == B + sum(K + B - p for p in range(1, B + 1))


def test_pipelined_critical_path(gmm):
    # Full B iterations pipelined: about (B+1) K + O(B) rounds, below serial + B.
    sig = ss.get_sigmas("karras", 64, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(2, gmm.dim, dtype=torch.float64) * float(sig[0])
    c = CountingDenoiser(gmm)
    out = sample_srds(c, x, sig, blocks=8, tol=0.0, pipelined=True)
    assert torch.allclose(out, ss.sample_ddim(gmm, x, sig), atol=1e-12)
    assert c.rounds <= 64 + 2 * 8


def test_early_stop_and_accuracy(gmm):
    sig = ss.get_sigmas("karras", 64, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(3, gmm.dim, dtype=torch.float64) * float(sig[0])
    ref = _serial(gmm, x, sig, "ddim")
    info = {}
    out = sample_srds(gmm, x, sig, blocks=8, tol=1e-5, info=info)
    assert 2 <= max(info["iterations"]) < 8
    assert (out - ref).abs().max() < 1e-5


def test_stochastic_inner_matches_serial_seeds(gmm):
    x, sig = _x(gmm, n=2)
    for inner, opts in (("ddpm", {}), ("ddim", {"eta": 1.0})):
        ref = ss.get_sampler(inner)(gmm, x, sig, noise=PerSampleNoise([5, 6]), **opts)
        for pipelined in (False, True):
            out = sample_srds(
                gmm,
                x,
                sig,
                noise=PerSampleNoise([5, 6]),
                inner=inner,
                inner_options=opts,
                blocks=B,
                tol=0.0,
                pipelined=pipelined,
            )
            assert torch.allclose(out, ref, atol=1e-12), (inner, pipelined)
    assert not ss.get_sampler("srds").is_deterministic({"inner": "ddpm"})
    assert not ss.get_sampler("srds").is_deterministic({"inner_options": {"eta": 0.5}})
    assert ss.get_sampler("srds").is_deterministic({"inner": "edm_heun"})


def test_chunked_and_batch_invariance(gmm):
    x, sig = _x(gmm, n=3)
    full = sample_srds(gmm, x, sig, blocks=B, tol=1e-5, pipelined=True)
    chunk = sample_srds(gmm, x, sig, blocks=B, tol=1e-5, pipelined=True, max_rows=3)
    assert torch.allclose(full, chunk, atol=1e-12, rtol=0)
    rows = torch.cat([sample_srds(gmm, x[k : k + 1], sig, blocks=B, tol=1e-5) for k in range(3)])
    assert torch.allclose(full, rows, atol=1e-12, rtol=0)


def test_via_sample_api(gmm):
    res = sl.sample(gmm, "srds", steps=16, shape=(2, gmm.dim), dtype=torch.float64, tol=0.0)
    ref = sl.sample(gmm, "ddim", steps=16, shape=(2, gmm.dim), dtype=torch.float64)
    assert torch.allclose(res.x, ref.x, atol=1e-12)
    assert res.nfe > ref.nfe


@pytest.mark.parametrize(
    "opts, msg",
    [
        (
            {"blocks": 5},
            "blocks=5 does not divide the N=16 steps of the grid; valid: 1, 2, 4, 8, 16",
        ),
        ({"blocks": 0}, "blocks must be an integer >= 1"),
        ({"tol": -1.0}, "tol must be a finite number >= 0"),
        ({"inner": "nope"}, "unknown or unsupported inner solver 'nope'"),
        ({"inner": "edm_heun", "inner_options": {"s_churn": 1.0}}, "deterministic inner solver"),
        ({"inner": "dpmpp_2m", "pipelined": True}, "single-step inner solver"),
        ({"inner_options": {"bogus": 1}}, "unknown option 'bogus'"),
        ({"max_iters": -1}, "max_iters must be an integer >= 0"),
        ({"max_rows": 0}, "max_rows must be an integer >= 1"),
    ],
)
def test_bad_input(gmm, opts, msg):
    x, sig = _x(gmm)
    with pytest.raises(ss.SamplerError) as e:
        sample_srds(gmm, x, sig, **opts)
    assert msg in str(e.value)


def test_default_blocks():
    from samplerlab.samplers.srds import default_blocks

    assert [default_blocks(n) for n in (4, 10, 16, 100, 1024, 7)] == [2, 2, 4, 10, 32, 1]
