"""Karras-style samplers: Euler and DPM-2 with churn, and the ancestral samplers Euler a,
DPM-2 a and DPM-Solver++(2S) a (Karras et al. 2022; Lu et al. 2022b).

Each family is one loop with the method's step passed in: :func:`_sample_churn` (Karras
et al. 2022, Alg. 2) runs ``step_euler`` or :func:`step_dpm_2`; :func:`_sample_ancestral`
(a step to ``sigma_down``, then fresh noise of std ``sigma_up``) runs
:func:`step_dpm_2_down` or :func:`step_dpmpp_2s_down`. Every random draw comes from the
per-sample ``noise`` source. A step to sigma = 0 is the first-order denoise step
``x <- D(x, sigma)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, to_d, where_rows
from .ddim import step_euler
from .errors import SamplerError
from .multistep import grid64, positive_next
from .noise import NoiseSource, randn_like
from .sde import add_noise, ancestral_step_sigmas, dpmpp_first_order


def _churn(
    noise: NoiseSource | None,
    x: Tensor,
    sigma: Tensor,
    gamma_max: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[Tensor, Tensor]:
    """Karras et al. (2022), Alg. 2 lines 4-6: ``sigma_hat = sigma (1 + gamma)`` inside
    ``[s_tmin, s_tmax]``, ``x_hat = x + sqrt(sigma_hat^2 - sigma^2) s_noise z``."""
    inside = (sigma >= s_tmin) & (sigma <= s_tmax)
    gamma = torch.where(inside, torch.full_like(sigma, gamma_max), torch.zeros_like(sigma))
    sigma_hat = sigma * (1 + gamma)
    z = randn_like(noise, x)
    x = x + append_dims((sigma_hat**2 - sigma**2).sqrt() * s_noise, x.ndim) * z
    return x, sigma_hat


Step = Callable[[Denoiser, Tensor, Tensor, Tensor], Tensor]


def _sample_churn(
    step: Step,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource | None,
    churn: tuple[float, float, float, float],
) -> Tensor:
    """The loop of Karras et al. (2022), Alg. 2 with the ODE step ``step(denoiser, x,
    sigma_hat, sigma_next)`` (Euler where every row ends at 0); ``churn = (s_churn, s_tmin,
    s_tmax, s_noise)``."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    if s_churn < 0 or s_noise < 0:
        raise SamplerError("s_churn and s_noise must be >= 0")
    grid = Grid(sigmas, x)
    gamma_max = min(s_churn / len(grid), math.sqrt(2) - 1)
    for i, sigma, sigma_next in grid:
        sigma_hat = sigma
        if s_churn > 0:
            # Increase the noise level temporarily to sigma_hat.
            x, sigma_hat = _churn(noise, x, sigma, gamma_max, s_tmin, s_tmax, s_noise)
        if grid.all_final(i):
            # Euler step to sigma = 0 (the denoise step).
            x = step_euler(denoiser, x, sigma_hat, sigma_next)
        else:
            # The method's ODE step from sigma_hat to sigma_next.
            x = step(denoiser, x, sigma_hat, sigma_next)
    return x


@torch.no_grad()
def sample_euler_churn(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler on the PF-ODE with EDM's churn (Karras et al. 2022, Alg. 2 with the Euler step
    only: k-diffusion's ``sample_euler``); ``s_churn = 0`` is plain Euler (Alg. 1 without
    the second-order correction). With churn, one noise draw per step."""
    return _sample_churn(step_euler, denoiser, x, sigmas, noise, (s_churn, s_tmin, s_tmax, s_noise))


def step_dpm_2(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One DPM-2 step (DPM-Solver-2 with r1 = 1/2 in sigma): the slope at the midpoint
    ``sigma_mid = sqrt(sigma sigma_next)`` (half way in log sigma) over the whole step; Euler
    on rows ending at 0."""
    n = x.ndim
    # Slope at the current point.
    d = to_d(x, sigma, denoiser(x, sigma))
    x_euler = x + append_dims(sigma_next - sigma, n) * d
    final, t = positive_next(sigma, sigma_next)
    # Midpoint in log sigma, and the slope there.
    sigma_mid = (sigma * t).sqrt()
    x_mid = x + append_dims(sigma_mid - sigma, n) * d
    d_mid = to_d(x_mid, sigma_mid, denoiser(x_mid, sigma_mid))
    # Full step with the midpoint slope (Euler on rows ending at 0).
    return where_rows(final, x_euler, x + append_dims(sigma_next - sigma, n) * d_mid)


@torch.no_grad()
def sample_dpm_2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-2 (k-diffusion's ``sample_dpm_2``): DPM-Solver-2 (Lu et al. 2022, r1 = 1/2) on
    the PF-ODE in sigma inside the loop of Karras et al. (2022), Alg. 2: the midpoint
    ``sigma_mid = sqrt(sigma_hat sigma_next)``
    (half way in log sigma), ``x_next = x + (sigma_next - sigma_hat) d(x_mid, sigma_mid)``,
    with EDM churn (Alg. 2 lines 4-6) when ``s_churn > 0``. NFE = 2N - 1."""
    return _sample_churn(step_dpm_2, denoiser, x, sigmas, noise, (s_churn, s_tmin, s_tmax, s_noise))


def _check_eta(eta: float, s_noise: float) -> None:
    # eta > 1 would ask for more noise than the step's whole variance (sigma_down = 0).
    if not 0 <= eta <= 1 or s_noise < 0:
        raise SamplerError(
            f"eta must be in [0, 1] and s_noise >= 0, got eta={eta}, s_noise={s_noise}"
        )


@torch.no_grad()
def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``; "Euler a"): an Euler step
    to ``sigma_down``, then fresh noise of std ``sigma_up`` (:func:`ancestral_step_sigmas`).
    With ``eta = s_noise = 1`` it is DDIM with eta = 1, the DDPM posterior step (Song et al.
    2021, eq. 12). One noise draw per step."""
    _check_eta(eta, s_noise)
    for _, sigma, sigma_next in Grid(sigmas, x):
        # Split the step into a deterministic part and fresh noise.
        down, up = ancestral_step_sigmas(sigma, sigma_next, eta)
        # Euler step to sigma_down.
        x = step_euler(denoiser, x, sigma, down)
        # Fresh noise of std sigma_up.
        x = add_noise(x, up * s_noise, randn_like(noise, x))
    return x


AncestralStep = Callable[[Denoiser, Tensor, Tensor, Tensor, Tensor], Tensor]


def _sample_ancestral(
    step: AncestralStep,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource | None,
    eta: float,
    s_noise: float,
) -> Tensor:
    """The loop of the two-stage ancestral samplers: the data prediction, the split of the
    step into ``(sigma_down, sigma_up)``, the method's ``step(denoiser, x, sigma,
    sigma_down, denoised)`` (per-row float64 sigmas, ``denoised = D(x, sigma)``), then fresh
    noise of std ``sigma_up``. A step to sigma = 0 is the denoise step."""
    _check_eta(eta, s_noise)
    grid = Grid(sigmas, x)
    g = grid64(grid, x)
    for i, sigma, _ in grid:
        # Data prediction at the current point.
        denoised = denoiser(x, sigma)
        if grid.all_final(i):
            x = denoised
            continue
        s, sn = g[i], g[i + 1]
        final, t = positive_next(s, sn)
        # Split the step into a deterministic part and fresh noise.
        down, up = ancestral_step_sigmas(s, t, eta)
        # The method's step to sigma_down, then fresh noise of std sigma_up.
        x_next = step(denoiser, x, s, down, denoised)
        x_next = add_noise(x_next, up * s_noise, randn_like(noise, x))
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
    return x


def step_dpm_2_down(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_down: Tensor, denoised: Tensor
) -> Tensor:
    """The DPM-2 step from ``sigma`` to ``sigma_down`` (per-row, float64), given ``denoised =
    D(x, sigma)``."""
    a = lambda v: append_dims(v.to(x.dtype), x.ndim)
    d = to_d(x, sigma.to(x.dtype), denoised)
    # Midpoint in log sigma between sigma and sigma_down, and the slope there.
    mid = (sigma * sigma_down).sqrt()
    x_mid = x + a(mid - sigma) * d
    d_mid = to_d(x_mid, mid.to(x.dtype), denoiser(x_mid, mid.to(x.dtype)))
    # Step to sigma_down with the midpoint slope.
    return x + a(sigma_down - sigma) * d_mid


@torch.no_grad()
def sample_dpm_2_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-2 ancestral (k-diffusion's ``sample_dpm_2_ancestral``; diffusers'
    ``KDPM2AncestralDiscreteScheduler``): a DPM-2 step (midpoint in log sigma) to
    ``sigma_down``, then fresh noise of std ``sigma_up``. The step to sigma = 0 is the
    denoise step. One draw per step that does not end at 0; NFE = 2N - 1."""
    return _sample_ancestral(step_dpm_2_down, denoiser, x, sigmas, noise, eta, s_noise)


def step_dpmpp_2s_down(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_down: Tensor, denoised: Tensor
) -> Tensor:
    """The DPM-Solver++(2S) step (r = 1/2) from ``sigma`` to ``sigma_down`` (per-row,
    float64), given ``denoised = D(x, sigma)``."""
    h = torch.log(sigma / sigma_down)
    # DPM-Solver++-1 to the midpoint lambda + h/2, and the data prediction there.
    mid = sigma * torch.exp(-h / 2)
    x_mid = dpmpp_first_order(x, denoised, mid / sigma, h / 2)
    denoised_mid = denoiser(x_mid, mid.to(x.dtype))
    # DPM-Solver++(2S) update to sigma_down with the midpoint data prediction.
    return dpmpp_first_order(x, denoised_mid, sigma_down / sigma, h)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S) ancestral (Lu et al. 2022b, Alg. 1, DPM-Solver++(2S) with r = 1/2,
    taken to ``sigma_down``, then fresh noise of std ``sigma_up``; k-diffusion's
    ``sample_dpmpp_2s_ancestral``). The step to sigma = 0 is the denoise step. One draw per
    step that does not end at 0; NFE = 2N - 1."""
    return _sample_ancestral(step_dpmpp_2s_down, denoiser, x, sigmas, noise, eta, s_noise)
