"""UniPC: the unified predictor-corrector of Zhao et al. (2023), data-prediction form."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import Denoiser, SamplerError, where_rows
from .multistep import positive_next, push, setup
from .noise import NoiseSource

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(
    h: Tensor, rks: list[Tensor], order: int, variant: str, corrector: bool
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(phi_1, B(h), rhos)`` of one UniP (``corrector=False``) or UniC step.

    ``hh = -h`` (data prediction), ``phi_1 = e^{hh} - 1``, ``B(h) = hh`` (bh1) or
    ``e^{hh} - 1`` (bh2). With ``h_phi_k`` the ``phi_{k+1}(hh)`` functions scaled by
    ``k!``, ``b_k = h_phi_k k! / B(h)`` and ``R[k, m] = r_m^(k-1)`` (Zhao et al. 2023, §3: the
    order conditions ``R rho = b`` of UniP-p and UniC-p); the predictor solves the system without
    the newest point (order 2 uses the paper's ``rho = 1/2``), the corrector with it
    (order 1 uses ``rho = 1/2``). ``rks`` are ``r_m = (lambda_{s_m} - lambda_s)/h`` of the
    earlier points; the corrector's extra point has ``r = 1``. Per-row tensors.
    """
    hh = -h
    phi_1 = torch.expm1(hh)
    B = hh if variant == "bh1" else phi_1
    # b_k for k = 1..order from the recursion h_phi_{k+1} = h_phi_k / hh - 1/(k+1)!.
    h_phi_k = phi_1 / hh - 1
    b = []
    for k in range(1, order + 1):
        b.append(h_phi_k * math.factorial(k) / B)
        h_phi_k = h_phi_k / hh - 1 / math.factorial(k + 1)
    r_all = [*rks, torch.ones_like(h)]
    if corrector:
        if order == 1:
            return phi_1, B, [torch.full_like(h, 0.5)]
        size = order
    else:
        if order == 1:
            return phi_1, B, []
        if order == 2:
            return phi_1, B, [torch.full_like(h, 0.5)]
        size = order - 1
    # Solve R rho = b per row (order conditions of the first `size` powers).
    R = torch.stack([torch.stack([r**k for r in r_all[:size]], -1) for k in range(size)], -2)
    rhs = torch.stack(b[:size], -1)
    rhos = torch.linalg.solve_ex(R, rhs, check_errors=False).result
    return phi_1, B, list(rhos.unbind(-1))


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = False,
) -> Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
    Sampling of Diffusion Models", Algorithms 1-3: UniC-p corrector, UniP-p predictor,
    their multistep combination UniPC-p) on the
    data prediction, as diffusers' ``UniPCMultistepScheduler`` (``predict_x0=True``).

    Each step: the corrector UniC refines the state just reached, using the network output
    at that (uncorrected) state, which also serves the next predictor, so the corrector
    costs no evaluation (NFE = steps). ``variant`` picks ``B(h)`` (``bh1``: ``h``;
    ``bh2``: ``e^h - 1``); ``order`` 1-3 with warm-up; ``lower_order_final`` caps the last
    two steps at orders 1 and 2 (diffusers' default; on grids ending at 0 it only changes
    order 3); defaults chosen on the analytic panel (benchmarks/bench_panel.py); a step to
    sigma = 0 is the denoise step and is not corrected.
    """
    if variant not in VARIANTS:
        raise SamplerError(f"unknown UniPC variant '{variant}'; valid: {', '.join(VARIANTS)}")
    grid, g, orders, a = setup(sigmas, x, order, lower_order_final)
    lam = -torch.log(g.clamp_min(1e-300))
    hist: list[Tensor] = []  # data predictions, newest last
    x_prev: Tensor | None = None  # the state the last predictor started from
    k_prev = 0
    for i, sigma, _ in grid:
        s, sn = g[i], g[i + 1]
        # Data prediction at the predicted point.
        denoised = denoiser(x, sigma)
        if corrector and x_prev is not None:
            # UniC: redo the last step from x_prev with the new output as an extra point.
            h = lam[i] - lam[i - 1]
            rks = [(lam[i - 1 - m] - lam[i - 1]) / h for m in range(1, k_prev)]
            phi_1, B, rhos = unipc_coefficients(h, rks, k_prev, variant, corrector=True)
            m0 = hist[-1]
            res = a(rhos[-1]) * (denoised - m0)
            for m, rho in enumerate(rhos[:-1], start=1):
                res = res + a(rho) * (hist[-1 - m] - m0) / a(rks[m - 1])
            x = a(g[i] / g[i - 1]) * x_prev - a(phi_1) * m0 - a(B) * res
        hist = push(hist, denoised, order)
        final, t = positive_next(s, sn)
        k = min(orders[i], len(hist))
        # UniP: the predictor from the corrected state with the last k outputs.
        h = -torch.log(t) - lam[i]
        rks = [(lam[i - m] - lam[i]) / h for m in range(1, k)]
        phi_1, B, rhos = unipc_coefficients(h, rks, k, variant, corrector=False)
        x_next = a(t / s) * x - a(phi_1) * denoised
        for m, rho in enumerate(rhos, start=1):
            x_next = x_next - a(B * rho) * (hist[-1 - m] - denoised) / a(rks[m - 1])
        # Rows ending at sigma = 0 take the denoise step.
        x_prev, k_prev = x, k
        x = where_rows(final, denoised, x_next)
    return x
