"""Parity with diffusers' schedulers (a test oracle only; samplerlab.samplers never imports it).

A tiny random ``UNet2DModel`` is saved with a scheduler config and loaded back through
``samplerlab.denoisers.from_diffusers``. Our samplers, given diffusers' own timesteps as a
sigma grid (``sigma = table_sigma[t]``, then 0), must reproduce the diffusers loop: same
initial noise (ours ``x = z sqrt(1 + sigma_0^2)`` is diffusers' ``x_vp = z``), the same
per-step noise, and at sigma = 0 the two coordinates coincide.

diffusers keeps its ``alphas_cumprod`` in float32; for the float64 comparison the oracle's
tables are upcast (``_f64``) so both sides use the same float32-valued table in float64
arithmetic. DPMSolverMultistepScheduler casts the state to float32 inside ``step`` whatever
the model dtype, so its float64 comparison is float32-limited.
"""

from __future__ import annotations

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)

from samplerlab.denoisers import from_diffusers  # noqa: E402
from samplerlab.samplers import SAMPLERS, ReplayNoise  # noqa: E402
from samplerlab.samplers.schedules import discrete_timesteps  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
SHAPE = (2, 3, 8, 8)


def _unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def _folder(root, prediction_type: str = "epsilon", clip_sample: bool = False):
    _unet().save_pretrained(root)
    DDPMScheduler(
        beta_schedule="linear", prediction_type=prediction_type, clip_sample=clip_sample
    ).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {
        "epsilon": _folder(tmp_path_factory.mktemp("eps")),
        "v_prediction": _folder(tmp_path_factory.mktemp("v"), "v_prediction"),
        "clip": _folder(tmp_path_factory.mktemp("clip"), clip_sample=True),
    }


def _f64(scheduler):
    """Upcast the oracle's tables (their values are unchanged: float32 numbers)."""
    for key in ("alphas_cumprod", "alphas", "betas", "final_alpha_cumprod", "one"):
        value = getattr(scheduler, key, None)
        if torch.is_tensor(value):
            setattr(scheduler, key, value.double())
    return scheduler


def _grid(den, timesteps) -> torch.Tensor:
    """diffusers' timesteps as our sigma grid: the table's sigma at each t, then 0."""
    return torch.cat([den.vp.sigmas[timesteps.long()], torch.zeros(1, dtype=torch.float64)])


def _diffusers_loop(unet, scheduler, z, **step_kwargs) -> torch.Tensor:
    x = z.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, **step_kwargs).prev_sample
    return x


def _ours(name, den, z, sigmas, **options) -> torch.Tensor:
    x = z * math.sqrt(1 + float(sigmas[0]) ** 2)
    return SAMPLERS[name](den, x, sigmas, **options)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _setup(folder, dtype):
    den = from_diffusers(folder, dtype=dtype)
    unet = UNet2DModel.from_pretrained(folder).to(dtype).eval()
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return den, unet, z


# float64: exact up to rounding (measured 5e-16 .. 1.5e-14 relative); float32: our
# EDM-coordinate arithmetic vs diffusers' VP arithmetic, measured 3e-7 .. 8.4e-6 (the
# clipped DDIM is the largest).
TOL = {torch.float64: 1e-12, torch.float32: 5e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "clip"])
def test_ddim_matches_diffusers(folders, dtype, kind):
    den, unet, z = _setup(folders[kind], dtype)
    sch = DDIMScheduler(
        beta_schedule="linear",
        clip_sample=kind == "clip",
        prediction_type="v_prediction" if kind == "v_prediction" else "epsilon",
    )
    if dtype == torch.float64:
        _f64(sch)
    sch.set_timesteps(10)
    # With clipping our eps is the one recomputed from the clipped x0 (a property of D).
    ref = _diffusers_loop(unet, sch, z, use_clipped_model_output=True)
    ours = _ours("ddim", den, z, _grid(den, sch.timesteps))
    assert ours.dtype == dtype
    assert _rel(ours, ref) <= TOL[dtype]
    if kind == "clip":
        assert float(ref.abs().max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_matches_diffusers_with_same_noise(folders, dtype, eta):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    if dtype == torch.float64:
        _f64(sch)
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(4)
    draws = [torch.randn(SHAPE, generator=g, dtype=dtype) for _ in sch.timesteps]
    x = z.clone()
    with torch.no_grad():
        for t, d in zip(sch.timesteps, draws, strict=True):
            x = sch.step(unet(x, t).sample, t, x, eta=eta, variance_noise=d).prev_sample
    ours = _ours("ddim", den, z, _grid(den, sch.timesteps), eta=eta, noise=ReplayNoise(draws))
    assert _rel(ours, x) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["epsilon", "clip"])
def test_ddpm_matches_diffusers_with_same_noise(folders, dtype, kind, monkeypatch):
    den, unet, z = _setup(folders[kind], dtype)
    sch = DDPMScheduler(
        beta_schedule="linear", clip_sample=kind == "clip", variance_type="fixed_small"
    )
    if dtype == torch.float64:
        _f64(sch)
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    draws = [torch.randn(SHAPE, generator=g, dtype=dtype) for _ in sch.timesteps]
    served = iter(draws)
    monkeypatch.setattr(
        "diffusers.schedulers.scheduling_ddpm.randn_tensor", lambda *a, **k: next(served)
    )
    ref = _diffusers_loop(unet, sch, z)
    ours = _ours("ddpm", den, z, _grid(den, sch.timesteps), noise=ReplayNoise(draws))
    assert _rel(ours, ref) <= TOL[dtype]
    # diffusers adds no noise on its last step (t = 0): it consumed one draw fewer.
    assert len(list(served)) == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [6, 20])
def test_dpmpp_2m_matches_diffusers(folders, dtype, steps):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2
    )
    sch.set_timesteps(steps)
    ref = _diffusers_loop(unet, sch, z)
    sigmas = _grid(den, sch.timesteps)
    assert torch.allclose(sigmas, sch.sigmas.double(), rtol=1e-6)
    ours = _ours("dpmpp_2m", den, z, sigmas)
    # diffusers' step runs in float32 whatever the dtype: measured 1.6e-7 .. 7.5e-7.
    assert _rel(ours, ref) <= 1e-5


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 333])
@pytest.mark.parametrize("offset", [0, 1])
def test_discrete_timesteps_match_ddim_scheduler(spacing, steps, offset):
    sch = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    sch.set_timesteps(steps)
    # diffusers applies steps_offset only to the "leading" spacing; so do we.
    ours = discrete_timesteps(steps, 1000, spacing, steps_offset=offset)
    assert ours.tolist() == sch.timesteps.tolist()


def test_from_diffusers_reads_the_scheduler_config(folders):
    den = from_diffusers(folders["v_prediction"])
    assert den.prediction_type == "v_prediction" and not den.clip_denoised
    assert den.data_shape == (3, 8, 8)
    ref = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double()
    assert torch.equal(den.vp.alphas_cumprod, ref)
    assert from_diffusers(folders["clip"]).clip_denoised


# ---------------------------------------------------------------------------------------
# The contenders against diffusers' schedulers (same UNet, same grid, same noise).
# ---------------------------------------------------------------------------------------

from diffusers import (  # noqa: E402
    DEISMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

# diffusers keeps its sigmas in float32 (and DPMSolverMultistepScheduler its state): with
# its own grid the difference to ours is float32-limited (measured 3e-9 .. 4e-7 relative in
# float64); in float64 runs the schedulers that compute in the model's dtype are given our
# float64 grid (`_exact`) and must then agree to rounding.
MULTISTEP_TOL = 1e-5
EXACT_TOL = {torch.float64: 1e-12, torch.float32: MULTISTEP_TOL}


def _exact(sch, sigmas: torch.Tensor, dtype) -> None:
    """In float64, run the oracle on our float64 sigma grid and tables."""
    if dtype == torch.float64:
        _f64(sch)
        sch.sigmas = sigmas.clone()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [6, 20])
def test_unipc_matches_diffusers(folders, dtype, order, variant, steps):
    den, unet, z = _setup(folders["epsilon"], dtype)
    # diffusers' bh1 step to sigma = 0 is NaN (B(h) = -h = -inf times 0): bh1 is compared on
    # its final_sigmas_type="sigma_min" grid, which ends at the table's sigma_min.
    final = "zero" if variant == "bh2" else "sigma_min"
    sch = UniPCMultistepScheduler(
        beta_schedule="linear", solver_order=order, solver_type=variant, final_sigmas_type=final
    )
    sch.set_timesteps(steps)
    sigmas = _grid(den, sch.timesteps)
    if final == "sigma_min":
        sigmas[-1] = den.vp.sigmas[0]
    assert torch.allclose(sigmas, sch.sigmas.double(), rtol=1e-6)
    _exact(sch, sigmas, dtype)
    ref = _diffusers_loop(unet, sch, z)
    ours = _ours("unipc", den, z, sigmas, order=order, variant=variant, lower_order_final=True)
    ours = ours / math.sqrt(1 + float(sigmas[-1]) ** 2)  # x_vp (= x at sigma = 0)
    assert _rel(ours, ref) <= EXACT_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [6, 20])
def test_deis_matches_diffusers(folders, dtype, order, steps):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = DEISMultistepScheduler(beta_schedule="linear", solver_order=order)
    sch.set_timesteps(steps)
    # diffusers' DEIS ends at the table's sigma_min (t = 0), not at 0; its state is x_vp.
    sigmas = torch.cat([den.vp.sigmas[sch.timesteps.long()], den.vp.sigmas[:1]])
    _exact(sch, sigmas, dtype)
    ref = _diffusers_loop(unet, sch, z)
    ours = _ours("deis", den, z, sigmas, order=order, lower_order_final=steps < 15)
    ours_vp = ours / math.sqrt(1 + float(sigmas[-1]) ** 2)
    assert _rel(ours_vp, ref) <= EXACT_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_3m_matches_diffusers(folders, dtype, steps):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=3
    )
    sch.set_timesteps(steps)
    ref = _diffusers_loop(unet, sch, z)
    # diffusers lowers the last two orders below 15 steps (lower_order_final).
    grid = _grid(den, sch.timesteps)
    ours = _ours("dpmpp_3m", den, z, grid, lower_order_final=steps < 15, form="library")
    assert _rel(ours, ref) <= MULTISTEP_TOL


def _sde_draws(steps: int, dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return [torch.randn(SHAPE, generator=g, dtype=dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [6, 20])
def test_dpmpp_2m_sde_matches_diffusers_with_same_noise(folders, dtype, steps):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="sde-dpmsolver++", solver_order=2
    )
    sch.set_timesteps(steps)
    draws = _sde_draws(steps, dtype)
    x = z.clone()
    with torch.no_grad():
        for t, d in zip(sch.timesteps, draws, strict=True):
            x = sch.step(unet(x, t).sample, t, x, variance_noise=d).prev_sample
    # Ours draws no noise on the step to sigma = 0 (diffusers multiplies its draw by 0).
    noise = ReplayNoise(draws[:-1])
    ours = _ours("dpmpp_2m_sde", den, z, _grid(den, sch.timesteps), noise=noise)
    assert _rel(ours, x) <= MULTISTEP_TOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpmpp_3m_sde_first_steps_match_diffusers_heun_form(folders, dtype):
    """Orders 1 and 2 of (3M) SDE are diffusers' sde-dpmsolver++ with ``solver_type="heun"``
    (the phi_2 form); its order-3 step is not compared: diffusers' D2 weight there is not the
    exact integral (see test_contenders.py::test_3m_sde_weights_are_the_exact_integrals)."""
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = DPMSolverMultistepScheduler(
        beta_schedule="linear",
        algorithm_type="sde-dpmsolver++",
        solver_order=3,
        solver_type="heun",
    )
    sch.set_timesteps(3)  # orders 1, 2, then the step to 0
    draws = _sde_draws(3, dtype)
    x = z.clone()
    with torch.no_grad():
        for t, d in zip(sch.timesteps, draws, strict=True):
            x = sch.step(unet(x, t).sample, t, x, variance_noise=d).prev_sample
    ours = _ours("dpmpp_3m_sde", den, z, _grid(den, sch.timesteps), noise=ReplayNoise(draws[:-1]))
    assert _rel(ours, x) <= MULTISTEP_TOL


# The k-diffusion-style schedulers default to Stable Diffusion's betas; use the DDPM table.
LINEAR = {"beta_start": 0.0001, "beta_end": 0.02}


def _karras_style_loop(unet, sch, z, sigma0: float, monkeypatch=None, module=None, draws=None):
    """diffusers' k-diffusion-style schedulers work in EDM coordinates (scale_model_input
    divides by sqrt(sigma^2 + 1)); ``draws`` replace their ``randn_tensor``."""
    if draws is not None:
        served = iter(draws)
        monkeypatch.setattr(module + ".randn_tensor", lambda *a, **k: next(served))
    x = z * math.sqrt(1 + sigma0**2)
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(sch.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps", [5, 12])
def test_lms_matches_diffusers(folders, dtype, steps):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = LMSDiscreteScheduler(beta_schedule="linear", **LINEAR, timestep_spacing="leading")
    sch.set_timesteps(steps)
    sigmas = _grid(den, sch.timesteps)
    assert torch.allclose(sigmas, sch.sigmas.double(), rtol=1e-6)
    _exact(sch, sigmas, dtype)
    ref = _karras_style_loop(unet, sch, z, float(sigmas[0]))
    ours = _ours("lms", den, z, sigmas)
    assert _rel(ours, ref) <= EXACT_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_euler_ancestral_matches_diffusers_with_same_noise(folders, dtype, monkeypatch):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = EulerAncestralDiscreteScheduler(
        beta_schedule="linear", **LINEAR, timestep_spacing="leading"
    )
    sch.set_timesteps(10)
    draws = _sde_draws(10, dtype)
    sigmas = _grid(den, sch.timesteps)
    assert torch.allclose(sigmas, sch.sigmas.double(), rtol=1e-6)
    _exact(sch, sigmas, dtype)
    mod = "diffusers.schedulers.scheduling_euler_ancestral_discrete"
    ref = _karras_style_loop(unet, sch, z, float(sigmas[0]), monkeypatch, mod, draws)
    ours = _ours("euler_ancestral", den, z, sigmas, noise=ReplayNoise(draws))
    # Its step upcasts the state to float32 whatever the dtype: measured 1.3e-7.
    assert _rel(ours, ref) <= MULTISTEP_TOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpm_2_ancestral_matches_kdpm2_ancestral_with_same_noise(folders, dtype, monkeypatch):
    den, unet, z = _setup(folders["epsilon"], dtype)
    sch = KDPM2AncestralDiscreteScheduler(
        beta_schedule="linear", **LINEAR, timestep_spacing="leading"
    )
    sch.set_timesteps(8)
    draws = _sde_draws(7, dtype)  # one per step that does not end at 0
    sigmas = torch.cat([sch.sigmas[::2].double(), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(sigmas[:-1], _grid(den, sch.timesteps[::2]), rtol=1e-6)
    mod = "diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete"
    ref = _karras_style_loop(unet, sch, z, float(sigmas[0]), monkeypatch, mod, draws)
    ours = _ours("dpm_2_ancestral", den, z, sigmas[:-1], noise=ReplayNoise(draws))
    assert _rel(ours, ref) <= MULTISTEP_TOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("order", [1, 2])
def test_singlestep_dpmpp_matches_diffusers(folders, dtype, order):
    """Singlestep DPM-Solver++ (``algorithm="dpmsolver++"``) against diffusers'
    DPMSolverSinglestepScheduler. diffusers evaluates at its grid points; its sigmas are
    replaced by ours (step boundaries and our log-SNR midpoints) and its UNet is called at
    the table time of each sigma, as our wrapper does."""
    den, unet, z = _setup(folders["epsilon"], dtype)
    steps = 5
    ours_grid = _grid(den, torch.linspace(999, 99, steps).round().long())  # 5 steps, then 0
    orders = [order] * (steps - 1) + [1]
    # diffusers' evaluation points: each step's start, then its midpoint for order 2.
    points, order_list = [], []
    for i in range(steps):
        s, t = float(ours_grid[i]), float(ours_grid[i + 1])
        points.append(s)
        order_list.append(1)
        if orders[i] == 2:
            points.append(s * math.sqrt(t / s))  # lambda half way
            order_list.append(2)
    sch = DPMSolverSinglestepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2
    )
    sch.set_timesteps(len(points))
    _f64(sch)
    sch.sigmas = torch.tensor([*points, 0.0], dtype=torch.float64)
    sch.order_list = order_list
    sch.set_begin_index(0)
    x = z.clone()
    with torch.no_grad():
        for sig in points:
            t = den.vp.t(torch.tensor([sig], dtype=torch.float64)).to(dtype)
            x = sch.step(unet(x, t).sample, t, x).prev_sample
    ours = _ours("dpm_solver_2", den, z, ours_grid, orders=orders, algorithm="dpmsolver++")
    assert _rel(ours, x) <= EXACT_TOL[dtype]
