"""Stochastic DPM-Solver++ samplers: (2M) SDE, (3M) SDE and the singlestep SDE solver.

EDM sigma coordinates, ``lambda = -log sigma``, ``h = lambda_t - lambda_s``. The exact
solution of the data-prediction reverse SDE over one step (Lu et al. 2022b, "DPM-Solver++",
the SDE solvers of its appendix; Gonzalez et al. 2023, "SEEDS") is
``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + int (1+eta) e^{-(1+eta)(h - u)} x0(u) du
+ sigma_t sqrt(1 - e^{-2 eta h}) z``; ``eta = 1`` is the reverse SDE, ``eta = 0`` the ODE.
The multistep solvers share one loop (:func:`_sample_multistep_sde`: first-order part, the
method's history terms, noise); the steps shared with the ancestral samplers
(:func:`dpmpp_first_order`, :func:`add_noise`, :func:`ancestral_step_sigmas`) live here.
Every random draw comes from the per-sample ``noise`` source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .core import Denoiser, Grid, append_dims, where_rows
from .errors import SamplerError
from .multistep import d2_factor, divided_differences, grid64, positive_next, push
from .noise import NoiseSource, randn_like


def _check(eta: float, s_noise: float) -> None:
    if eta < 0 or s_noise < 0:
        raise SamplerError("eta and s_noise must be >= 0")


def _rows(v: Tensor, x: Tensor) -> Tensor:
    """Per-row coefficients ``v [B]`` (float64) as ``x``'s dtype, broadcastable against it."""
    return append_dims(v.to(x.dtype), x.ndim)


def add_noise(x: Tensor, std: Tensor, z: Tensor) -> Tensor:
    """``x + std z``: fresh noise of per-row std ``std`` (standard normals ``z``)."""
    return x + _rows(std, z) * z


def dpmpp_first_order(x: Tensor, denoised: Tensor, ratio: Tensor, h: Tensor) -> Tensor:
    """DPM-Solver++-1 (Lu et al. 2022b, first order; = DDIM) over the log-sigma step ``h =
    log(sigma / sigma_to)``, ``ratio = sigma_to / sigma``: ``ratio x - (e^{-h} - 1) D``."""
    return _rows(ratio, x) * x - _rows(torch.expm1(-h), x) * denoised


def sde_coefficients(h: Tensor, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(w0, phi_2, phi_3)``: the weights of ``D_s``, ``D1`` and ``D2`` in a DPM-Solver++
    SDE step with ``h_eta = (1 + eta) h``: ``w0 = 1 - e^{-h_eta}``, ``phi_2 = (e^{-h_eta} -
    1)/h_eta + 1`` and ``phi_3 = (e^{-h_eta} - 1 + h_eta)/h_eta^2 - 1/2`` (the exact
    integrals of ``(1+eta) e^{-(1+eta)(h-u)} (u/h)^k / k!`` over ``[0, h]``, k = 0, 1, 2,
    with ``phi_3`` entering with a minus sign: the weights of ``h D'`` and ``h^2 D''``)."""
    he = (1 + eta) * h
    w0 = -torch.expm1(-he)
    phi_2 = torch.expm1(-he) / he + 1
    phi_3 = (torch.expm1(-he) + he) / he**2 - 0.5
    return w0, phi_2, phi_3


class SDEStep(NamedTuple):
    """Step ``i`` (``sigma_s = g[i] -> sigma_t``) of the multistep SDE solvers, per row."""

    g: Tensor  # the grid [N+1, B] in float64
    i: int
    h: Tensor  # log(sigma_s / sigma_t)
    w0: Tensor  # weights of the data-prediction terms (sde_coefficients)
    phi_2: Tensor
    phi_3: Tensor

    @property
    def r0(self) -> Tensor:
        """``h_0 / h``: the previous step's length in ``lambda`` over this one's."""
        return torch.log(self.g[self.i - 1] / self.g[self.i]) / self.h


History = Callable[[Tensor, Tensor, Tensor, list[Tensor], SDEStep], Tensor]


def _sample_multistep_sde(
    history: History,
    keep: int,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource | None,
    eta: float,
    s_noise: float,
) -> Tensor:
    """The loop of the multistep DPM-Solver++ SDE solvers: the exact first-order SDE step,
    the method's ``history(x, x_next, D_s, hist, step)`` terms from the ``keep`` newest earlier
    data predictions ``hist``, and the fresh noise of the exact SDE variance. A step to
    sigma = 0 is the denoise step."""
    _check(eta, s_noise)
    grid = Grid(sigmas, x)
    g = grid64(grid, x)
    hist: list[Tensor] = []  # data predictions, newest last
    for i, sigma, _ in grid:
        s, sn = g[i], g[i + 1]
        # Data prediction at the current point.
        denoised = denoiser(x, sigma)
        final, t = positive_next(s, sn)
        h = torch.log(s / t)
        step = SDEStep(g, i, h, *sde_coefficients(h, eta))
        # First-order SDE part.
        x_next = _rows(t / s * torch.exp(-eta * h), x) * x + _rows(step.w0, x) * denoised
        # Higher-order terms from the earlier data predictions.
        x_next = history(x, x_next, denoised, hist, step)
        if eta > 0 and not grid.all_final(i):
            # Fresh noise of the exact SDE variance.
            z = randn_like(noise, x)
            x_next = add_noise(x_next, t * (-torch.expm1(-2 * eta * h)).sqrt() * s_noise, z)
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
        hist = push(hist, denoised, keep)
    return x


def _history_2m(
    x: Tensor, x_next: Tensor, denoised: Tensor, hist: list[Tensor], step: SDEStep
) -> Tensor:
    if not hist:
        return x_next
    # Second-order correction from the previous data prediction (midpoint form).
    return x_next + _rows(0.5 * step.w0 / step.r0, x) * (denoised - hist[-1])


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, the multistep second-order SDE solver;
    diffusers' ``algorithm_type="sde-dpmsolver++"``, midpoint form): with ``h_eta = (1 +
    eta) h``, ``x_t = (sigma_t/sigma_s) e^{-eta h} x + (1 - e^{-h_eta}) D_s + 1/2 (1 -
    e^{-h_eta}) (D_s - D_prev)/r0 + sigma_t sqrt(1 - e^{-2 eta h}) s_noise z``. One draw per
    step that does not end at 0; ``eta = 0`` is DPM-Solver++(2M).
    """
    return _sample_multistep_sde(_history_2m, 1, denoiser, x, sigmas, noise, eta, s_noise)


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    form: str = "library",
) -> Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022b: the SDE kernel with the third-order multistep
    expansion; k-diffusion's ``sample_dpmpp_3m_sde``): the data prediction is expanded to
    second order in ``lambda`` from the last three outputs (divided differences ``D1``,
    ``D2``) and integrated exactly against the SDE kernel (:func:`sde_coefficients`):
    ``x_t = (sigma_t/sigma_s) e^{-eta h} x + w0 D_s + phi_2 D1 - phi_3 D2 + noise``.
    The second step is second order (``phi_2`` form). ``eta = 0`` is the ODE solver.
    ``D2 ~ h^2 D''/2``, so ``form="taylor"`` weighs it ``2 phi_3`` (the Taylor term's exact
    integral); ``form="library"`` ``phi_3`` as k-diffusion (see ``sample_dpmpp_3m``).
    """
    c2 = d2_factor(form)

    def history(
        x: Tensor, x_next: Tensor, denoised: Tensor, hist: list[Tensor], step: SDEStep
    ) -> Tensor:
        a = lambda v: _rows(v, x)
        if not hist:
            return x_next
        if len(hist) == 1:
            # Second order: D1 = (D_s - D_prev)/r0.
            return x_next + a(step.phi_2 / step.r0) * (denoised - hist[-1])
        # Third order: divided differences of the last three data predictions.
        d1, d2 = divided_differences(step.g, step.i, step.h, denoised, hist, a)
        return x_next + a(step.phi_2) * d1 - a(c2 * step.phi_3) * d2

    return _sample_multistep_sde(history, 2, denoiser, x, sigmas, noise, eta, s_noise)


def ancestral_step_sigmas(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """``(sigma_down, sigma_up)`` of an ancestral step from ``sigma`` to ``sigma_next``:
    ``sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))``,
    ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)`` (the DDPM posterior for ``eta = 1``)."""
    up = torch.minimum(
        sigma_next,
        eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).clamp_min(0).sqrt(),
    )
    return (sigma_next**2 - up**2).clamp_min(0).sqrt(), up


@torch.no_grad()
def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    """DPM-Solver++ SDE, singlestep (Lu et al. 2022b: DPM-Solver++(2S), Alg. 1, with ancestral
    noise at both stages; k-diffusion's ``sample_dpmpp_sde``). Per step from ``sigma`` to
    ``sigma_next`` with the intermediate ``s = lambda + r h``: an ancestral DPM-Solver++-1
    step to ``s``, the network there, then an ancestral step to ``sigma_next`` with the
    data prediction ``(1 - 1/(2r)) D + 1/(2r) D_s``. The two noises are the increments of
    one Brownian path in sigma over ``[s, sigma]`` and ``[sigma_next, sigma]`` (what
    k-diffusion's Brownian tree gives), built from two independent per-sample draws. A
    step to sigma = 0 is the denoise step. NFE = 2N - 1.
    """
    _check(eta, s_noise)
    if not 0 < r < 1:
        raise SamplerError(f"r must be in (0, 1), got {r}")
    grid = Grid(sigmas, x)
    g = grid64(grid, x)
    for i, sigma, _ in grid:
        s0, sn = g[i], g[i + 1]
        # Data prediction at the current point.
        denoised = denoiser(x, sigma)
        if grid.all_final(i):
            x = denoised
            continue
        final, t = positive_next(s0, sn)
        h = torch.log(s0 / t)
        s1 = s0 * torch.exp(-r * h)
        # Brownian increments in sigma: W(s1) - W(s0) and W(t) - W(s0), normalised.
        z1, z2 = randn_like(noise, x), randn_like(noise, x)
        c = ((s0 - s1) / (s0 - t)).sqrt()
        n1 = z1
        n2 = _rows(c, x) * z1 + _rows((1 - c**2).clamp_min(0).sqrt(), x) * z2
        # Stage 1: ancestral DPM-Solver++-1 step to s1.
        down, up = ancestral_step_sigmas(s0, s1, eta)
        x_2 = dpmpp_first_order(x, denoised, down / s0, torch.log(s0 / down))
        x_2 = add_noise(x_2, up * s_noise, n1)
        denoised_2 = denoiser(x_2, s1.to(x.dtype))
        # Stage 2: ancestral step to t with the combined data prediction.
        fac = 1 / (2 * r)
        down, up = ancestral_step_sigmas(s0, t, eta)
        d = (1 - fac) * denoised + fac * denoised_2
        x_next = dpmpp_first_order(x, d, down / s0, torch.log(s0 / down))
        x_next = add_noise(x_next, up * s_noise, n2)
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
    return x
