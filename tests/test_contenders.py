"""The contenders (UniPC, DEIS, iPNDM, LMS, DPM-Solver++ variants, ancestral and SDE
samplers, adaptive DPM-Solver) against their published update rules on the exact Gaussian,
exact equivalences between them, and the A1111 / diffusers aliases.

The registry-wide tests (test_samplers_exact.py, test_equivalences.py, test_api.py) cover
every new entry too: convergence order as run, accuracy, moments of the stochastic ones,
batch == row by row, chunking, per-row grids, option checking.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import Gaussian
from samplerlab.samplers import SAMPLERS, SamplerError
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import ReplayNoise
from samplerlab.samplers.registry import ALIASES, find_alias
from samplerlab.samplers.schedules import karras
from samplerlab.samplers.sde import sde_coefficients

F64 = torch.float64


def _x(g: Gaussian, sigma0: float, n: int = 64, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, g.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return g.mu + (g.s**2 + sigma0**2).sqrt() * z


def _warm_ladder(n: int, hi: float = 10.0, lo: float = 0.05) -> torch.Tensor:
    """``n`` log-uniform steps from ``hi`` to ``lo`` after two warm-up steps of size
    ``h^2`` (in log sigma): the warm-up's low-order local errors are then O(h^4), so a
    multistep method shows its nominal order instead of the warm-up's."""
    h = math.log(hi / lo) / n
    start = hi * math.exp(-2 * h * h)
    coarse = torch.logspace(math.log10(start), math.log10(lo), n + 1, dtype=F64)
    return torch.cat([torch.tensor([hi, hi * math.exp(-h * h)], dtype=F64), coarse])


# (sampler, options, nominal order): measured on the warm-up ladder, N = 64 -> 128.
NOMINAL = [
    ("dpmpp_3m", {"form": "taylor", "lower_order_final": False}, 3),
    ("deis", {"order": 3, "lower_order_final": False}, 3),
    ("deis", {"order": 2, "lower_order_final": False}, 2),
    ("lms", {"order": 4}, 4),
    ("lms", {"order": 3}, 3),
    ("unipc", {"order": 1, "lower_order_final": False}, 2),  # UniC raises the order by one
    ("unipc", {"order": 2, "lower_order_final": False}, 3),
    ("unipc", {"order": 2, "lower_order_final": False, "corrector": False}, 2),
    ("unipc", {"order": 3, "lower_order_final": False, "corrector": False}, 3),
    ("unipc", {"order": 3, "lower_order_final": False, "variant": "bh1"}, 4),
    ("dpmpp_3m_sde", {"eta": 0.0, "form": "taylor"}, 3),
    ("dpmpp_3m", {"form": "library", "lower_order_final": False}, 2),
    ("dpm_solver_3", {"algorithm": "dpmsolver++", "order": 3}, 3),
    ("dpm_solver_2", {"algorithm": "dpmsolver++", "order": 2}, 2),
    ("dpm_2", {}, 2),
]


@pytest.mark.parametrize(("name", "options", "order"), NOMINAL, ids=[str(c) for c in NOMINAL])
def test_nominal_order_on_a_warm_up_ladder(gaussian, name, options, order):
    """Zhao et al. 2023 (UniC-p raises the order by one), Lu et al. 2022b (3M: 3), the
    Adams-Bashforth orders of LMS and DEIS: log2(err_N / err_2N), N = 64, within 0.35."""
    x = _x(gaussian, 10.0)
    exact = gaussian.ode_solution(x, 10.0, 0.05)
    errs = []
    for n in (32, 64, 128):
        grid = _warm_ladder(n)
        opts = dict(options)
        if name.startswith("dpm_solver"):
            opts["orders"] = [opts.pop("order")] * (len(grid) - 1)
        errs.append(float((SAMPLERS[name](gaussian, x, grid, **opts) - exact).abs().max()))
    rate = math.log2(errs[1] / errs[2])
    assert abs(rate - order) <= 0.35, f"{name} {options}: rate {rate:.2f}, errors {errs}"


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    err = float((a - b).abs().max())
    assert err <= tol * max(1.0, float(b.abs().max())), f"max difference {err:.3e}"


def _draws(n: int, shape, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=F64) for _ in range(n)]


def test_first_order_members_are_ddim(gmm):
    """Every family's first-order member is DDIM = DPM-Solver-1 = Euler in sigma."""
    sigmas = karras(12, 0.01, 80.0)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * 80
    ref = SAMPLERS["ddim"](gmm, x, sigmas)
    _close(SAMPLERS["deis"](gmm, x, sigmas, order=1), ref)
    _close(SAMPLERS["unipc"](gmm, x, sigmas, order=1, corrector=False), ref)
    _close(SAMPLERS["dpm_solver_1"](gmm, x, sigmas, algorithm="dpmsolver++"), ref)
    _close(SAMPLERS["euler"](gmm, x, sigmas), ref)
    # LMS and iPNDM of order 1 are Euler too, but integrate the last step instead of denoising.
    _close(SAMPLERS["lms"](gmm, x, sigmas, order=1), ref)
    _close(SAMPLERS["ipndm"](gmm, x, sigmas, max_order=1), ref)


def test_sde_and_ancestral_samplers_at_eta_0_are_their_odes(gmm):
    sigmas = karras(10, 0.01, 80.0)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 80
    _close(SAMPLERS["dpmpp_2m_sde"](gmm, x, sigmas, eta=0.0), SAMPLERS["dpmpp_2m"](gmm, x, sigmas))
    pp2s = SAMPLERS["dpm_solver_2"](gmm, x, sigmas, orders=[2] * 10, algorithm="dpmsolver++")
    _close(
        SAMPLERS["dpmpp_sde"](gmm, x, sigmas, eta=0.0, noise=ReplayNoise(_draws(18, x.shape))), pp2s
    )
    _close(
        SAMPLERS["dpmpp_2s_ancestral"](
            gmm, x, sigmas, eta=0.0, noise=ReplayNoise(_draws(9, x.shape))
        ),
        pp2s,
    )
    _close(
        SAMPLERS["dpm_2_ancestral"](gmm, x, sigmas, eta=0.0, noise=ReplayNoise(_draws(9, x.shape))),
        SAMPLERS["dpm_2"](gmm, x, sigmas),
    )


def test_euler_ancestral_is_ddim_eta_1_and_churn_0_is_euler(gmm):
    sigmas = karras(10, 0.01, 80.0)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 80
    draws = _draws(10, x.shape)
    a = SAMPLERS["euler_ancestral"](gmm, x, sigmas, noise=ReplayNoise(draws))
    _close(a, SAMPLERS["ddim"](gmm, x, sigmas, eta=1.0, noise=ReplayNoise(draws)))
    _close(SAMPLERS["euler"](gmm, x, sigmas, s_churn=0.0), SAMPLERS["ddim"](gmm, x, sigmas))
    # With churn, the Euler and DPM-2 churn step is EDM's (Karras et al. 2022, Alg. 2).
    draws = _draws(10, x.shape, seed=9)
    a = SAMPLERS["dpm_2"](gmm, x, sigmas, s_churn=5.0, noise=ReplayNoise(draws))
    b = SAMPLERS["edm_heun"](gmm, x, sigmas, s_churn=5.0, noise=ReplayNoise(draws))
    assert float((a - b).abs().max()) < 0.2 * float(b.abs().max()), "same churn, same ballpark"


def _kernel_moment(h: float, eta: float, k: int) -> float:
    """int_0^h (1+eta) e^{-(1+eta)(h-u)} (u/h)^k / k! du by quadrature."""
    integrate = pytest.importorskip("scipy.integrate")

    def f(u: float) -> float:
        return (1 + eta) * math.exp(-(1 + eta) * (h - u)) * (u / h) ** k / math.factorial(k)

    return integrate.quad(f, 0, h, epsabs=0, epsrel=1e-13)[0]


@pytest.mark.parametrize(("h", "eta"), [(0.3, 1.0), (1.2, 1.0), (0.7, 0.0), (0.5, 0.4)])
def test_3m_weights_are_the_exact_integrals(h, eta):
    """The weights of D_s, h D' and h^2 D'' in a DPM-Solver++ (SDE) step are the integrals
    of the kernel (1+eta) e^{-(1+eta)(h-u)} against 1, u/h and (u/h)^2/2 (the SDE step
    expanded to second order); -phi_3 enters with a minus sign. The multistep
    divided difference D2 approximates h^2 D''/2, hence the factor 2 of form="taylor".
    diffusers' sde-dpmsolver++ third-order weight has the wrong sign on its constant (-1/2
    in place of +1/2): it is no oracle for that step."""
    w0, phi_2, phi_3 = (float(v) for v in sde_coefficients(torch.tensor(h, dtype=F64), eta))
    assert w0 == pytest.approx(_kernel_moment(h, eta, 0), rel=1e-10)
    assert phi_2 == pytest.approx(_kernel_moment(h, eta, 1), rel=1e-9)
    assert -phi_3 == pytest.approx(_kernel_moment(h, eta, 2), rel=1e-9)
    if eta == 1.0:
        diffusers_d2 = (1 - math.exp(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5
        assert diffusers_d2 - (-phi_3) == pytest.approx(-1.0, rel=1e-9)


def test_the_library_3m_form_is_second_order(gaussian):
    """The reference code's 3M weight (form="library": diffusers, k-diffusion, DPM-Solver)
    keeps half the second-order Taylor term: globally second order on the warm-up ladder
    (measured 2.07), where form="taylor" is third order (3.28)."""
    x = _x(gaussian, 10.0)
    exact = gaussian.ode_solution(x, 10.0, 0.05)
    sample = functools.partial(SAMPLERS["dpmpp_3m"], lower_order_final=False)
    rates = {}
    for form in ("library", "taylor"):
        e = [
            float((sample(gaussian, x, _warm_ladder(n), form=form) - exact).abs().max())
            for n in (32, 64)
        ]
        rates[form] = math.log2(e[0] / e[1])
    assert abs(rates["library"] - 2) <= 0.3 and abs(rates["taylor"] - 3) <= 0.35, rates


def test_dpmpp_2m_sde_exact_moments_of_one_step():
    """On a point mass (D = mu exactly) one SDE step with eta = 1 from x ~ N(mu, s^2) is the
    exact reverse transition: x_t ~ N(mu, t^2) (mean (t/s)^2 mu + (1 - t^2/s^2) mu, variance
    t^4/s^2 + t^2 (1 - t^2/s^2))."""
    g = Gaussian(torch.tensor([0.7, -0.2], dtype=F64), torch.tensor([1e-8, 1e-8], dtype=F64))
    n, s, t = 40_000, 5.0, 1.5
    x = g.mu + s * torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    for name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        y = SAMPLERS[name](
            g, x, torch.tensor([s, t], dtype=F64), noise=ReplayNoise(_draws(1, x.shape))
        )
        assert bool(((y.mean(0) - g.mu).abs() < 5 * t / math.sqrt(n)).all()), name
        assert bool(((y.var(0) / t**2 - 1).abs() < 5 * math.sqrt(2 / n)).all()), name


def test_dpmpp_sde_noise_is_one_brownian_path():
    """The two stage noises of DPM++ SDE are increments of one Brownian path: their
    correlation is sqrt((sigma - s) / (sigma - sigma_next)) (k-diffusion's Brownian tree)."""
    calls = []

    def spy(x, sigma):
        calls.append(x.clone())
        return torch.zeros_like(x)  # D = 0: the state is pure noise, the draws show through

    n = 20_000
    x = torch.zeros(n, 1, dtype=F64)
    sigmas = torch.tensor([2.0, 1.0], dtype=F64)
    g = torch.Generator().manual_seed(8)
    from samplerlab.samplers.noise import GlobalNoise

    out = SAMPLERS["dpmpp_sde"](spy, x, sigmas, noise=GlobalNoise(g))
    mid, s1 = calls[1][:, 0], 2.0 * math.exp(-0.5 * math.log(2.0))
    # D = 0: x_2 = up1 * n1, x = up2 * n2 (both ancestral steps start from x = 0).
    up1 = s1 * math.sqrt(1 - s1**2 / 4)
    up2 = 1.0 * math.sqrt(1 - 1 / 4)
    corr = float(torch.corrcoef(torch.stack([mid / up1, out[:, 0] / up2]))[0, 1])
    assert corr == pytest.approx(math.sqrt((2.0 - s1) / (2.0 - 1.0)), abs=0.02)


def test_dpm_adaptive_reports_the_realised_nfe_and_tightens_with_tolerance(gaussian):
    """Tighter tolerances: smaller error to the exact ODE state (a grid ending at 0.05, no
    denoise step), more NFE; ``sample()`` reports the realised NFE of the rows evaluated."""
    x = _x(gaussian, 10.0, n=32)
    exact = gaussian.ode_solution(x, 10.0, 0.05)
    grid = torch.logspace(1, math.log10(0.05), 3, dtype=F64)  # 2 steps: the step cap
    errs, nfes = [], []
    for rtol in (0.05, 1e-3, 1e-5):
        counter = CountingDenoiser(gaussian)
        out = SAMPLERS["dpm_adaptive"](counter, x, grid, rtol=rtol, atol=rtol / 10)
        errs.append(float((out - exact).abs().max()))
        nfes.append(counter.rows / 32)
    assert errs[2] < errs[1] / 10 < errs[0] / 10, errs
    assert nfes[2] > nfes[1] > nfes[0] >= 3 * 2, nfes  # at least one attempt per capped step
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    res = sl.sample(gaussian, "dpm_adaptive", steps=6, shape=z.shape, noise=z, rtol=1e-3)
    counter = CountingDenoiser(gaussian)
    SAMPLERS["dpm_adaptive"](
        counter, z * math.sqrt(float(res.sigmas[0]) ** 2 + 1), res.sigmas, rtol=1e-3
    )
    assert res.nfe == counter.rows / 4


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("unipc", {"variant": "bh3"}, "unknown UniPC variant 'bh3'; valid: bh1, bh2"),
        ("unipc", {"order": 4}, "order must be 1, 2 or 3"),
        ("deis", {"order": 0}, "order must be 1, 2 or 3"),
        ("lms", {"order": 5}, "order must be 1, 2, 3 or 4"),
        ("ipndm", {"max_order": 5}, "max_order must be 1, 2, 3 or 4"),
        ("euler_ancestral", {"eta": 1.5}, r"eta must be in \[0, 1\]"),
        ("dpmpp_sde", {"r": 1.0}, r"r must be in \(0, 1\)"),
        ("dpmpp_2m_sde", {"eta": -1.0}, "eta and s_noise must be >= 0"),
        ("dpm_2", {"s_churn": -1.0}, "s_churn and s_noise must be >= 0"),
        ("dpm_solver_2", {"algorithm": "sde"}, "unknown DPM-Solver algorithm 'sde'"),
        ("dpm_adaptive", {"rtol": 0.0}, "rtol and atol must be > 0"),
        ("dpmpp_3m", {"form": "diffusers"}, "unknown 3M form 'diffusers'; valid: taylor, library"),
    ],
)
def test_bad_option_values(gaussian, name, options, match):
    with pytest.raises(SamplerError, match=match):
        SAMPLERS[name](gaussian, torch.zeros(1, 4, dtype=F64), karras(3, 0.1, 10.0), **options)


# ---------------------------------------------------------------------------------------
# Aliases.
# ---------------------------------------------------------------------------------------


def test_every_alias_names_a_sampler_with_valid_options_and_runs(gmm):
    for name, alias in ALIASES.items():
        assert alias.sampler in SAMPLERS, name
        SAMPLERS[alias.sampler].check_options(alias.options)
        res = sl.sample(gmm, name, steps=4, shape=(2, 4), seeds=[0, 1], dtype=F64)
        assert res.name == alias.sampler and bool(torch.isfinite(res.x).all()), name


def test_alias_equals_its_sampler_options_and_grid(gmm):
    kw = {"steps": 8, "shape": (3, 4), "seeds": [4, 5, 6], "dtype": F64}
    a = sl.sample(gmm, "DPM++ 2M Karras", **kw)
    b = sl.sample(gmm, "dpmpp_2m", schedule="karras", **kw)
    _close(a.x, b.x, tol=0)
    a = sl.sample(gmm, "UniPCMultistepScheduler", **kw)
    b = sl.sample(
        gmm,
        "unipc",
        order=2,
        variant="bh2",
        lower_order_final=True,
        schedule="linspace",
        schedule_options={"final": "replace"},
        **kw,
    )
    _close(a.x, b.x, tol=0)
    # Case and spacing are ignored; the caller's options and schedule win over the alias's.
    assert find_alias("dpm++ 2m  karras") == "DPM++ 2M Karras"
    assert find_alias("euler_a") == "Euler a"
    c = sl.sample(gmm, "euler a", **kw, schedule="karras", eta=0.0)
    _close(c.x, sl.sample(gmm, "ddim", schedule="karras", **kw).x)


def test_unknown_name_suggests_the_alias(gmm):
    with pytest.raises(SamplerError, match="did you mean 'DPM\\+\\+ 2M Karras'"):
        sl.sample(gmm, "DPM++ 2M Karas", steps=3, shape=(1, 4))


def test_cli_lists_the_aliases(capsys):
    from samplerlab.cli import main

    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    for name in (
        "unipc",
        "dpmpp_3m_sde",
        '"DPM++ 2M Karras"',
        '"Euler a"',
        '"UniPCMultistepScheduler"',
    ):
        assert name in out
