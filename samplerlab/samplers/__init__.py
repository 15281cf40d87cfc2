"""Pure-torch samplers over the one denoiser interface ``D(x, sigma) -> x0_hat``.

The denoiser contract (:class:`~.core.DenoiserBase`, :class:`~.core.ModelInfo`, read through
:func:`~.core.describe`) is in :mod:`.core`; the model and wrapper classes are in
:mod:`.denoisers`, :mod:`.conditioning` and :mod:`.sharding`. This package imports only torch
(a test enforces it): no lightning, wandb or omegaconf.
"""

from . import denoisers, noise, schedules
from .api import SampleResult, build_sigmas, sample
from .core import Denoiser, SamplerError, append_dims, to_d
from .ddim import sample_ddim, sample_euler, step_ddim, step_euler
from .ddpm import ddpm_coefficients, sample_ddpm, step_ddpm
from .denoisers import NonFiniteError
from .dpm_solver import dpm_solver_fast_orders, sample_dpm_solver, sample_dpmpp_2m, step_dpm_solver
from .edm import sample_edm_heun, step_heun
from .iia import (
    IIACoefficients,
    sample_biia_edm,
    sample_iia_ddim,
    sample_iia_dpmpp_2m,
    sample_iia_edm,
)
from .noise import GlobalNoise, NoiseSource, PerSampleNoise, ReplayNoise
from .paradigms import sample_paradigms
from .pmm import sample_pmm, step_pmm
from .registry import SAMPLERS, SamplerSpec, get_sampler, list_samplers
from .rmm import sample_rmm, sample_rmm_pc, step_rmm
from .rmm_parallel import sample_rmm_parallel
from .schedules import SCHEDULES, ContinuousVP, DiscreteVP, get_sigmas
from .sharding import DistributedDenoiser, ShardedDenoiser
from .srds import sample_srds

__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "ContinuousVP",
    "Denoiser",
    "DiscreteVP",
    "DistributedDenoiser",
    "GlobalNoise",
    "IIACoefficients",
    "NoiseSource",
    "NonFiniteError",
    "PerSampleNoise",
    "ReplayNoise",
    "SampleResult",
    "SamplerError",
    "SamplerSpec",
    "ShardedDenoiser",
    "append_dims",
    "build_sigmas",
    "ddpm_coefficients",
    "denoisers",
    "dpm_solver_fast_orders",
    "get_sampler",
    "get_sigmas",
    "list_samplers",
    "noise",
    "sample",
    "sample_biia_edm",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm_solver",
    "sample_dpmpp_2m",
    "sample_edm_heun",
    "sample_euler",
    "sample_iia_ddim",
    "sample_iia_dpmpp_2m",
    "sample_iia_edm",
    "sample_paradigms",
    "sample_pmm",
    "sample_rmm",
    "sample_rmm_parallel",
    "sample_rmm_pc",
    "sample_srds",
    "schedules",
    "step_ddim",
    "step_ddpm",
    "step_dpm_solver",
    "step_euler",
    "step_heun",
    "step_pmm",
    "step_rmm",
    "to_d",
]
