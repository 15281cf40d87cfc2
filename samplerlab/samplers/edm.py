"""EDM's deterministic and stochastic Heun sampler (Karras et al. 2022, Alg. 1 and 2)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, to_d, where_rows
from .ddim import step_euler
from .errors import SamplerError
from .noise import NoiseSource, randn_like


class HeunParts(NamedTuple):
    """The quantities of one Heun step (IIA-EDM regresses on them)."""

    D: Tensor  # D(x, sigma)
    d: Tensor  # slope at (x, sigma)
    x_euler: Tensor
    D_tilde: Tensor  # D(x_euler, sigma_next)
    d_prime: Tensor  # slope at (x_euler, sigma_next)
    x_next: Tensor  # Heun (Euler on rows ending at 0)


def heun_parts(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> HeunParts:
    """One Heun step (Karras et al. 2022, Alg. 1 lines 4-8) with its intermediate values."""
    n = x.ndim
    # Euler step.
    D = denoiser(x, sigma)
    d = to_d(x, sigma, D)
    x_euler = x + append_dims(sigma_next - sigma, n) * d
    # Apply 2nd-order correction (rows with sigma_next = 0 keep the Euler step).
    final = sigma_next == 0
    s_next = torch.where(final, sigma, sigma_next)
    D_tilde = denoiser(x_euler, s_next)
    d_prime = to_d(x_euler, s_next, D_tilde)
    x_heun = x + append_dims(sigma_next - sigma, n) * (d + d_prime) / 2
    return HeunParts(D, d, x_euler, D_tilde, d_prime, where_rows(final, x_euler, x_heun))


def step_heun(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Heun step (Karras et al. 2022, Alg. 1 lines 4-8); Euler on rows ending at 0."""
    return heun_parts(denoiser, x, sigma, sigma_next).x_next


def step_heun_rows(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, keep: Tensor
) -> Tensor:
    """:func:`step_heun` evaluating the 2nd-order correction only on the rows ``keep``
    (a device index of the rows whose step does not end at 0; the others take Euler)."""
    n = x.ndim
    # Euler step on every row.
    d = to_d(x, sigma, denoiser(x, sigma))
    out = x + append_dims(sigma_next - sigma, n) * d
    # 2nd-order correction on the kept rows only (no network call for rows ending at 0).
    xe, sn = out[keep], sigma_next[keep]
    d_prime = to_d(xe, sn, denoiser(xe, sn))
    out[keep] = x[keep] + append_dims(sn - sigma[keep], n) * (d[keep] + d_prime) / 2
    return out


@torch.no_grad()
def sample_edm_heun(
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
    """EDM Heun sampler (Karras et al. 2022, Alg. 2); deterministic when ``s_churn = 0``.

    NFE = 2N - 1 on a grid of N steps ending in 0. With churn, one noise draw per step.
    """
    if s_churn < 0 or s_noise < 0:
        raise SamplerError("s_churn and s_noise must be >= 0")
    grid = Grid(sigmas, x)
    gamma_max = min(s_churn / len(grid), math.sqrt(2) - 1)
    for i, sigma, sigma_next in grid:
        sigma_hat = sigma
        if s_churn > 0:
            # Increase noise temporarily: sigma_hat = sigma (1 + gamma) inside [s_tmin, s_tmax].
            gamma = torch.where(
                (sigma >= s_tmin) & (sigma <= s_tmax),
                torch.full_like(sigma, gamma_max),
                torch.zeros_like(sigma),
            )
            sigma_hat = sigma * (1 + gamma)
            z = randn_like(noise, x)
            x = x + append_dims((sigma_hat**2 - sigma**2).sqrt() * s_noise, x.ndim) * z
        if grid.all_final(i):
            # Euler step to sigma = 0 (no 2nd-order correction).
            x = step_euler(denoiser, x, sigma_hat, sigma_next)
        elif grid.any_final(i):
            # Per-row grid, some rows end at 0: the correction only where it is used.
            keep = (grid.host[i + 1] > 0).nonzero().flatten().to(x.device, non_blocking=True)
            x = step_heun_rows(denoiser, x, sigma_hat, sigma_next, keep)
        else:
            x = step_heun(denoiser, x, sigma_hat, sigma_next)
    return x
