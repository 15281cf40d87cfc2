"""DPM-Solver-1/2/3 (singlestep, noise prediction; Lu et al. 2022) and DPM-Solver++(2M)
(multistep, data prediction; Lu et al. 2022b), written in EDM sigma coordinates.

With ``lambda = -log sigma`` the VP formulas carry over with ``alpha -> 1`` and
``sigma_vp / alpha -> sigma``. A step to ``sigma_next = 0`` (``lambda = +inf``) is the
first-order denoise step ``x <- D(x, sigma)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, to_d, where_rows
from .errors import SamplerError
from .noise import NoiseSource


def dpm_solver_fast_orders(nfe: int, order: int) -> list[int]:
    """DPM-Solver-fast order allocation of ``nfe`` evaluations (Lu et al. 2022, Sec. 3.4).

    Our grids end at sigma = 0, whose step is always first order; where the paper's
    allocation ends in a step of order ``k > 1``, that step is split into an order
    ``k - 1`` step and the final denoise step, so the total is still ``nfe``.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise SamplerError(f"steps must be an integer >= 1, got {nfe!r}")
    if order not in (1, 2, 3):
        raise SamplerError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    if order == 1:
        return [1] * nfe
    if order == 2:
        K = nfe // 2 + (nfe % 2)
        orders = [2] * (nfe // 2) if nfe % 2 == 0 else [2] * (K - 1) + [1]
    else:
        K = nfe // 3 + 1
        if nfe % 3 == 0:
            orders = [3] * (K - 2) + [2, 1]
        elif nfe % 3 == 1:
            orders = [3] * (K - 1) + [1]
        else:
            orders = [3] * (K - 1) + [2]
    if orders[-1] > 1:
        orders = [*orders[:-1], orders[-1] - 1, 1]
    return orders


ALGORITHMS = ("dpmsolver", "dpmsolver++")


def step_dpm_solver(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    *,
    order: int = 1,
    algorithm: str = "dpmsolver",
) -> Tensor:
    """One singlestep DPM-Solver-``order`` step (Lu et al. 2022, Alg. 1/2, eqs. 3.3-3.5);
    ``algorithm="dpmsolver++"``: the data-prediction singlestep DPM-Solver++ step."""
    if algorithm == "dpmsolver++":
        return step_dpmpp_singlestep(denoiser, x, sigma, sigma_next, order=order)
    n = x.ndim
    final = sigma_next == 0
    t = torch.where(final, sigma / 2, sigma_next)  # any positive value: final rows are replaced
    h = torch.log(sigma / t)  # lambda_t - lambda_s
    denoised = denoiser(x, sigma)
    e_s = to_d(x, sigma, denoised)
    a = lambda v: append_dims(v, n)
    if order == 1:
        # DPM-Solver-1 = DDIM: x_t = x_s - sigma_t (e^h - 1) e_s.
        out = x + a(t - sigma) * e_s
    elif order == 2:
        r1 = 0.5
        s1 = sigma * torch.exp(-r1 * h)
        # Intermediate point u at lambda_s + r1 h.
        u = x + a(s1 - sigma) * e_s
        e_1 = to_d(u, s1, denoiser(u, s1))
        # Second-order update.
        out = x + a(t - sigma) * e_s + a((t - sigma) / (2 * r1)) * (e_1 - e_s)
    elif order == 3:
        r1, r2 = 1 / 3, 2 / 3
        s1, s2 = sigma * torch.exp(-r1 * h), sigma * torch.exp(-r2 * h)
        phi_1 = torch.expm1(h)
        phi_2 = phi_1 / h - 1
        phi_12 = torch.expm1(r2 * h)
        phi_22 = phi_12 / (r2 * h) - 1
        # First intermediate point u1 at lambda_s + r1 h.
        u1 = x + a(s1 - sigma) * e_s
        e_1 = to_d(u1, s1, denoiser(u1, s1))
        # Second intermediate point u2 at lambda_s + r2 h.
        u2 = x - a(s2 * phi_12) * e_s - a((r2 / r1) * s2 * phi_22) * (e_1 - e_s)
        e_2 = to_d(u2, s2, denoiser(u2, s2))
        # Third-order update.
        out = x - a(t * phi_1) * e_s - a(t * phi_2 / r2) * (e_2 - e_s)
    else:
        raise SamplerError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    return where_rows(final, denoised, out)


def step_dpmpp_singlestep(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor, *, order: int = 1
) -> Tensor:
    """One singlestep DPM-Solver++ step on the data prediction (Lu et al. 2022b, Alg. 1:
    DPM-Solver++(2S), r1 = 1/2; App. A: DPM-Solver++(3S), r1 = 1/3, r2 = 2/3), in EDM
    coordinates: ``x_t = (sigma_t/sigma_s) x - (e^{-h} - 1) D_s + ...``."""
    n = x.ndim
    final = sigma_next == 0
    t = torch.where(final, sigma / 2, sigma_next)  # any positive value: final rows are replaced
    h = torch.log(sigma / t)
    denoised = denoiser(x, sigma)
    a = lambda v: append_dims(v, n)
    # DPM-Solver++-1 from sigma (the base of every order).
    first = a(t / sigma) * x - a(torch.expm1(-h)) * denoised
    if order == 1:
        out = first
    elif order == 2:
        r1 = 0.5
        s1 = sigma * torch.exp(-r1 * h)
        # Intermediate point at lambda_s + r1 h and its data prediction.
        u = a(s1 / sigma) * x - a(torch.expm1(-r1 * h)) * denoised
        d_1 = denoiser(u, s1)
        # Second-order update: D = (1 - 1/(2 r1)) D_s + 1/(2 r1) D_1.
        out = first - a(torch.expm1(-h) / (2 * r1)) * (d_1 - denoised)
    elif order == 3:
        r1, r2 = 1 / 3, 2 / 3
        s1, s2 = sigma * torch.exp(-r1 * h), sigma * torch.exp(-r2 * h)
        # First intermediate point at lambda_s + r1 h.
        u1 = a(s1 / sigma) * x - a(torch.expm1(-r1 * h)) * denoised
        d_1 = denoiser(u1, s1)
        # Second intermediate point at lambda_s + r2 h (second-order, phi_2 form).
        phi_22 = torch.expm1(-r2 * h) / (r2 * h) + 1
        u2 = (
            a(s2 / sigma) * x
            - a(torch.expm1(-r2 * h)) * denoised
            + a((r2 / r1) * phi_22) * (d_1 - denoised)
        )
        d_2 = denoiser(u2, s2)
        # Third-order update.
        phi_2 = torch.expm1(-h) / h + 1
        out = first + a(phi_2 / r2) * (d_2 - denoised)
    else:
        raise SamplerError(f"DPM-Solver order must be 1, 2 or 3, got {order!r}")
    return where_rows(final, denoised, out)


@torch.no_grad()
def sample_dpm_solver(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 3,
    orders: list[int] | None = None,
    algorithm: str = "dpmsolver",
) -> Tensor:
    """Singlestep DPM-Solver (Lu et al. 2022) with one order per step.

    ``orders`` (one per step, e.g. from :func:`dpm_solver_fast_orders`) overrides the
    fixed ``order``. Steps that end at sigma = 0 are first order. ``algorithm``:
    ``dpmsolver`` (noise prediction, the paper's) or ``dpmsolver++`` (singlestep
    DPM-Solver++ on the data prediction, Lu et al. 2022b; diffusers' default).
    """
    if algorithm not in ALGORITHMS:
        raise SamplerError(
            f"unknown DPM-Solver algorithm '{algorithm}'; valid: {', '.join(ALGORITHMS)}"
        )
    grid = Grid(sigmas, x)
    if orders is None:
        orders = [order] * len(grid)
    if len(orders) != len(grid):
        raise SamplerError(f"orders has {len(orders)} entries for a grid of {len(grid)} steps")
    for i, sigma, sigma_next in grid:
        k = 1 if grid.all_final(i) else orders[i]
        x = step_dpm_solver(denoiser, x, sigma, sigma_next, order=k, algorithm=algorithm)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    lower_order_final: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), multistep on the data prediction.

    The first step is DPM-Solver++-1; a step to sigma = 0 is first order; with
    ``lower_order_final`` the last step is first order too (diffusers' option).
    """
    grid = Grid(sigmas, x)
    old_denoised: Tensor | None = None
    h_prev: Tensor | None = None
    for i, sigma, sigma_next in grid:
        denoised = denoiser(x, sigma)
        first = old_denoised is None or (lower_order_final and i == len(grid) - 1)
        x, h = step_dpmpp_2m(
            x, sigma, sigma_next, denoised, None if first else old_denoised, h_prev
        )
        old_denoised, h_prev = denoised, h
    return x


def step_dpmpp_2m(
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    denoised: Tensor,
    old_denoised: Tensor | None = None,
    h_prev: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One DPM-Solver++(2M) update from the data prediction ``denoised = D(x, sigma)``:
    first order without ``old_denoised``; rows ending at 0 take ``denoised``. Returns
    ``(x_next, h)`` (``h`` for the next step's ``h_prev``)."""
    n = x.ndim
    final = sigma_next == 0
    t = torch.where(final, sigma / 2, sigma_next)
    h = torch.log(sigma / t)
    if old_denoised is None:
        # First order: x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) D_s.
        m = denoised
    else:
        # Second order: D = (1 + 1/(2 r0)) D_s - 1/(2 r0) D_prev, r0 = h_prev / h.
        c = append_dims(h / (2 * h_prev), n)
        m = (1 + c) * denoised - c * old_denoised
    x_next = append_dims(t / sigma, n) * x - append_dims(torch.expm1(-h), n) * m
    return where_rows(final, denoised, x_next), h
