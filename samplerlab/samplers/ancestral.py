"""Karras-style samplers: Euler and DPM-2 with churn, and the ancestral samplers Euler a,
DPM-2 a and DPM-Solver++(2S) a (Karras et al. 2022; Lu et al. 2022b).

Every random draw comes from the per-sample ``noise`` source. A step to sigma = 0 is the
first-order denoise step ``x <- D(x, sigma)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, to_d, where_rows
from .errors import SamplerError
from .multistep import grid64, positive_next
from .noise import NoiseSource, randn_like
from .sde import ancestral_step_sigmas


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


def _check_churn(s_churn: float, s_noise: float) -> None:
    if s_churn < 0 or s_noise < 0:
        raise SamplerError("s_churn and s_noise must be >= 0")


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
    _check_churn(s_churn, s_noise)
    grid = Grid(sigmas, x)
    gamma_max = min(s_churn / len(grid), math.sqrt(2) - 1)
    for _, sigma, sigma_next in grid:
        sigma_hat = sigma
        if s_churn > 0:
            # Increase the noise level temporarily to sigma_hat.
            x, sigma_hat = _churn(noise, x, sigma, gamma_max, s_tmin, s_tmax, s_noise)
        # Euler step from sigma_hat to sigma_next.
        d = to_d(x, sigma_hat, denoiser(x, sigma_hat))
        x = x + append_dims(sigma_next - sigma_hat, x.ndim) * d
    return x


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
    _check_churn(s_churn, s_noise)
    grid = Grid(sigmas, x)
    gamma_max = min(s_churn / len(grid), math.sqrt(2) - 1)
    n = x.ndim
    for i, sigma, sigma_next in grid:
        sigma_hat = sigma
        if s_churn > 0:
            # Increase the noise level temporarily to sigma_hat.
            x, sigma_hat = _churn(noise, x, sigma, gamma_max, s_tmin, s_tmax, s_noise)
        # Slope at the current point.
        d = to_d(x, sigma_hat, denoiser(x, sigma_hat))
        x_euler = x + append_dims(sigma_next - sigma_hat, n) * d
        if grid.all_final(i):
            # Euler step to sigma = 0 (the denoise step).
            x = x_euler
            continue
        final, t = positive_next(sigma_hat, sigma_next)
        # Midpoint in log sigma, and the slope there.
        sigma_mid = (sigma_hat * t).sqrt()
        x_mid = x + append_dims(sigma_mid - sigma_hat, n) * d
        d_mid = to_d(x_mid, sigma_mid, denoiser(x_mid, sigma_mid))
        # Full step with the midpoint slope (Euler on rows ending at 0).
        x = where_rows(final, x_euler, x + append_dims(sigma_next - sigma_hat, n) * d_mid)
    return x


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
    n = x.ndim
    for _, sigma, sigma_next in Grid(sigmas, x):
        # Split the step into a deterministic part and fresh noise.
        down, up = ancestral_step_sigmas(sigma, sigma_next, eta)
        # Euler step to sigma_down.
        d = to_d(x, sigma, denoiser(x, sigma))
        x = x + append_dims(down - sigma, n) * d
        # Fresh noise of std sigma_up.
        x = x + append_dims(up * s_noise, n) * randn_like(noise, x)
    return x


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
    _check_eta(eta, s_noise)
    grid = Grid(sigmas, x)
    g = grid64(grid, x)
    n = x.ndim
    a = lambda v: append_dims(v.to(x.dtype), n)
    for i, sigma, _ in grid:
        # Slope at the current point.
        denoised = denoiser(x, sigma)
        if grid.all_final(i):
            x = denoised
            continue
        s, sn = g[i], g[i + 1]
        final, t = positive_next(s, sn)
        # Split the step into a deterministic part and fresh noise.
        down, up = ancestral_step_sigmas(s, t, eta)
        d = to_d(x, sigma, denoised)
        # Midpoint in log sigma between sigma and sigma_down, and the slope there.
        mid = (s * down).sqrt()
        x_mid = x + a(mid - s) * d
        d_mid = to_d(x_mid, mid.to(x.dtype), denoiser(x_mid, mid.to(x.dtype)))
        # Step to sigma_down with the midpoint slope, then fresh noise.
        x_next = x + a(down - s) * d_mid + a(up * s_noise) * randn_like(noise, x)
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
    return x


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
    _check_eta(eta, s_noise)
    grid = Grid(sigmas, x)
    g = grid64(grid, x)
    n = x.ndim
    a = lambda v: append_dims(v.to(x.dtype), n)
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
        h = torch.log(s / down)
        # DPM-Solver++-1 to the midpoint lambda + h/2, and the data prediction there.
        mid = s * torch.exp(-h / 2)
        x_mid = a(mid / s) * x - a(torch.expm1(-h / 2)) * denoised
        denoised_mid = denoiser(x_mid, mid.to(x.dtype))
        # DPM-Solver++(2S) update to sigma_down with the midpoint data prediction.
        x_next = a(down / s) * x - a(torch.expm1(-h)) * denoised_mid
        # Fresh noise of std sigma_up.
        x_next = x_next + a(up * s_noise) * randn_like(noise, x)
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
    return x
