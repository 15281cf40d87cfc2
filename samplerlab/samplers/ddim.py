"""Euler and DDIM in sigma space (Song et al. 2021; Karras et al. 2022)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, to_d
from .errors import SamplerError
from .noise import NoiseSource, randn_like


def step_euler(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Euler step of the PF-ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``."""
    d = to_d(x, sigma, denoiser(x, sigma))
    return x + append_dims(sigma_next - sigma, x.ndim) * d


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None
) -> Tensor:
    """Euler's method on the PF-ODE (Karras et al. 2022, Alg. 1 without the 2nd-order step)."""
    for _, sigma, sigma_next in Grid(sigmas, x):
        x = step_euler(denoiser, x, sigma, sigma_next)
    return x


def ancestral_sigmas(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """``(sigma_down, sigma_up)`` of a DDIM step with ``eta``.

    DDIM's ``sigma_ts = eta sqrt((1-abar_s)/(1-abar_t)) sqrt(1 - abar_t/abar_s)`` in EDM
    coordinates is ``sigma_up = eta sigma_next sqrt(1 - sigma_next^2/sigma^2)``; the
    deterministic part moves to ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)``. For
    ``eta > 1`` the formula would ask for more noise than the step ends at; ``sigma_up`` is
    capped at ``sigma_next`` (k-diffusion's ``get_ancestral_step``), which makes the step
    ``x0_hat + sigma_next z``: the most noise the grid allows.
    """
    sigma_up = eta * sigma_next * (1 - sigma_next**2 / sigma**2).clamp_min(0).sqrt()
    sigma_up = torch.minimum(sigma_up, sigma_next)
    sigma_down = (sigma_next**2 - sigma_up**2).clamp_min(0).sqrt()
    return sigma_down, sigma_up


def step_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    *,
    eta: float = 0.0,
    z: Tensor | None = None,
) -> Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from ``sigma`` to ``sigma_next``.

    ``x_s = x0_hat + sigma_down * eps_hat + sigma_up * z``; ``eta = 0`` is the Euler step,
    ``eta = 1`` the DDPM posterior (ancestral) step.
    """
    denoised = denoiser(x, sigma)
    d = to_d(x, sigma, denoised)
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
    # Deterministic part: move to sigma_down along the eps direction.
    x = denoised + append_dims(sigma_down, x.ndim) * d
    # Stochastic part: add fresh noise of std sigma_up.
    if eta > 0:
        x = x + append_dims(sigma_up, x.ndim) * z
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021) in sigma space; one noise draw per step when ``eta > 0``.

    ``eta > 1`` is allowed and capped per step at the noise level the step ends at (see
    :func:`ancestral_sigmas`).
    """
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta):
        raise SamplerError(f"ddim option eta must be a finite number >= 0, got {eta!r}")
    if eta < 0:
        raise SamplerError(f"eta must be >= 0, got {eta}")
    grid = Grid(sigmas, x)

    def coefficients(s: Tensor, s_next: Tensor) -> tuple[Tensor, Tensor]:
        sigma_down, sigma_up = ancestral_sigmas(s, s_next, eta)
        return sigma_down / s, sigma_up

    # (sigma_down / sigma, sigma_up) of every step, computed once per call.
    ratio, up = grid.per_step(coefficients)
    n = x.ndim
    for i, sigma, _ in grid:
        z = randn_like(noise, x) if eta > 0 else None
        denoised = denoiser(x, sigma)
        # step_ddim's update x0_hat + sigma_down eps_hat as one interpolation (eq. 12).
        x = torch.lerp(denoised, x, append_dims(ratio[i], n))
        if eta > 0:
            x = x.addcmul_(append_dims(up[i], n), z)
    return x
