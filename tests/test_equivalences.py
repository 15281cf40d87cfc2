"""Exact equivalences between samplers and between ways of running them (float64).

Parametrised over the registry: every sampler (entries that need fitted coefficients are
skipped) with its default options and with each of its stochastic options switched on.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import SAMPLERS, PerSampleNoise, ReplayNoise
from samplerlab.samplers.api import build_sigmas
from samplerlab.samplers.ddim import step_ddim
from samplerlab.samplers.ddpm import step_ddpm
from samplerlab.samplers.denoisers import CountingDenoiser, chunked
from samplerlab.samplers.schedules import karras

F64 = torch.float64


def _cases() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for name, spec in SAMPLERS.items():
        if spec.needs_coeffs:
            continue
        out.append((name, {}))
        out += [(name, {opt: 1.0}) for opt in spec.stochastic_options]
    if "ddpm" in SAMPLERS:
        out += [("ddpm", {"variant": v}) for v in ("fixed_large", "sde")]
    return out


CASES = _cases()
IDS = [f"{n}-{o}" if o else n for n, o in CASES]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    err = float((a - b).abs().max())
    assert err <= tol * max(1.0, float(b.abs().max())), f"max difference {err:.3e}"


def _start(den, sigma0: float, n: int, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, den.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return z * math.sqrt(sigma0**2 + 1)


# ---------------------------------------------------------------------------------------
# Sampler equivalences.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("final_zero", [True, False])
def test_ddim_eta0_equals_euler_equals_dpm_solver_1(gmm, final_zero):
    sigmas = karras(12, 0.01, 80.0)
    if not final_zero:
        sigmas = sigmas[:-1]
    x = _start(gmm, 80.0, 16)
    a = SAMPLERS["ddim"](gmm, x, sigmas, eta=0.0)
    b = SAMPLERS["euler"](gmm, x, sigmas)
    c = SAMPLERS["dpm_solver_1"](gmm, x, sigmas)
    d = SAMPLERS["dpm_solver_3"](gmm, x, sigmas, orders=[1] * (len(sigmas) - 1))
    _close(a, b)
    _close(c, b)
    _close(d, b)


def test_ddim_eta1_equals_ddpm_posterior(gmm):
    sigmas = build_sigmas(gmm, SAMPLERS["ddpm"], 15)
    x = _start(gmm, float(sigmas[0]), 16)
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn(16, gmm.dim, generator=g, dtype=F64) for _ in range(15)]
    a = SAMPLERS["ddim"](gmm, x, sigmas, eta=1.0, noise=ReplayNoise(draws))
    b = SAMPLERS["ddpm"](gmm, x, sigmas, variant="posterior", noise=ReplayNoise(draws))
    _close(a, b)
    # ... and the noise matters (the test would catch a sampler that ignores it).
    c = SAMPLERS["ddpm"](gmm, x, sigmas, noise=ReplayNoise([-d for d in draws]))
    assert float((c - b).abs().max()) > 1e-3


def test_ddpm_variants_differ_and_draw_one_noise_per_step(gmm):
    sigmas = build_sigmas(gmm, SAMPLERS["ddpm"], 6)
    x = _start(gmm, float(sigmas[0]), 4)
    draws = [torch.randn(4, gmm.dim, dtype=F64) for _ in range(6)]
    outs = {}
    for v in ("posterior", "fixed_large", "sde"):
        replay = ReplayNoise(draws)
        outs[v] = SAMPLERS["ddpm"](gmm, x, sigmas, variant=v, noise=replay)
        assert replay._next == 6, "one randn_like per step, also on the final step"
    assert float((outs["posterior"] - outs["fixed_large"]).abs().max()) > 1e-4
    assert float((outs["posterior"] - outs["sde"]).abs().max()) > 1e-4


def test_dpmpp_2m_first_step_is_dpmpp_1(gmm):
    """One step of DPM-Solver++(2M) is DPM-Solver++-1 = DDIM (exponential integrator)."""
    sigmas = torch.tensor([10.0, 2.0], dtype=F64)
    x = _start(gmm, 10.0, 8)
    _close(SAMPLERS["dpmpp_2m"](gmm, x, sigmas), SAMPLERS["ddim"](gmm, x, sigmas))


def test_edm_heun_churn_zero_is_deterministic_heun(gmm):
    sigmas = karras(8, 0.01, 80.0)
    x = _start(gmm, 80.0, 8)
    a = SAMPLERS["edm_heun"](gmm, x, sigmas, s_churn=0.0, noise=ReplayNoise([]))
    b = SAMPLERS["edm_heun"](gmm, x, sigmas)
    _close(a, b, 0.0)
    # Churn outside [s_tmin, s_tmax] is no churn either (noise is drawn but not used).
    draws = [torch.randn(8, gmm.dim, dtype=F64) for _ in range(8)]
    c = SAMPLERS["edm_heun"](gmm, x, sigmas, s_churn=5.0, s_tmin=1e3, noise=ReplayNoise(draws))
    _close(c, b, 0.0)


# ---------------------------------------------------------------------------------------
# Ways of running the same sampler.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_chunked_equals_unchunked(gmm, name, options):
    a = sl.sample(gmm, name, steps=6, shape=(5, gmm.dim), seeds=range(5), dtype=F64, **options)
    b = sl.sample(
        chunked(gmm, 2), name, steps=6, shape=(5, gmm.dim), seeds=range(5), dtype=F64, **options
    )
    _close(b.x, a.x)
    assert a.nfe == b.nfe


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_batch_equals_row_by_row(gmm, name, options):
    seeds = [11, 3, 42, 7]
    batch = sl.sample(gmm, name, steps=5, shape=(4, gmm.dim), seeds=seeds, dtype=F64, **options)
    for k, seed in enumerate(seeds):
        row = sl.sample(gmm, name, steps=5, shape=(1, gmm.dim), seeds=[seed], dtype=F64, **options)
        _close(batch.x[k : k + 1], row.x)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_same_seed_same_sample_in_any_batch(gmm, name, options):
    a = sl.sample(gmm, name, steps=5, shape=(3, gmm.dim), seeds=[1, 2, 3], dtype=F64, **options)
    b = sl.sample(gmm, name, steps=5, shape=(4, gmm.dim), seeds=[3, 9, 1, 8], dtype=F64, **options)
    _close(b.x[2], a.x[0])
    _close(b.x[0], a.x[2])
    assert float((b.x[1] - a.x[1]).abs().max()) > 1e-6, "different seeds, different samples"


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_per_row_grids_equal_separate_runs(gmm, name, options):
    """A grid ``[N+1, B]`` gives each row what its own 1-D grid gives it."""
    spec = SAMPLERS[name]
    grid_steps, planned = spec.plan(6)
    cols = [
        karras(grid_steps, 0.01, 80.0),
        karras(grid_steps, 0.05, 20.0, rho=3.0),
        karras(grid_steps, 0.002, 5.0, rho=9.0),
    ]
    sigmas = torch.stack(cols, dim=1)
    seeds = [4, 5, 6]
    x = torch.stack(
        [_start(gmm, float(c[0]), 1, seed=s)[0] for c, s in zip(cols, seeds, strict=True)]
    )
    counter = CountingDenoiser(gmm)
    out = spec(counter, x, sigmas, noise=PerSampleNoise(seeds), **planned, **options)
    for k, (col, seed) in enumerate(zip(cols, seeds, strict=True)):
        row = spec(gmm, x[k : k + 1], col, noise=PerSampleNoise([seed]), **planned, **options)
        _close(out[k : k + 1], row)
    if spec.nfe_exact:
        # Per-row grids cost what the registry says (NFE per sample = rows / batch).
        assert counter.rows == pytest.approx(spec.nfe(6) * 3), "realised NFE != registry NFE"


def test_per_row_grid_mixed_final_rows(gmm):
    """One row's grid ends at 0 while another's ends at sigma_min > 0: the higher-order
    steps must treat the final rows as denoise steps and the others normally."""
    ends_zero = karras(6, 0.01, 80.0)
    ends_pos = torch.cat([karras(6, 0.02, 40.0)[:-1], torch.tensor([0.005], dtype=F64)])
    sigmas = torch.stack([ends_zero, ends_pos], dim=1)
    x = torch.stack([_start(gmm, 80.0, 1, 1)[0], _start(gmm, 40.0, 1, 2)[0]])
    for name, spec in SAMPLERS.items():
        if spec.needs_coeffs or not spec.deterministic():
            continue
        out = spec(gmm, x, sigmas)  # registry defaults (fixed order for DPM-Solver)
        for k in range(2):
            row = spec(gmm, x[k : k + 1], sigmas[:, k])
            assert float((out[k : k + 1] - row).abs().max()) <= 1e-12, (name, k)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_sample_with_per_row_grid_equals_row_by_row(gmm, name, options):
    """``sample(sigmas=[N+1, B])``: each row starts at its own sigma_0 and ends where a
    separate ``sample`` call with its 1-D grid and seed ends."""
    grid_steps, _ = SAMPLERS[name].plan(5)
    cols = [karras(grid_steps, 0.01, 80.0), karras(grid_steps, 0.02, 3.0, rho=4.0)]
    seeds = [8, 9]
    kw = {"steps": 5, "dtype": F64, **options}
    res = sl.sample(gmm, name, shape=(2, gmm.dim), seeds=seeds, sigmas=torch.stack(cols, 1), **kw)
    for k in range(2):
        row = sl.sample(gmm, name, shape=(1, gmm.dim), seeds=seeds[k : k + 1], sigmas=cols[k], **kw)
        _close(res.x[k : k + 1], row.x)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ddim", {"eta": 0.5}),
        ("edm_heun", {"s_churn": 2.0}),
        ("ddpm", {"variant": "posterior"}),
        ("ddpm", {"variant": "fixed_large"}),
        ("ddpm", {"variant": "sde"}),
    ],
)
def test_single_step_samplers_draw_one_noise_per_step(gmm, name, options):
    """The convention parallel samplers rely on: exactly one ``randn_like`` per step, also
    on the final step, so pre-drawn noise replays the serial run."""
    sigmas = karras(7, 0.01, 80.0)
    x = _start(gmm, 80.0, 3)
    g = torch.Generator().manual_seed(2)
    draws = [torch.randn(3, gmm.dim, generator=g, dtype=F64) for _ in range(7)]
    replay = ReplayNoise(draws)
    out = SAMPLERS[name](gmm, x, sigmas, noise=replay, **options)
    assert replay._next == 7
    # The loop is the composition of the public step functions fed with the same draws.
    if name == "edm_heun":
        return
    y = x
    for i in range(7):
        s, s_next = sigmas[i : i + 1].expand(3), sigmas[i + 1 : i + 2].expand(3)
        if name == "ddim":
            y = step_ddim(gmm, y, s, s_next, eta=options["eta"], z=draws[i])
        else:
            y = step_ddpm(gmm, y, s, s_next, draws[i], variant=options["variant"])
    _close(y, out)


def test_ddim_noise_level_is_the_vp_formula():
    """sigma_up in EDM coordinates is DDIM's sigma_ts / sqrt(abar_s) (Song et al. eq. 16)."""
    from samplerlab.samplers.ddim import ancestral_sigmas

    sigma = torch.tensor([80.0, 3.0, 0.5, 0.1], dtype=F64)
    sigma_next = torch.tensor([20.0, 1.0, 0.2, 0.0], dtype=F64)
    abar_t, abar_s = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    for eta in (0.0, 0.3, 0.5, 1.0):
        sigma_ts = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
        down, up = ancestral_sigmas(sigma, sigma_next, eta)
        _close(up, sigma_ts / abar_s.sqrt())
        # The deterministic part: sqrt(1 - abar_s - sigma_ts^2) / sqrt(abar_s).
        _close(down, ((1 - abar_s - sigma_ts**2) / abar_s).sqrt())


@pytest.mark.parametrize("s_churn", [0.5, 100.0])
def test_edm_churn_step_by_hand(gmm, s_churn):
    """EDM Alg. 2: gamma = min(S_churn / N, sqrt(2) - 1), x_hat = x + sqrt(sh^2 - s^2) S_noise z,
    then a Heun step from sh (Euler on the final step)."""
    from samplerlab.samplers.edm import step_heun

    sigmas = torch.tensor([10.0, 2.0, 0.0], dtype=F64)
    x = _start(gmm, 10.0, 3)
    draws = [torch.randn(3, gmm.dim, dtype=F64) for _ in range(2)]
    out = SAMPLERS["edm_heun"](
        gmm, x, sigmas, s_churn=s_churn, s_noise=1.007, noise=ReplayNoise(draws)
    )
    gamma = min(s_churn / 2, math.sqrt(2) - 1)
    y = x
    for i in range(2):
        s = sigmas[i].expand(3)
        sh = s * (1 + gamma)
        y = y + ((sh**2 - s**2).sqrt() * 1.007)[:, None] * draws[i]
        y = step_heun(gmm, y, sh, sigmas[i + 1].expand(3))
    _close(out, y)


def test_noise_sources():
    """A row depends only on its seed; subsets share the generators' state; replay checks."""
    a = PerSampleNoise([3, 4, 5])
    first = a.randn((3, 2), device=torch.device("cpu"), dtype=F64)
    single = PerSampleNoise([4]).randn((1, 2), device=torch.device("cpu"), dtype=F64)
    _close(first[1:2], single, 0.0)
    sub = a.subset([2, 0])
    nxt = sub.randn((2, 2), device=torch.device("cpu"), dtype=F64)
    ref = PerSampleNoise([5, 3])
    ref.randn((2, 2), device=torch.device("cpu"), dtype=F64)
    _close(nxt, ref.randn((2, 2), device=torch.device("cpu"), dtype=F64), 0.0)
    with pytest.raises(sl.SamplerError, match="noise for 2 rows requested from 3 seeds"):
        a.randn((2, 2), device=torch.device("cpu"), dtype=F64)
    with pytest.raises(sl.SamplerError, match="seeds must not be empty"):
        PerSampleNoise([])
    replay = ReplayNoise([torch.zeros(2, 2)])
    with pytest.raises(sl.SamplerError, match=r"shape \(2, 2\), not \(3, 2\)"):
        replay.randn((3, 2), device=torch.device("cpu"), dtype=F64)
    with pytest.raises(sl.SamplerError, match="ran out of pre-drawn noise"):
        replay.randn((2, 2), device=torch.device("cpu"), dtype=F64)
