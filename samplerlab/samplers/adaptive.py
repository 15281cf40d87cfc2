"""Adaptive step-size DPM-Solver (Lu et al. 2022, "DPM-Solver", App. C: DPM-Solver-12 / -23).

Each sample keeps its own log-SNR position and step size, so a sample's path (and its NFE)
does not depend on which samples share its batch. Only the rows still moving are sent to
the network; the counting wrapper reports the realised NFE per sample. Accepting or
rejecting a step needs its error on the host: one host sync per round of attempts
(inherent to error control).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Denoiser, Grid, SamplerError, append_dims, take_rows, to_d
from .noise import NoiseSource


def _last_positive(host: Tensor) -> Tensor:
    """Per-row smallest positive sigma of a decreasing grid ``[N+1, B]``."""
    return torch.where(host > 0, host, torch.full_like(host, float("inf"))).min(0).values


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    safety: float = 0.9,
    h_init: float | None = None,
    h_max: float | None = None,
    max_attempts: int = 10_000,
) -> Tensor:
    """DPM-Solver with error-controlled step size (Lu et al. 2022, "DPM-Solver: A Fast ODE
    Solver for Diffusion Probabilistic Model Sampling", App. C: adaptive step size), from
    ``sigmas[0]`` to the grid's last positive sigma, then the denoise step if the grid ends
    at 0.

    Per row and attempt with step ``h`` in ``lambda = -log sigma``: the embedded pair
    DPM-Solver-(k-1) / DPM-Solver-k (``order`` k = 2: r1 = 1/2; k = 3: r1 = 1/3, r2 = 2/3,
    the lower solution reusing the first intermediate evaluation) gives ``x_low`` and
    ``x_high``; ``E = ||(x_high - x_low) / max(atol, rtol max(|x_low|, |x_prev|))||_2 /
    sqrt(dim)``; the step is accepted when ``E <= 1`` and the next ``h = h (1 + atan(f - 1))``
    with ``f = safety E^{-1/k}`` (Soderlind & Wang 2006's limiter keeps one lucky error
    estimate from taking a huge step), at most ``h_max`` and ``lambda_end - lambda``.
    ``h_max`` (and ``h_init``) default to the lambda range / the grid's step count, so
    ``steps`` is the coarsest resolution and error control refines below it (the embedded
    estimate is unreliable for steps of several units of lambda). The grid points in
    between are not used.
    """
    if order not in (2, 3):
        raise SamplerError(f"dpm_adaptive order must be 2 or 3, got {order!r}")
    if rtol <= 0 or atol <= 0 or not 0 < safety <= 1:
        raise SamplerError("rtol and atol must be > 0 and safety in (0, 1]")
    grid = Grid(sigmas, x)
    x = x.clone()  # rows are updated in place
    host = grid.host if grid.host.ndim == 2 else grid.host[:, None].expand(-1, x.shape[0])
    n, dev = x.ndim, x.device
    lam = -torch.log(host[0].clone())  # per-row position (host, float64)
    sigma_end = _last_positive(host)
    lam_end = -torch.log(sigma_end)
    span = lam_end - lam
    cap = span / len(grid) if h_max is None else torch.full_like(lam, float(h_max))
    h = cap.clone() if h_init is None else torch.full_like(lam, float(h_init))
    if bool((h <= 0).any()) or bool((cap <= 0).any()):
        raise SamplerError(f"h_init and h_max must be > 0, got {h_init}, {h_max}")
    eps_s = torch.zeros_like(x)  # cached noise prediction at each row's current point
    fresh = torch.zeros_like(lam, dtype=torch.bool)  # whether eps_s is current
    r1, r2 = (0.5, 1.0) if order == 2 else (1 / 3, 2 / 3)
    a = lambda v: append_dims(v.to(dev, x.dtype), n)
    attempts = 0
    while True:
        # Rows still moving (host state: no device sync).
        active = lam < lam_end - 1e-9 * span.abs().clamp_min(1.0)
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        attempts += 1
        if attempts > max_attempts:
            raise SamplerError(f"dpm_adaptive: no convergence after {max_attempts} attempts")
        hs = torch.minimum(h[idx], lam_end[idx] - lam[idx])
        s = torch.exp(-lam[idx])
        t = torch.exp(-(lam[idx] + hs))
        idx_dev = idx.to(dev, non_blocking=True)
        xa = x.index_select(0, idx_dev)
        den_a = take_rows(denoiser, idx_dev)  # the gathered rows' samples (conditioning)
        # Noise prediction at the current point, for rows that moved since their last one.
        need = idx[~fresh[idx]]
        if need.numel():
            need_dev = need.to(dev, non_blocking=True)
            xn, sn = x.index_select(0, need_dev), a(torch.exp(-lam[need])).flatten()
            eps_s.index_copy_(0, need_dev, to_d(xn, sn, take_rows(denoiser, need_dev)(xn, sn)))
            fresh[need] = True
        es = eps_s.index_select(0, idx_dev)
        # Intermediate point s1 = lambda + r1 h (DPM-Solver-1 step there) and its prediction.
        s1 = s * torch.exp(-r1 * hs)
        u1 = xa + a(s1 - s) * es
        e1 = to_d(u1, a(s1).flatten(), den_a(u1, a(s1).flatten()))
        if order == 2:
            # Low: DPM-Solver-1; high: DPM-Solver-2 (r1 = 1/2).
            x_low = xa + a(t - s) * es
            x_high = x_low + a((t - s) / (2 * r1)) * (e1 - es)
        else:
            # Low: DPM-Solver-2 with r1 = 1/3 (reuses e1).
            x_low = xa + a(t - s) * es + a((t - s) / (2 * r1)) * (e1 - es)
            # Second intermediate point s2 = lambda + r2 h and its prediction.
            s2 = s * torch.exp(-r2 * hs)
            phi_12 = torch.expm1(r2 * hs)
            phi_22 = phi_12 / (r2 * hs) - 1
            u2 = xa - a(s2 * phi_12) * es - a((r2 / r1) * s2 * phi_22) * (e1 - es)
            e2 = to_d(u2, a(s2).flatten(), den_a(u2, a(s2).flatten()))
            # High: DPM-Solver-3.
            phi_2 = torch.expm1(hs) / hs - 1
            x_high = xa - a(t * torch.expm1(hs)) * es - a(t * phi_2 / r2) * (e2 - es)
        # Scaled error norm per row (one host sync per round).
        delta = torch.maximum(
            torch.full_like(xa, atol), rtol * torch.maximum(x_low.abs(), xa.abs())
        )
        err = ((x_high - x_low) / delta).reshape(len(idx), -1).pow(2).mean(1).sqrt()
        err = err.to("cpu", torch.float64)
        # Accept where E <= 1: move those rows; every row gets its next step size.
        ok = err <= 1
        acc = idx[ok]
        if acc.numel():
            acc_dev = acc.to(dev, non_blocking=True)
            x.index_copy_(0, acc_dev, x_high.index_select(0, ok.nonzero().flatten().to(dev)))
            lam[acc] = lam[acc] + hs[ok]
            fresh[acc] = False
        # Next step: the I-controller factor through Soderlind's limiter 1 + atan(f - 1).
        factor = safety * err.clamp_min(1e-10) ** (-1.0 / order)
        h[idx] = torch.minimum(hs * (1 + torch.atan(factor - 1)), cap[idx])
    # Final denoise step where the grid ends at 0.
    ends = (host[-1] == 0).nonzero().flatten()
    if ends.numel():
        ends_dev = ends.to(dev, non_blocking=True)
        xe, se = x.index_select(0, ends_dev), a(sigma_end[ends]).flatten()
        x.index_copy_(0, ends_dev, take_rows(denoiser, ends_dev)(xe, se))
    return x
