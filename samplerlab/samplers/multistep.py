"""Multistep samplers on the data or noise history: DPM-Solver++(3M), DEIS, iPNDM and LMS.

All run in EDM sigma coordinates (``x = x0 + sigma n``, ``dx/dsigma = eps = (x - D)/sigma``,
``lambda = -log sigma``). Each step reuses the network outputs of earlier steps, so one step
costs one evaluation; the first steps warm up at lower order. Step coefficients are computed
per row from a float64 device copy of the grid (no host sync per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .core import Denoiser, Grid, SamplerError, append_dims, to_d, where_rows
from .noise import NoiseSource


def grid64(grid: Grid, x: Tensor) -> Tensor:
    """The grid ``[N+1, B]`` in float64 on ``x``'s device (coefficients in double precision)."""
    host = grid.host if grid.host.ndim == 2 else grid.host[:, None].expand(-1, x.shape[0])
    return host.to(x.device, torch.float64, non_blocking=True)


def coefficients(x: Tensor) -> Callable[[Tensor], Tensor]:
    """Per-row coefficients ``[B]`` (float64) as factors of ``x``: its dtype, broadcastable."""
    dtype, n = x.dtype, x.ndim
    return lambda v: append_dims(v.to(dtype), n)


def setup(
    sigmas: Tensor, x: Tensor, order: int, lower_order_final: bool
) -> tuple[Grid, Tensor, list[int], Callable[[Tensor], Tensor]]:
    """``(grid, g, orders, a)`` of a multistep solver: the :class:`Grid`, its float64 device
    copy ``g`` (:func:`grid64`), each step's order (:func:`multistep_orders`) and the
    coefficient map ``a`` (:func:`coefficients`)."""
    grid = Grid(sigmas, x)
    return (
        grid,
        grid64(grid, x),
        multistep_orders(len(grid), order, lower_order_final),
        coefficients(x),
    )


def multistep_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each step: warm-up ``min(order, i + 1)``; with ``lower_order_final`` also at
    most ``steps - i`` (the last step first order, the one before at most second order:
    diffusers' rule for its multistep solvers)."""
    if order not in (1, 2, 3):
        raise SamplerError(f"order must be 1, 2 or 3, got {order!r}")
    out = [min(order, i + 1) for i in range(steps)]
    if lower_order_final:
        out = [min(k, steps - i) for i, k in enumerate(out)]
    return out


FORMS = ("taylor", "library")


def d2_factor(form: str) -> float:
    """The weight factor of ``D2 ~ h^2 D''/2`` in a third-order multistep DPM-Solver++ step:
    2 for the Taylor expansion, 1 as the reference code has it."""
    if form not in FORMS:
        raise SamplerError(f"unknown 3M form '{form}'; valid: {', '.join(FORMS)}")
    return 2.0 if form == "taylor" else 1.0


def push(hist: list[Tensor], value: Tensor, keep: int) -> list[Tensor]:
    """``hist`` with ``value`` appended, keeping the newest ``keep`` entries."""
    return [*hist, value][-keep:] if keep > 0 else []


def divided_differences(
    g: Tensor, i: int, h: Tensor, denoised: Tensor, hist: list[Tensor], a: Callable
) -> tuple[Tensor, Tensor]:
    """``(D1, D2)`` of a third-order multistep DPM-Solver++ step at grid point ``i`` (step
    ``h`` in ``lambda``) from ``denoised`` and the last two data predictions ``hist``
    (newest last): with ``r0 = h_0/h``, ``r1 = h_1/h``, ``D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1)
    ~ h D'`` and ``D2 = (D1_0 - D1_1)/(r0+r1) ~ h^2 D''/2`` (Lu et al. 2022b, the 3M step)."""
    r0 = torch.log(g[i - 1] / g[i]) / h
    r1 = torch.log(g[i - 2] / g[i - 1]) / h
    d1_0 = (denoised - hist[-1]) / a(r0)
    d1_1 = (hist[-1] - hist[-2]) / a(r1)
    d1 = d1_0 + a(r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / a(r0 + r1)
    return d1, d2


def positive_next(sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    """``(final, t)``: rows ending at 0, and ``sigma_next`` with those rows replaced by a
    positive stand-in (their result is replaced by the denoise step)."""
    final = sigma_next == 0
    return final, torch.where(final, sigma / 2, sigma_next)


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    lower_order_final: bool = True,
    form: str = "library",
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models": the multistep third-order data-prediction solver of its
    Taylor expansion of ``x0(lambda)``), in EDM coordinates.

    With ``h = lambda_t - lambda_s``, ``r0 = h_0/h``, ``r1 = h_1/h`` and the divided
    differences ``D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1) ~ h D'``, ``D2 = (D1_0 - D1_1)/(r0+r1)
    ~ h^2 D''/2``: ``x_t = (sigma_t/sigma_s) x - (e^{-h}-1) D_s + phi_2 D1 - c phi_3 D2`` with
    ``phi_2 = (e^{-h}-1)/h + 1``, ``phi_3 = (e^{-h}-1+h)/h^2 - 1/2``. ``form="taylor"``:
    ``c = 2``, the exact integral of the second-order Taylor term (third order);
    ``form="library"``: ``c = 1``, the weight of the DPM-Solver, diffusers and k-diffusion
    code, which leaves half the second-order term out (measured global order 2). Warm-up
    steps are DPM-Solver++-1 and (2M); a step to sigma = 0 is the denoise step;
    ``lower_order_final`` caps the last two steps at orders 1 and 2 (diffusers' option).
    """
    c2 = d2_factor(form)
    grid, g, orders, a = setup(sigmas, x, 3, lower_order_final)
    hist: list[Tensor] = []  # data predictions, newest last
    for i, sigma, _ in grid:
        s, sn = g[i], g[i + 1]
        # Data prediction at the current point.
        denoised = denoiser(x, sigma)
        final, t = positive_next(s, sn)
        h = torch.log(s / t)
        k = min(orders[i], len(hist) + 1)
        # First-order part: x_t = (sigma_t/sigma_s) x - (e^{-h} - 1) D_s.
        x_next = a(t / s) * x - a(torch.expm1(-h)) * denoised
        if k == 2:
            # Second order (2M, midpoint form): - 1/2 (e^{-h} - 1) (D_s - D_prev)/r0.
            r0 = torch.log(g[i - 1] / s) / h
            x_next = x_next - a(0.5 * torch.expm1(-h) / r0) * (denoised - hist[-1])
        elif k == 3:
            # Third order: divided differences D1, D2 of the last three data predictions.
            d1, d2 = divided_differences(g, i, h, denoised, hist, a)
            phi_2 = torch.expm1(-h) / h + 1
            phi_3 = (torch.expm1(-h) + h) / h**2 - 0.5
            x_next = x_next + a(phi_2) * d1 - a(c2 * phi_3) * d2
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
        hist = push(hist, denoised, 2)
    return x


def _lagrange_log_integrals(u_nodes: list[Tensor], s: Tensor, t: Tensor) -> list[Tensor]:
    """``int_s^t l_j(log sigma) dsigma`` for the Lagrange basis ``l_j`` on the nodes
    ``u_nodes`` (log-sigma values, ``u_nodes[0] = log s``), per row, in closed form.

    With ``v = log sigma - log s`` and ``l_j(v) = a v^2 + b v + c``, an antiderivative of
    ``l_j(log sigma)`` in sigma is ``sigma Q(v)`` with ``Q = l_j - l_j' + l_j''``.
    """
    v_nodes = [u - u_nodes[0] for u in u_nodes]
    vt = torch.log(t / s)
    out = []
    for j, vj in enumerate(v_nodes):
        others = [vk for k, vk in enumerate(v_nodes) if k != j]
        if not others:
            a2, b1, c0 = torch.zeros_like(s), torch.zeros_like(s), torch.ones_like(s)
        elif len(others) == 1:
            (v1,) = others
            a2, b1, c0 = torch.zeros_like(s), 1 / (vj - v1), -v1 / (vj - v1)
        else:
            v1, v2 = others
            den = (vj - v1) * (vj - v2)
            a2, b1, c0 = 1 / den, -(v1 + v2) / den, v1 * v2 / den
        # Q = l - l' + l'' in the monomial coefficients of v.
        qa, qb, qc = a2, b1 - 2 * a2, c0 - b1 + 2 * a2
        out.append(t * (qa * vt**2 + qb * vt + qc) - s * qc)
    return out


@torch.no_grad()
def sample_deis(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> Tensor:
    """DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", §4: AB-DEIS, the multistep exponential integrator with an Adams-Bashforth
    polynomial fitted to the noise predictions), orders 1-3.

    In EDM coordinates the exponential integrator is exact for the linear part and the step
    is ``x_t = x_s + int_s^t eps(sigma) dsigma`` (the paper's rhoAB form, rho = sigma). The
    history of noise predictions is interpolated by a Lagrange polynomial in the time
    variable ``log rho`` (diffusers' ``DEISMultistepScheduler``, ``solver_type="logrho"``)
    and integrated exactly. A step to sigma = 0 is the denoise step; ``lower_order_final``
    caps the last two steps at orders 1 and 2.
    """
    grid, g, orders, a = setup(sigmas, x, order, lower_order_final)
    hist: list[Tensor] = []  # noise predictions, newest last
    for i, sigma, _ in grid:
        s, sn = g[i], g[i + 1]
        # Noise prediction at the current point.
        denoised = denoiser(x, sigma)
        eps = to_d(x, sigma, denoised)
        final, t = positive_next(s, sn)
        k = min(orders[i], len(hist) + 1)
        # Lagrange basis on log sigma of the last k points, integrated over [s, t].
        nodes = [torch.log(g[i - j]) for j in range(k)]
        coeffs = _lagrange_log_integrals(nodes, s, t)
        # x_t = x_s + sum_j c_j eps_j.
        x_next = x
        for c, e in zip(coeffs, [eps, *hist[::-1]], strict=False):
            x_next = x_next + a(c) * e
        # Rows ending at sigma = 0 take the denoise step.
        x = where_rows(final, denoised, x_next)
        hist = push(hist, eps, order - 1)
    return x


IPNDM_COEFFS = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


@torch.no_grad()
def sample_ipndm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    max_order: int = 4,
) -> Tensor:
    """Improved PNDM (iPNDM; Zhang & Chen 2023, the DEIS paper's appendix on PNDM; used by
    Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps"):
    Adams-Bashforth with the fixed uniform-step coefficients of orders 1-4 on the PF-ODE
    slope ``d = (x - D)/sigma``, warming up with lower orders instead of PNDM's Runge-Kutta
    start (k-diffusion's ``sample_ipndm``). Every step, the last one to sigma = 0
    included, is the multistep update ``x + (sigma_next - sigma) sum_j c_j d_{i-j}``.
    """
    if max_order not in (1, 2, 3, 4):
        raise SamplerError(f"max_order must be 1, 2, 3 or 4, got {max_order!r}")
    grid = Grid(sigmas, x)
    n = x.ndim
    hist: list[Tensor] = []  # slopes, newest last
    for _, sigma, sigma_next in grid:
        # Slope at the current point.
        d = to_d(x, sigma, denoiser(x, sigma))
        k = min(max_order, len(hist) + 1)
        # Fixed Adams-Bashforth combination of the last k slopes.
        slope = sum(c * e for c, e in zip(IPNDM_COEFFS[k - 1], [d, *hist[::-1]], strict=False))
        # Step along it.
        x = x + append_dims(sigma_next - sigma, n) * slope
        hist = push(hist, d, max_order - 1)
    return x


def _lms_coefficients(nodes: list[Tensor], s: Tensor, t: Tensor) -> list[Tensor]:
    """``int_s^t l_j(sigma) dsigma`` for the Lagrange basis on the sigma ``nodes`` (degree
    <= 3): two-point Gauss-Legendre is exact for cubics."""
    half, mid = (t - s) / 2, (t + s) / 2
    pts = [mid - half / 3**0.5, mid + half / 3**0.5]
    out = []
    for j, sj in enumerate(nodes):
        total = torch.zeros_like(s)
        for p in pts:
            w = torch.ones_like(s)
            for k, sk in enumerate(nodes):
                if k != j:
                    w = w * (p - sk) / (sj - sk)
            total = total + w
        out.append(total * half)
    return out


@torch.no_grad()
def sample_lms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth) on the PF-ODE in sigma (Karras et al. 2022 use it
    as k-diffusion's ``sample_lms``; diffusers' ``LMSDiscreteScheduler``): the slope
    history is interpolated by a Lagrange polynomial in sigma through the last ``order``
    points and integrated exactly over the step, the last step to sigma = 0 included.
    """
    if order not in (1, 2, 3, 4):
        raise SamplerError(f"order must be 1, 2, 3 or 4, got {order!r}")
    grid = Grid(sigmas, x)
    g = grid64(grid, x)
    n = x.ndim
    hist: list[Tensor] = []  # slopes, newest last
    for i, sigma, _ in grid:
        # Slope at the current point.
        d = to_d(x, sigma, denoiser(x, sigma))
        hist = push(hist, d, order)
        k = len(hist)
        # Integrals of the Lagrange basis on the last k sigmas over [sigma_i, sigma_{i+1}].
        coeffs = _lms_coefficients([g[i - j] for j in range(k)], g[i], g[i + 1])
        # x_{i+1} = x_i + sum_j c_j d_{i-j}.
        for c, e in zip(coeffs, hist[::-1], strict=True):
            x = x + append_dims(c.to(x.dtype), n) * e
    return x
