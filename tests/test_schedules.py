"""Sigma grids, VP time schedules, DPM-Solver-fast orders and the registry's NFE formula."""

from __future__ import annotations

import math

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import SAMPLERS
from samplerlab.samplers.dpm_solver import dpm_solver_fast_orders
from samplerlab.samplers.schedules import (
    SCHEDULES,
    ContinuousVP,
    DiscreteVP,
    betas_for,
    get_sigmas,
    karras,
    logsnr,
    time_quadratic,
    time_uniform,
)

F64 = torch.float64
TABLE = DiscreteVP.from_betas(betas_for("linear"))
VPS = {
    "discrete": TABLE,
    "linear": ContinuousVP("linear"),
    "cosine": ContinuousVP("cosine"),
}


def _decreasing_to_zero(s: torch.Tensor, n: int) -> None:
    assert s.dtype == F64 and s.shape == (n + 1,)
    assert float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())


@pytest.mark.parametrize("n", [1, 2, 5, 18])
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras(n, rho):
    s = karras(n, 0.002, 80.0, rho=rho)
    _decreasing_to_zero(s, n)
    assert float(s[0]) == pytest.approx(80.0, rel=1e-14)
    if n > 1:
        assert float(s[-2]) == pytest.approx(0.002, rel=1e-12)
        # Uniform in sigma^(1/rho).
        steps = s[:-1] ** (1 / rho)
        diffs = steps[1:] - steps[:-1]
        assert torch.allclose(diffs, diffs[0].expand_as(diffs), rtol=1e-10)


def test_karras_rho_shapes_the_grid():
    """Larger rho concentrates steps at low sigma (EDM eq. 5)."""
    mid = [float(karras(9, 0.002, 80.0, rho=r)[4]) for r in (1.0, 3.0, 7.0)]
    assert mid[0] > mid[1] > mid[2]
    assert mid[0] == pytest.approx((80.0 + 0.002) / 2)


@pytest.mark.parametrize("n", [1, 4, 10])
def test_logsnr(n):
    s = logsnr(n, 0.01, 50.0)
    _decreasing_to_zero(s, n)
    assert float(s[0]) == pytest.approx(50.0, rel=1e-14)
    if n > 1:
        lam = -s[:-1].log()
        diffs = lam[1:] - lam[:-1]
        assert torch.allclose(diffs, diffs[0].expand_as(diffs), rtol=1e-10)
        assert float(s[-2]) == pytest.approx(0.01, rel=1e-12)


@pytest.mark.parametrize("vp_name", list(VPS))
@pytest.mark.parametrize("kind", ["time_uniform", "time_quadratic"])
def test_time_grids(vp_name, kind):
    vp, n = VPS[vp_name], 12
    s = (time_uniform if kind == "time_uniform" else time_quadratic)(n, 0.0, 0.0, vp=vp)
    _decreasing_to_zero(s, n)
    t = vp.t(s[:-1])
    assert float(t[0]) == pytest.approx(vp.t_max, abs=1e-9)
    assert float(t[-1]) == pytest.approx(vp.t_min, abs=1e-9)
    u = t if kind == "time_uniform" else t.sqrt()
    diffs = u[1:] - u[:-1]
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), rtol=1e-8)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_continuous_vp_round_trip_and_formula(kind):
    vp = ContinuousVP(kind)
    t = torch.linspace(vp.t_min, vp.t_max, 101, dtype=F64)
    sigma = vp.sigma(t)
    assert bool((sigma[1:] > sigma[:-1]).all())
    assert torch.allclose(vp.t(sigma), t, rtol=1e-10, atol=1e-12)
    abar = 1 / (1 + sigma**2)
    if kind == "linear":  # log abar = -(beta_min t + (beta_max - beta_min) t^2 / 2)
        ref = -(0.1 * t + 0.5 * 19.9 * t**2)
    else:  # abar = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)
        f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        ref = (f(t) / f(torch.zeros_like(t))).log()
    assert torch.allclose(abar.log(), ref, rtol=1e-10, atol=1e-12)
    assert vp.sigma_min == pytest.approx(float(sigma[0]))
    assert vp.sigma_max == pytest.approx(float(sigma[-1]))


def test_discrete_vp_exact_on_table_and_log_interpolated_between():
    table = TABLE.sigmas
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(TABLE.sigma(k.to(F64)), table[k])
    assert torch.allclose(TABLE.t(table[k]), k.to(F64), rtol=0, atol=1e-9)
    # In between: linear in log sigma.
    t = torch.tensor([0.25, 17.5, 998.9], dtype=F64)
    lo = t.floor().long()
    w = t - lo
    ref = ((1 - w) * table[lo].log() + w * table[lo + 1].log()).exp()
    assert torch.allclose(TABLE.sigma(t), ref, rtol=1e-12)
    assert torch.allclose(TABLE.t(ref), t, atol=1e-9)
    # Out of range clamps to the table's ends.
    assert float(TABLE.t(torch.tensor([1e-9], dtype=F64))) == 0.0
    assert float(TABLE.t(torch.tensor([1e9], dtype=F64))) == pytest.approx(999.0)
    assert TABLE.sigma_min == float(table[0]) and TABLE.sigma_max == float(table[-1])


def test_discrete_vp_rejects_bad_tables():
    with pytest.raises(sl.SamplerError, match="strictly decreasing"):
        DiscreteVP(torch.tensor([0.9, 0.95, 0.5], dtype=F64))
    with pytest.raises(sl.SamplerError, match=r"values in \(0, 1\)"):
        DiscreteVP(torch.tensor([1.0, 0.5], dtype=F64))
    with pytest.raises(sl.SamplerError, match="valid: linear, cosine"):
        ContinuousVP("quadratic")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(kind):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(beta_schedule=kind).betas.double()
    assert torch.allclose(betas_for(kind), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_through_get_sigmas(name):
    s = get_sigmas(name, 7, sigma_min=TABLE.sigma_min, sigma_max=TABLE.sigma_max, vp=TABLE)
    _decreasing_to_zero(s, 7)
    assert TABLE.sigma_min * (1 - 1e-9) <= float(s[-2])
    assert float(s[0]) <= TABLE.sigma_max * (1 + 1e-9)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpm_solver_fast_orders(order):
    for nfe in range(1, 40):
        orders = dpm_solver_fast_orders(nfe, order)
        assert sum(orders) == nfe, (nfe, orders)
        assert orders[-1] == 1
        assert all(1 <= k <= order for k in orders)
        if order > 1 and nfe >= 3 * order:
            assert orders[0] == order


def test_dpm_solver_fast_orders_follow_the_paper():
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4), with a final order-k step split into order
    k-1 plus the denoise."""
    # paper's allocation in the comment
    assert dpm_solver_fast_orders(9, 3) == [3, 3, 2, 1]  # [3, 3, 2, 1]
    assert dpm_solver_fast_orders(10, 3) == [3, 3, 3, 1]  # [3, 3, 3, 1]
    assert dpm_solver_fast_orders(11, 3) == [3, 3, 3, 1, 1]  # [3, 3, 3, 2]
    assert dpm_solver_fast_orders(6, 2) == [2, 2, 1, 1]  # [2, 2, 2]
    assert dpm_solver_fast_orders(7, 2) == [2, 2, 2, 1]  # [2, 2, 2, 1]


def _nfe_cases():
    out = []
    for name, spec in SAMPLERS.items():
        if spec.needs_coeffs or not spec.nfe_exact:
            continue
        out.append((name, {}))
        out += [(name, {opt: 1.0}) for opt in spec.stochastic_options]
    return out


@pytest.mark.parametrize(("name", "options"), _nfe_cases())
def test_registry_nfe_equals_realised(gmm, name, options):
    spec = SAMPLERS[name]
    for steps in (1, 2, 3, 5, 8):
        res = sl.sample(gmm, name, steps=steps, shape=(2, gmm.dim), dtype=F64, **options)
        assert res.nfe == spec.nfe(steps), (name, steps, res.nfe)
        assert len(res.sigmas) - 1 == spec.plan(steps)[0]
