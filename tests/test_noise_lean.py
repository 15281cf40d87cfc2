"""Lean sampling loops: grid-only work once per call, the same numbers as step by step, and
no per-sample work on the per-step path (op counts do not grow with the batch)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import samplerlab as sl
from samplerlab.samplers import SAMPLERS, pmm
from samplerlab.samplers import core as core_mod
from samplerlab.samplers.core import Grid, append_dims, to_d
from samplerlab.samplers.ddpm import ddpm_coefficients
from samplerlab.samplers.denoisers import from_eps
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.schedules import DiscreteVP, betas_for

F64 = torch.float64


class CountingVP:
    """A VP table that counts its ``t`` look-ups (everything else forwarded)."""

    def __init__(self, vp: DiscreteVP) -> None:
        self.inner, self.calls = vp, 0

    def t(self, sigma):
        self.calls += 1
        return self.inner.t(sigma)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def eps_denoiser():
    table = torch.cumprod(1 - betas_for("linear"), 0)
    return from_eps(lambda x, t: 0.3 * x + 1e-3 * t[:, None], table)


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_vp_lookups_once_per_grid_same_numbers(monkeypatch, inference, per_row):
    den = eps_denoiser()
    sig = sl.samplers.build_sigmas(den, SAMPLERS["ddim"], 20)
    if per_row:
        sig = torch.stack([sig, sig * 0.7], 1)
    x = torch.randn(2, 3, dtype=F64) * 80
    with torch.inference_mode(inference):
        counting = CountingVP(den.vp)
        den.vp = counting
        fast = SAMPLERS["ddim"](den, x, sig)
        assert counting.calls == 2, "one direct look-up, then one for the whole grid"
        # Without the grid registry every call computes its own look-ups: same numbers.
        monkeypatch.setattr(sl.samplers.denoisers, "grid_positions", lambda s: None)
        slow = SAMPLERS["ddim"](den, x, sig)
        assert counting.calls == 2 + 20
    assert torch.equal(fast, slow)


def test_a_changed_grid_is_looked_up_again():
    den = eps_denoiser()
    x = torch.randn(3, 2, dtype=F64)
    g = Grid(torch.tensor([50.0, 10.0, 1.0, 0.0], dtype=F64), x)
    den(x, g.dev[0]), den(x, g.dev[1])  # the second call caches the grid's look-ups
    g.compact.mul_(0.5)  # an in-place change: the version counter moves
    assert torch.equal(den(x, g.dev[1]), den(x, g.dev[1].clone()))
    # Views of something that is not a live grid are computed directly.
    other = torch.tensor([7.0, 3.0], dtype=F64)[:, None].expand(-1, 3)
    assert core_mod.grid_positions(other[1]) is None


@pytest.mark.parametrize("per_row", [False, True])
def test_per_step_equals_step_by_step(per_row):
    s = sl.samplers.get_sigmas("karras", 9, sigma_min=0.01, sigma_max=80.0)
    if per_row:
        s = torch.stack([s, s * 0.5, s * 0.25], 1)
    g = Grid(s, torch.zeros(3, 2, dtype=F64))
    for variant in ("posterior", "fixed_large", "sde"):
        A, G, Gm = g.per_step(lambda a, b, v=variant: ddpm_coefficients(a, b, v))
        for i, sigma, sigma_next in g:
            for got, want in zip(
                (A, G, Gm), ddpm_coefficients(sigma, sigma_next, variant), strict=True
            ):
                assert torch.equal(got[i], want)


def test_pmm_unit_chain_equals_the_generic_step(gmm):
    """The running-sum PMM step (A = 1) is the generic recursion, many midpoints per row."""
    K, B = 9, 6
    sig = sl.samplers.get_sigmas("karras", 30, sigma_min=0.01, sigma_max=10.0)[8 : 8 + K + 1]
    sig = sig[:, None].expand(-1, B)
    x = 2 * torch.randn(B, gmm.dim, dtype=F64)
    z = torch.randn(K, B, gmm.dim, dtype=F64)
    H = torch.rand(B, K, generator=torch.Generator().manual_seed(3)) < 0.6
    H[:, 0] = False
    assert int(H.sum(1).max()) >= 4
    A, G, Gm = ddpm_coefficients(sig[:-1], sig[1:], "posterior")
    b0 = to_d(x, sig[0], gmm(x, sig[0]))

    def drift(pts, rows, sub):
        s = sig[sub, rows]
        return to_d(pts, s, gmm(pts, s))

    a = lambda v: append_dims(v, x.ndim)
    W = torch.stack([a(Gm[i]) * z[i] for i in range(K)])
    ref = pmm.poisson_midpoint_step(
        drift, x, b0, lambda i, s: a(A[i]) * s, lambda i, b: a(G[i]) * b, W, H, float(K)
    )
    got = pmm._unit_midpoint_step(drift, x, b0, G, Gm, z, H, float(K))
    for g_, r_ in zip(got, ref, strict=True):
        torch.testing.assert_close(g_, r_, rtol=1e-12, atol=1e-12)


class OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _ops(gmm, name, batch, **opts) -> int:
    grid_steps, planned = SAMPLERS[name].plan(6, opts)
    sig = sl.samplers.build_sigmas(gmm, SAMPLERS[name], grid_steps)
    x = torch.randn(batch, gmm.dim, dtype=F64) * float(sig[0])
    src = PerSampleNoise(range(batch))
    with OpCount() as c:
        SAMPLERS[name](gmm, x, sig, noise=src, **{**planned, **opts})
    return c.n


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("ddpm", {}),
        ("ddim", {"eta": 0.5}),
        ("edm_heun", {"s_churn": 1.0}),
        ("rmm", {}),
        ("rmm_pc", {}),
        ("rmm_parallel", {}),
        ("srds", {"inner": "ddpm", "tol": 0.0}),
        ("paradigms", {"inner": "ddpm", "tol": 0.0, "window": 3}),
    ],
)
def test_no_per_sample_work_on_the_step_path(gmm, name, opts):
    """The kernels a sampler launches do not depend on how many samples it carries."""
    assert _ops(gmm, name, 2, **opts) == _ops(gmm, name, 24, **opts)


def test_pmm_kernels_do_not_grow_with_the_batch(gmm):
    """PMM's midpoint bookkeeping is per sub-step, not per sample: bounded kernel count."""
    small, big = _ops(gmm, "pmm", 4, K=5), _ops(gmm, "pmm", 400, K=5)
    assert big <= 1.5 * small
