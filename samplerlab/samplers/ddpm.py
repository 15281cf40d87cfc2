"""DDPM ancestral sampling (Ho et al. 2020) and its three variants, in sigma space.

Every variant is an affine update in the network's epsilon prediction,
``x_next = A x + G eps_hat(x) + Gamma z`` with per-row scalars ``(A, G, Gamma)``; the
Poisson Midpoint Method wraps any of them through :func:`ddpm_coefficients`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, to_d
from .errors import SamplerError
from .noise import NoiseSource, randn_like

DDPM_VARIANTS = ("posterior", "fixed_large", "sde")


def ddpm_coefficients(
    sigma: Tensor, sigma_next: Tensor, variant: str = "posterior"
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``(A, G, Gamma)`` of one reverse step ``sigma -> sigma_next``.

    With ``abar = 1/(1+sigma^2)`` and ``b_ts = 1 - abar_t/abar_s`` (the respaced chain of Nichol &
    Dhariwal 2021, Sec. 4; posterior of Ho et al. 2020, Eqs. 6-7):

    * ``posterior``: respaced posterior mean, variance ``btilde_ts`` (= DDIM eta=1);
    * ``fixed_large``: the same mean, variance ``b_ts``;
    * ``sde``: Euler-Maruyama of the reverse VP SDE in VP coordinates with the integrated
      ``beta dt = log(abar_s/abar_t)``.

    No noise is added on a step that ends at sigma = 0.
    """
    if variant not in DDPM_VARIANTS:
        raise SamplerError(f"unknown ddpm variant '{variant}'; valid: {', '.join(DDPM_VARIANTS)}")
    ones = torch.ones_like(sigma)
    if variant in ("posterior", "fixed_large"):
        # Posterior mean: x0_hat + (sigma_next^2/sigma) eps_hat.
        G = sigma_next**2 / sigma - sigma
        if variant == "posterior":
            Gamma = sigma_next * (1 - sigma_next**2 / sigma**2).clamp_min(0).sqrt()
        else:
            Gamma = ((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)).sqrt()
        return ones, G, torch.where(sigma_next > 0, Gamma, torch.zeros_like(Gamma))
    # Euler-Maruyama of dx_vp = [-beta/2 x_vp - beta score] dt + sqrt(beta) dW, run backwards.
    c, c_next = (1 + sigma**2).rsqrt(), (1 + sigma_next**2).rsqrt()
    h = torch.log((1 + sigma**2) / (1 + sigma_next**2))  # integral of beta over the step
    A = c * (1 + h / 2) / c_next
    G = -h / (sigma * c * c_next)  # score_vp = -eps / sigma_vp with sigma_vp = c sigma
    Gamma = torch.where(sigma_next > 0, h.sqrt() / c_next, torch.zeros_like(h))
    return A, G, Gamma


def step_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    z: Tensor,
    *,
    variant: str = "posterior",
) -> Tensor:
    """One DDPM step: ``x_next = A x + G eps_hat + Gamma z`` (:func:`ddpm_coefficients`)."""
    A, G, Gamma = ddpm_coefficients(sigma, sigma_next, variant)
    eps = to_d(x, sigma, denoiser(x, sigma))
    n = x.ndim
    return append_dims(A, n) * x + append_dims(G, n) * eps + append_dims(Gamma, n) * z


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    variant: str = "posterior",
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any grid; one noise draw per step."""
    if variant not in DDPM_VARIANTS:
        raise SamplerError(f"unknown ddpm variant '{variant}'; valid: {', '.join(DDPM_VARIANTS)}")
    grid = Grid(sigmas, x)

    def coefficients(s: Tensor, s_next: Tensor) -> tuple[Tensor, ...]:
        A, G, Gamma = ddpm_coefficients(s, s_next, variant)
        return A, G, Gamma, -G / s

    # (A, G, Gamma, -G / sigma) of every step, computed once: the loop is step_ddpm's update.
    A, G, Gamma, W = grid.per_step(coefficients)
    n = x.ndim
    for i, sigma, _ in grid:
        z = randn_like(noise, x)
        D = denoiser(x, sigma)
        if variant == "sde":
            eps = to_d(x, sigma, D)
            x = append_dims(A[i], n) * x + append_dims(G[i], n) * eps + append_dims(Gamma[i], n) * z
        else:
            x = unit_ddpm_update(x, D, W[i], Gamma[i], z)
    return x


def unit_ddpm_update(x: Tensor, D: Tensor, w: Tensor, gamma: Tensor, z: Tensor) -> Tensor:
    """``x + G eps_hat + Gamma z`` for ``A = 1`` (posterior, fixed_large), with ``w = -G /
    sigma`` in ``[0, 1]``: ``x + w (D - x) + Gamma z``, one interpolation and one fused
    multiply-add (exactly ``D`` on a final step, where ``w = 1`` and ``Gamma = 0``)."""
    n = x.ndim
    return torch.lerp(x, D, append_dims(w, n)).addcmul_(append_dims(gamma, n), z)
