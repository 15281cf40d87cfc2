"""History steps of the multistep solvers: one step with the history given explicitly.

The step convention (:mod:`samplerlab.samplers.spec`): ``step(x, sigma, sigma_next,
denoised, history) -> x_next`` with ``denoised = D(x, sigma)`` and ``history`` the
``(x, D, sigma)`` triples of the previous states, most recent first. The caller passes as
many triples as the step's order uses (:meth:`~samplerlab.samplers.inner.Inner.history_len`:
the serial solver's warm-up and, where it lowers the order at the grid's end, that too), so
a loop of these steps over a grid is the serial sampler with its default options (tested
exactly on the analytic mixture). Coefficients are computed in float64 from the given sigmas.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import append_dims, to_d, where_rows
from .inner import History, dpmpp_2m_history_step
from .multistep import IPNDM_COEFFS, _lagrange_log_integrals, _lms_coefficients, positive_next
from .spec import multistep_entry
from .unipc import unipc_coefficients


def _a(x: Tensor):
    """Per-row float64 coefficients as factors of ``x`` (its dtype, broadcastable)."""
    return lambda v: append_dims(v.to(x.dtype), x.ndim)


def _f64(s: Tensor) -> Tensor:
    return s.to(torch.float64)


def dpmpp_3m_history_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
) -> Tensor:
    """One DPM-Solver++(3M) step (Lu et al. 2022b, the multistep third-order step;
    :func:`~samplerlab.samplers.multistep.sample_dpmpp_3m`, ``form="library"``): order
    ``len(history) + 1`` (at most 3); a step to sigma = 0 is the denoise step."""
    a = _a(x)
    s, sn = _f64(sigma), _f64(sigma_next)
    final, t = positive_next(s, sn)
    h = torch.log(s / t)
    # First-order part: x_t = (sigma_t/sigma_s) x - (e^{-h} - 1) D_s.
    x_next = a(t / s) * x - a(torch.expm1(-h)) * denoised
    if len(history) == 1:
        # Second order (2M, midpoint form): - 1/2 (e^{-h} - 1) (D_s - D_prev)/r0.
        r0 = torch.log(_f64(history[0][2]) / s) / h
        x_next = x_next - a(0.5 * torch.expm1(-h) / r0) * (denoised - history[0][1])
    elif len(history) >= 2:
        # Third order: divided differences of the last three data predictions.
        (_, d_1, s_1), (_, d_2, s_2) = history[0], history[1]
        r0 = torch.log(_f64(s_1) / s) / h
        r1 = torch.log(_f64(s_2) / _f64(s_1)) / h
        d1_0 = (denoised - d_1) / a(r0)
        d1_1 = (d_1 - d_2) / a(r1)
        d1 = d1_0 + a(r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / a(r0 + r1)
        phi_2 = torch.expm1(-h) / h + 1
        phi_3 = (torch.expm1(-h) + h) / h**2 - 0.5
        x_next = x_next + a(phi_2) * d1 - a(phi_3) * d2
    # Rows ending at sigma = 0 take the denoise step.
    return where_rows(final, denoised, x_next)


def deis_history_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
) -> Tensor:
    """One AB-DEIS step (Zhang & Chen 2023, §4; :func:`~samplerlab.samplers.multistep.
    sample_deis`): the log-rho Lagrange polynomial through the noise predictions of this
    state and the ``len(history)`` previous ones, integrated exactly over the step."""
    a = _a(x)
    s, sn = _f64(sigma), _f64(sigma_next)
    # Noise predictions eps = (x - D)/sigma, newest first.
    eps = [to_d(x, sigma, denoised), *(to_d(xp, sp, dp) for xp, dp, sp in history)]
    final, t = positive_next(s, sn)
    nodes = [torch.log(s), *(torch.log(_f64(sp)) for _, _, sp in history)]
    # x_t = x_s + sum_j c_j eps_j.
    x_next = x
    for c, e in zip(_lagrange_log_integrals(nodes, s, t), eps, strict=True):
        x_next = x_next + a(c) * e
    # Rows ending at sigma = 0 take the denoise step.
    return where_rows(final, denoised, x_next)


def ipndm_history_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
) -> Tensor:
    """One iPNDM step (Zhang & Chen 2023; :func:`~samplerlab.samplers.multistep.
    sample_ipndm`): the fixed Adams-Bashforth combination of order ``len(history) + 1`` of
    the PF-ODE slopes ``(x - D)/sigma``."""
    slopes = [to_d(x, sigma, denoised), *(to_d(xp, sp, dp) for xp, dp, sp in history)]
    coeffs = IPNDM_COEFFS[len(slopes) - 1]
    # Fixed Adams-Bashforth combination of the slopes, then a step along it.
    slope = sum(c * e for c, e in zip(coeffs, slopes, strict=True))
    return x + append_dims(sigma_next - sigma, x.ndim) * slope


def lms_history_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
) -> Tensor:
    """One linear multistep step (:func:`~samplerlab.samplers.multistep.sample_lms`): the
    Lagrange polynomial in sigma through this slope and the ``len(history)`` previous ones,
    integrated exactly over the step."""
    slopes = [to_d(x, sigma, denoised), *(to_d(xp, sp, dp) for xp, dp, sp in history)]
    nodes = [_f64(sigma), *(_f64(sp) for _, _, sp in history)]
    coeffs = _lms_coefficients(nodes, _f64(sigma), _f64(sigma_next))
    # x_{i+1} = x_i + sum_j c_j d_{i-j}.
    for c, e in zip(coeffs, slopes, strict=True):
        x = x + append_dims(c.to(x.dtype), x.ndim) * e
    return x


def unipc_history_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
) -> Tensor:
    """One UniPC-2 step, bh2 (Zhao et al. 2023, Alg. 3; :func:`~samplerlab.samplers.unipc.
    sample_unipc` with its defaults) on the predicted state ``x``: the UniC corrector of
    the step that reached ``x`` (with the new output ``denoised``), then the UniP
    predictor from the corrected state.

    The serial solver corrects ``x_i = P(x_{i-1}^c)`` into ``x_i^c = C(x_{i-1}^c)``; both
    are linear in ``x_{i-1}^c`` with the same factor ``sigma_i/sigma_{i-1}`` and the same
    ``- phi_1 D_{i-1}``, so ``x_i^c = x_i - B (res_C - res_P)``, a function of the data
    predictions only: the state of the iteration is the predicted (uncorrected) state,
    whose network output the serial solver also uses for the next predictor.
    """
    order, variant = 2, "bh2"
    a = _a(x)
    s = _f64(sigma)
    lam = -torch.log(s)
    hl = [(-torch.log(_f64(sp)), dp) for _, dp, sp in history]  # (lambda, D), newest first
    if hl:
        # UniC of the step that reached x: order k_prev = the predictor's there.
        k_prev = min(order, len(hl))
        lam_p, m0 = hl[0]
        h = lam - lam_p
        rks = [(hl[m][0] - lam_p) / h for m in range(1, k_prev)]
        _, B, rhos_c = unipc_coefficients(h, rks, k_prev, variant, corrector=True)
        _, _, rhos_p = unipc_coefficients(h, rks, k_prev, variant, corrector=False)
        res_c = a(rhos_c[-1]) * (denoised - m0)
        for m, rho in enumerate(rhos_c[:-1], start=1):
            res_c = res_c + a(rho) * (hl[m][1] - m0) / a(rks[m - 1])
        res_p = torch.zeros_like(x)
        for m, rho in enumerate(rhos_p, start=1):
            res_p = res_p + a(rho) * (hl[m][1] - m0) / a(rks[m - 1])
        x = x - a(B) * (res_c - res_p)
    # UniP from the corrected state with this output and the previous ones.
    final, t = positive_next(s, _f64(sigma_next))
    k = min(order, len(hl) + 1)
    h = -torch.log(t) - lam
    rks = [(hl[m - 1][0] - lam) / h for m in range(1, k)]
    phi_1, B, rhos = unipc_coefficients(h, rks, k, variant, corrector=False)
    x_next = a(t / s) * x - a(phi_1) * denoised
    for m, rho in enumerate(rhos, start=1):
        x_next = x_next - a(B * rho) * (hl[m - 1][1] - denoised) / a(rks[m - 1])
    # Rows ending at sigma = 0 take the denoise step.
    return where_rows(final, denoised, x_next)


# The registry fields of the multistep solvers with a history step (SamplerSpec.history_step,
# history, lowers_final_order), for their default options.
HISTORY = {
    "dpmpp_2m": multistep_entry(dpmpp_2m_history_step, 1),
    "dpmpp_3m": multistep_entry(dpmpp_3m_history_step, 2, lowers_final_order=True),
    "unipc": multistep_entry(unipc_history_step, 2),
    "deis": multistep_entry(deis_history_step, 2, lowers_final_order=True),
    "ipndm": multistep_entry(ipndm_history_step, 3),
    "lms": multistep_entry(lms_history_step, 3),
}
