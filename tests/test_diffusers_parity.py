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
