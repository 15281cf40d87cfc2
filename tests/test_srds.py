from __future__ import annotations

import pytest
import torch
from helpers_parallel import sample_srds, serial_blockwise, srds_iterates

import samplerlab as sl
import samplerlab.samplers as ss
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import PerSampleNoise

N = 16
B = 4
DEFAULT_BLOCKS = [2, 5, 8, 25, 64, 1]


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


@pytest.mark.parametrize("pipelined", [False, True])
def test_multistep_inner_converges_to_plain_serial(gmm, pipelined):
    # dpmpp_2m carries its history across block boundaries: SRDS after B iterations is
    # the plain serial dpmpp_2m (not the block-restarted run).
    x, sig = _x(gmm)
    ref = _serial(gmm, x, sig, "dpmpp_2m")
    assert torch.allclose(serial_blockwise(gmm, x, sig, inner="dpmpp_2m", blocks=B), ref)
    out = sample_srds(gmm, x, sig, inner="dpmpp_2m", blocks=B, tol=0.0, pipelined=pipelined)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    # The block-restarted run is measurably different (the test can fail).
    K, y = N // B, x
    for i in range(B):
        y = ss.sample_dpmpp_2m(gmm, y, sig[i * K : (i + 1) * K + 1])
    assert (y - ref).abs().max() > 1e-6
    # Boundary states are exact after p iterations, with the history (plain schedule).
    exact = [x]
    states = ss.sample_dpmpp_2m  # serial prefix runs give the exact boundary states
    for i in range(1, B + 1):
        exact.append(states(gmm, x, sig[: i * K + 1]))
    for p, its in enumerate(srds_iterates(gmm, x, sig, inner="dpmpp_2m", blocks=B)):
        for i in range(p + 1):
            assert (its[i] - exact[i]).abs().max() < 1e-12, (p, i)


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
    for inner, tol in (("ddim", 0.0), ("ddim", 1e-4), ("edm_heun", 0.0), ("dpmpp_2m", 1e-4)):
        c1, c2 = CountingDenoiser(gmm), CountingDenoiser(gmm)
        i1, i2 = {}, {}
        a = sample_srds(c1, x, sig, inner=inner, blocks=B, tol=tol, pipelined=False, info=i1)
        b = sample_srds(c2, x, sig, inner=inner, blocks=B, tol=tol, pipelined=True, info=i2)
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
        assert i1["iterations"] == i2["iterations"]
        assert c2.rounds < c1.rounds, (inner, tol, c1.rounds, c2.rounds)


def test_rounds_and_nfe_plain_formula_first_call_shared(gmm):
    # Coarse init B rounds; iteration p: K - 1 fine rounds (the first sub-step's call is
    # G's, already made) + (B - p) coarse rounds.
    x, sig = _x(gmm)
    c = CountingDenoiser(gmm)
    sample_srds(c, x, sig, blocks=B, tol=0.0, pipelined=False)
    K = N // B
    assert c.rounds == B + sum(K - 1 + B - p for p in range(1, B + 1))
    # Rows: B coarse steps, then per iteration (B - p + 1) fine solves of K - 1 calls and
    # B - p coarse steps (without sharing: K calls per fine solve).
    rows = B + sum((B - p + 1) * (K - 1) + (B - p) for p in range(1, B + 1))
    assert c.nfe(x.shape[0]) == rows


def test_pipelined_shares_first_call(gmm):
    # Pipelined, tol=0, ddim: every state x_i^p gets G and (for p < B) F; F's first call
    # is G's. Count the calls of an unshared run by hand-free comparison: the shared run
    # evaluates exactly one row fewer per (state, F) pair.
    x, sig = _x(gmm, n=1)
    c = CountingDenoiser(gmm)
    sample_srds(c, x, sig, blocks=B, tol=0.0, pipelined=True)
    K = N // B
    # States x_i^p with i < B, p <= min(i, B): each runs G (1 row); those with p < B run
    # F (K rows, the first shared). x_i^p exists for p <= i.
    states = [(i, p) for i in range(B) for p in range(0, i + 1)]
    rows = sum(1 + ((K - 1) if p < B else 0) for i, p in states)
    assert c.rows == rows


def test_pipelined_critical_path(gmm):
    # Full B iterations pipelined: about (B+1) K + O(B) rounds, below serial + B.
    sig = ss.get_sigmas("karras", 64, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(2, gmm.dim, dtype=torch.float64) * float(sig[0])
    c = CountingDenoiser(gmm)
    out = sample_srds(c, x, sig, blocks=8, tol=0.0, pipelined=True)
    assert torch.allclose(out, ss.sample_ddim(gmm, x, sig), atol=1e-12)
    assert c.rounds <= 64 + 2 * 8


def _rel(a, ref):
    return ((a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max()


@pytest.mark.parametrize("inner", ["ddim", "edm_heun", "dpmpp_2m"])
def test_error_vs_serial_bounded_by_tol(gmm, inner):
    # The stop test: relative change ||x_B^p - x_B^{p-1}|| / ||x_B^p|| < tol per sample.
    # Parareal converges superlinearly, so the error of the stopped iterate against the
    # serial equivalent is below the last change: per-sample relative error <= tol.
    sig = ss.get_sigmas("karras", 64, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(16, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = x * float(sig[0])
    ref = serial_blockwise(gmm, x, sig, inner=inner, blocks=8)
    for tol in (1e-2, 1e-3, 1e-4):
        info = {}
        out = sample_srds(gmm, x, sig, inner=inner, blocks=8, tol=tol, info=info)
        assert _rel(out, ref) <= tol, (tol, float(_rel(out, ref)))
        assert max(info["iterations"]) < 8  # it stopped early
    # The last change really is what is tested: stopping at the cap is exact instead.
    assert _rel(sample_srds(gmm, x, sig, inner=inner, blocks=8, tol=0.0), ref) < 1e-12


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
    assert not ss.get_sampler("srds").deterministic({"inner": "ddpm"})
    assert not ss.get_sampler("srds").deterministic({"inner_options": {"eta": 0.5}})
    assert ss.get_sampler("srds").deterministic({"inner": "edm_heun"})


def test_chunked_and_batch_invariance(gmm):
    x, sig = _x(gmm, n=3)
    full = sample_srds(gmm, x, sig, blocks=B, tol=1e-5, pipelined=True)
    chunk = sample_srds(gmm, x, sig, blocks=B, tol=1e-5, pipelined=True, max_rows=3)
    assert torch.allclose(full, chunk, atol=1e-12, rtol=0)
    rows = torch.cat([sample_srds(gmm, x[k : k + 1], sig, blocks=B, tol=1e-5) for k in range(3)])
    assert torch.allclose(full, rows, atol=1e-12, rtol=0)


def test_via_sample_api(gmm):
    res = sl.sample(gmm, "srds", steps=16, shape=(2, gmm.dim), dtype=torch.float64, tol=0.0)
    # The serial DDIM solve on DDIM's own default grid (SRDS takes its inner solver's).
    ref = sl.sample(gmm, "ddim", steps=16, shape=(2, gmm.dim), dtype=torch.float64)
    assert torch.equal(res.sigmas, ref.sigmas)
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


def test_multistep_without_history_step_cannot_pipeline(gmm, monkeypatch):
    import dataclasses

    from samplerlab.samplers.registry import SAMPLERS

    # A multistep registry entry without history_step (as a newly registered solver).
    spec = dataclasses.replace(SAMPLERS["dpmpp_2m"], name="ms_new", history_step=None)
    monkeypatch.setitem(SAMPLERS, "ms_new", spec)
    x, sig = _x(gmm)
    ref = serial_blockwise(gmm, x, sig, inner="ms_new", blocks=B)
    out = sample_srds(gmm, x, sig, inner="ms_new", blocks=B, tol=0.0, pipelined=False)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    # Its stated equivalent: the solver restarted at each block start, computed directly.
    K, y = N // B, x
    for i in range(B):
        y = ss.sample_dpmpp_2m(gmm, y, sig[i * K : (i + 1) * K + 1])
    assert torch.allclose(ref, y, atol=1e-12, rtol=0)
    with pytest.raises(ss.SamplerError, match="'ms_new' is multistep and its registry entry has"):
        sample_srds(gmm, x, sig, inner="ms_new", blocks=B, pipelined=True)


def test_default_blocks():
    from samplerlab.samplers.srds import default_blocks

    assert [default_blocks(n) for n in (4, 10, 16, 100, 1024, 7)] == DEFAULT_BLOCKS


def _history_inners():
    from samplerlab.samplers.registry import SAMPLERS

    return [n for n, s in SAMPLERS.items() if s.can_be_inner() and s.history_step is not None]


@pytest.mark.parametrize("inner", _history_inners())
def test_multistep_coarse_solve_is_the_serial_run_on_the_coarse_grid(gmm, inner):
    # G of a multistep solver continues the coarse history (the previous block starts and
    # their D): the coarse initialisation (max_iters=0) is the solver's serial run on the
    # B-step coarse grid, exactly, pipelined or not; and pipelining leaves the iterates, hence
    # the stopped result and iteration counts, unchanged at tol > 0.
    x, sig = _x(gmm, n=4, seed=3)
    coarse = _serial(gmm, x, sig[:: N // B], inner)
    for pipelined in (False, True):
        out = sample_srds(
            gmm, x, sig, inner=inner, blocks=B, tol=0.0, max_iters=0, pipelined=pipelined
        )
        assert torch.allclose(out, coarse, atol=1e-12, rtol=0), pipelined
    first = sample_srds(gmm, x, sig, inner="ddim", blocks=B, tol=0.0, max_iters=0)
    assert (first - coarse).abs().max() > 1e-6  # not a first-order coarse solve
    runs = []
    for pipelined in (False, True):
        info = {}
        out = sample_srds(
            gmm, x, sig, inner=inner, blocks=B, tol=1e-3, pipelined=pipelined, info=info
        )
        runs.append((out, info["iterations"]))
    assert runs[0][1] == runs[1][1] and torch.allclose(runs[0][0], runs[1][0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("pipelined", [False, True])
def test_max_iters_below_blocks_warns_about_unconverged_samples(gmm, pipelined, recwarn):
    # A cap below B returns the samples it stops unconverged: counted in info and warned
    # about (never silently); at the default cap (B: exact) and with tol=0 (a fixed
    # iteration count asked for) nothing is said.
    sig = ss.get_sigmas("karras", 64, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(16, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = x * float(sig[0])
    kw = {"inner": "ddim", "blocks": 8, "pipelined": pipelined}
    full: dict = {}
    ref = sample_srds(gmm, x, sig, tol=1e-3, info=full, **kw)
    assert full["unconverged"] == 0 and len(recwarn) == 0
    cap = 3
    slow = torch.tensor(full["iterations"]) > cap  # these have not converged by the cap
    assert 0 < int(slow.sum()) < 16  # the test can fail both ways
    info: dict = {}
    with pytest.warns(UserWarning, match=rf"srds: {int(slow.sum())} of 16 samples .*max_iters=3"):
        out = sample_srds(gmm, x, sig, tol=1e-3, max_iters=cap, info=info, **kw)
    assert info["unconverged"] == int(slow.sum())
    # The samples that converged by the cap are the same; the others are earlier iterates.
    assert torch.equal(out[~slow], ref[~slow])
    assert (out[slow] - ref[slow]).abs().max() > 0
    recwarn.clear()
    sample_srds(gmm, x, sig, tol=0.0, max_iters=cap, **kw)
    assert len(recwarn) == 0
