"""``sample()`` and the registry: results, counters, and one clear line for every bad input."""

from __future__ import annotations

import math

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import SAMPLERS, SamplerError, get_sampler, get_sigmas, list_samplers
from samplerlab.samplers.denoisers import EDMDenoiser
from samplerlab.samplers.schedules import ContinuousVP, karras

F64 = torch.float64


def _one_line(exc: pytest.ExceptionInfo, limit: int = 300) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < limit, msg
    return msg


def test_sample_result_fields(gaussian):
    res = sl.sample(gaussian, "edm_heun", steps=6, shape=(3, 4), seeds=[5, 6, 7], dtype=F64)
    assert res.x.shape == (3, 4) and res.x.dtype == F64
    assert res.nfe == 11 and res.rounds == 11
    assert res.sigmas.shape == (7,) and float(res.sigmas[-1]) == 0.0
    assert res.name == "edm_heun" and res.steps == 6 and res.seconds >= 0
    assert float(res.sigmas[0]) == pytest.approx(gaussian.sigma_max)


def test_initial_noise_scale_and_explicit_noise(gaussian):
    """x = z sqrt(sigma0^2 + prior_std^2); the first call of the denoiser sees exactly that."""
    seen = []

    def spy(x, sigma):
        seen.append(x.clone())
        return gaussian(x, sigma)

    spy.sigma_min, spy.sigma_max, spy.prior_std = 0.01, 10.0, 1.0
    z = torch.randn(2, 4, dtype=F64)
    sl.sample(spy, "euler", steps=3, shape=(2, 4), noise=z, dtype=F64)
    assert torch.allclose(seen[0], z * math.sqrt(101.0), rtol=1e-15)
    spy.prior_std = 0.0
    seen.clear()
    sl.sample(spy, "euler", steps=3, shape=(2, 4), noise=z, dtype=F64)
    assert torch.allclose(seen[0], z * 10.0, rtol=1e-15)


def test_schedule_choice_and_override(gaussian):
    spec = SAMPLERS["ddim"]
    res = sl.sample(gaussian, "ddim", steps=4, shape=(1, 4), dtype=F64)
    want = get_sigmas(
        spec.schedule_for(True),
        4,
        sigma_min=gaussian.sigma_min,
        sigma_max=gaussian.sigma_max,
        vp=gaussian.vp,
    )
    assert torch.equal(res.sigmas, want)
    res = sl.sample(
        gaussian,
        "ddim",
        steps=4,
        shape=(1, 4),
        dtype=F64,
        schedule="karras",
        schedule_options={"rho": 3.0, "sigma_max": 20.0},
    )
    assert torch.equal(res.sigmas, karras(4, gaussian.sigma_min, 20.0, rho=3.0))
    grid = torch.tensor([5.0, 1.0, 0.2, 0.0], dtype=F64)
    res = sl.sample(gaussian, "euler", steps=3, shape=(1, 4), dtype=F64, sigmas=grid)
    assert torch.equal(res.sigmas, grid)


def test_list_samplers_and_get_sampler():
    assert set(list_samplers()) == set(SAMPLERS)
    for name in SAMPLERS:
        assert get_sampler(name).name == name
        assert list_samplers()[name]


# ---------------------------------------------------------------------------------------
# Bad input: one line naming what is wrong and the valid choices.
# ---------------------------------------------------------------------------------------


def test_unknown_sampler(gaussian):
    with pytest.raises(SamplerError, match=r"unknown sampler 'eulr'; valid: .*euler") as e:
        sl.sample(gaussian, "eulr", steps=3, shape=(1, 4))
    # One line, though the registry's names alone take ~350 characters.
    assert all(n in _one_line(e, limit=800) for n in SAMPLERS)


def test_unknown_schedule(gaussian):
    with pytest.raises(SamplerError, match=r"unknown schedule 'karas'; valid: karras") as e:
        sl.sample(gaussian, "euler", steps=3, shape=(1, 4), schedule="karas")
    _one_line(e)


def test_unknown_schedule_option(gaussian):
    with pytest.raises(SamplerError, match=r"unknown option 'rhoo' for schedule 'karras'.*rho"):
        sl.sample(gaussian, "euler", steps=3, shape=(1, 4), schedule_options={"rhoo": 3.0})


def test_schedule_needing_a_vp_table():
    den = EDMDenoiser(lambda x, s: x, preconditioned=False, data_shape=(2,))
    with pytest.raises(SamplerError, match=r"needs the model's VP time schedule.*karras") as e:
        sl.sample(den, "euler", steps=3, shape=(1, 2), schedule="time_uniform")
    _one_line(e)
    with pytest.raises(SamplerError, match="discrete alphas_cumprod"):
        get_sigmas("trailing", 3, sigma_min=0.1, sigma_max=10, vp=ContinuousVP())
    with pytest.raises(SamplerError, match="exceeds the table's 1000 timesteps"):
        get_sigmas("trailing", 1001, sigma_min=0.1, sigma_max=10, vp=_table())


def _table():
    from samplerlab.samplers.schedules import DiscreteVP, betas_for

    return DiscreteVP.from_betas(betas_for("linear"))


@pytest.mark.parametrize("steps", [0, -2, 2.5, "4", True, None])
def test_bad_steps(gaussian, steps):
    with pytest.raises(SamplerError, match=r"steps must be an integer >= 1, got") as e:
        sl.sample(gaussian, "euler", steps=steps, shape=(1, 4))
    _one_line(e)


@pytest.mark.parametrize("shape", [(2, 5), (2, 4, 1), (0, 4), (4,), (2, -4)])
def test_bad_shape(gaussian, shape):
    with pytest.raises(SamplerError, match=r"shape") as e:
        sl.sample(gaussian, "euler", steps=3, shape=shape)
    _one_line(e)


def test_shape_names_the_model_shape(gaussian):
    with pytest.raises(SamplerError, match=r"does not match the model: samples must be \(n, 4\)"):
        sl.sample(gaussian, "euler", steps=3, shape=(2, 5))


def test_wrong_number_of_seeds(gaussian):
    with pytest.raises(SamplerError, match="got 3 seeds for 2 samples"):
        sl.sample(gaussian, "euler", steps=3, shape=(2, 4), seeds=[1, 2, 3])


def test_wrong_noise_shape(gaussian):
    with pytest.raises(SamplerError, match=r"noise must be a tensor of shape \(2, 4\), got \(3"):
        sl.sample(gaussian, "euler", steps=3, shape=(2, 4), noise=torch.zeros(3, 4))


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if not s.needs_coeffs])
def test_unknown_option_lists_the_valid_ones(gaussian, name):
    spec = SAMPLERS[name]
    with pytest.raises(
        SamplerError, match=rf"unknown option 'bogus' for sampler '{name}'; valid: "
    ) as e:
        sl.sample(gaussian, name, steps=3, shape=(1, 4), bogus=1)
    valid = str(e.value).split("valid: ", 1)[1]
    for opt in spec.option_names():
        assert opt in valid, opt
    spec.check_options(dict.fromkeys(spec.option_names(), 0))


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        ([1.0, 2.0, 0.0], "strictly decreasing"),
        ([2.0, 2.0, 0.0], "strictly decreasing"),
        ([2.0, 1.0, -0.5], "non-negative"),
        ([2.0, float("nan"), 0.0], "NaN or Inf"),
        ([2.0], r"shape \[N\+1\] or \[N\+1, B\]"),
        ([[[2.0]], [[0.0]]], r"shape \[N\+1\] or \[N\+1, B\]"),
    ],
)
def test_bad_sigmas(gaussian, sigmas, match):
    grid = torch.tensor(sigmas, dtype=F64)
    with pytest.raises(SamplerError, match=match) as e:
        sl.sample(gaussian, "euler", steps=max(1, len(sigmas) - 1), shape=(1, 4), sigmas=grid)
    _one_line(e)
    # The samplers themselves check the grid too.
    with pytest.raises(SamplerError, match=match):
        SAMPLERS["euler"](gaussian, torch.zeros(1, 4, dtype=F64), grid)


def test_sigmas_as_a_list_and_length_mismatch(gaussian):
    res = sl.sample(gaussian, "euler", steps=2, shape=(1, 4), sigmas=[4.0, 1.0, 0.0])
    assert res.nfe == 2
    with pytest.raises(SamplerError, match="sigmas has 2 steps but steps=5"):
        sl.sample(gaussian, "euler", steps=5, shape=(1, 4), sigmas=[4.0, 1.0, 0.0])


def test_per_row_grid_must_match_the_batch(gaussian):
    grid = torch.stack([karras(3, 0.1, 10.0)] * 3, dim=1)
    with pytest.raises(SamplerError, match="per-row sigmas have 3 columns but x has 2 rows"):
        SAMPLERS["euler"](gaussian, torch.zeros(2, 4, dtype=F64), grid)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("ddpm", {"variant": "small"}, "unknown ddpm variant 'small'; valid: posterior"),
        ("ddim", {"eta": -1.0}, "eta must be >= 0"),
        ("edm_heun", {"s_churn": -1.0}, "s_churn and s_noise must be >= 0"),
        ("dpm_solver_3", {"order": 4}, "order must be 1, 2 or 3"),
        ("dpm_solver_3", {"orders": [3, 1]}, "orders has 2 entries for a grid of 3 steps"),
    ],
)
def test_bad_option_values(gaussian, name, options, match):
    with pytest.raises(SamplerError, match=match) as e:
        SAMPLERS[name](gaussian, torch.zeros(1, 4, dtype=F64), karras(3, 0.1, 10.0), **options)
    _one_line(e)


def test_get_sigmas_range_check():
    with pytest.raises(SamplerError, match="need 0 < sigma_min < sigma_max"):
        get_sigmas("karras", 4, sigma_min=1.0, sigma_max=0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if not s.needs_coeffs])
def test_cuda_equals_cpu(gaussian, name):
    """Same seeds on CUDA and CPU give the same samples (noise is drawn on the CPU), through a
    VP wrapper so the table look-ups run on the device too."""
    from samplerlab.samplers.denoisers import from_eps

    def eps_fn(x_vp, t):
        sigma = den.vp.sigma(t)
        x = x_vp * (1 + sigma[:, None] ** 2).sqrt()
        return (x - gaussian(x, sigma)) / sigma[:, None]

    den = from_eps(eps_fn, gaussian.vp.alphas_cumprod, data_shape=(4,))
    kw = {"steps": 6, "shape": (3, 4), "seeds": [1, 2, 3], "dtype": F64}
    opts = dict.fromkeys(SAMPLERS[name].stochastic_options, 1.0)
    cpu = sl.sample(den, name, **kw, **opts)
    gpu = sl.sample(den, name, device="cuda", **kw, **opts)
    assert gpu.x.device.type == "cuda"
    assert torch.allclose(gpu.x.cpu(), cpu.x, rtol=1e-9, atol=1e-9)
    assert gpu.nfe == cpu.nfe


def test_dpm_solver_nfe_rule_counts_explicit_orders(gaussian):
    """With explicit ``orders`` the registry's NFE is what the sampler spends."""
    spec = sl.samplers.get_sampler("dpm_solver_3")
    for orders in ([3, 3, 1], [3, 3, 3], [2, 2], [1, 2, 3]):
        res = sl.sample(
            gaussian, "dpm_solver_3", steps=6, shape=(2, 4), seeds=[0, 1], orders=orders
        )
        assert spec.nfe(6, {"orders": orders}) == res.nfe
    assert spec.nfe(6) == 6  # DPM-Solver-fast: steps = NFE
