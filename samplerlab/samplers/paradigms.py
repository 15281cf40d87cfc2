"""ParaDiGMS (Shih et al., NeurIPS 2023): Picard iteration with a sliding window.

The N-step trajectory ``x_{j+1} = x_j + delta_j(x_j)`` of a single-step inner solver is
solved as a fixed point (algorithms.md §2.6): on a window ``[b, e)``,

    x'_{j+1} = x_b + sum_{k=b..j} delta_k(x_k)          (Picard update, cumulative sums)

where all drifts of the window come from ONE batched network call. Step ``j`` is converged
when ``||x'_{j+1} - x_{j+1}||^2 / (d std_{j+1}^2) <= tol^2``; the window slides past the
converged prefix (by at most the window size). With ``tol = 0`` the result is the serial
solve (up to floating point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, take_rows
from .ddpm import ddpm_coefficients
from .denoisers import chunked
from .noise import NoiseSource
from .parallel import check_positive_int, check_tol, per_row_grid, predraw_noise, resolve_inner


def tolerance_scale(S: Tensor) -> Tensor:
    """``var[j]``, ``[N+1, batch]``: the squared error scale of the state ``x_j``.

    The reference scales the error of ``x_j`` by the variance of the DDPM posterior step
    that starts at ``x_j`` (also for DDIM and DPM-Solver), in VP coordinates. Our states
    are EDM states ``x = x_vp / alpha``, so the VP error is ``alpha_j^2 ||dx||^2`` and the
    VP posterior std is ``alpha_{j+1} Gamma_j`` with ``Gamma_j`` the EDM-coordinate
    posterior std of step ``j``; dividing by ``alpha_j^2`` gives the scale in our
    coordinates. The last state (and a step ending at 0) has std 0: never "converged"
    unless exactly equal.
    """
    s, s_next = S[:-1], S[1:]
    _, _, gamma = ddpm_coefficients(s, s_next.clone(), "posterior")
    alpha = (1 + S**2).rsqrt()
    std_vp = alpha[1:] * gamma  # VP posterior std of step j
    var = torch.zeros_like(S)
    var[:-1] = (std_vp / alpha[:-1]) ** 2
    return var


@torch.no_grad()
def sample_paradigms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: str = "ddim",
    inner_options: Mapping[str, Any] | None = None,
    window: int = 8,
    tol: float = 0.1,
    max_rows: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """ParaDiGMS (Shih et al. 2023, Alg. 1) over the single-step solver ``inner``.

    ``window`` time steps per sample are refined per parallel iteration (one batched
    network call of up to ``window * batch`` rows, each with its own 2-point grid).
    ``tol`` is the reference's tolerance (error relative to the DDPM posterior std of each
    step); ``tol = 0`` reproduces the serial sampler. Stochastic inner solvers (ddpm, ddim
    with eta > 0) run on noise pre-drawn in the serial order, so they reproduce the serial
    run with the same seeds. Unlike the reference (one window for the batch, advanced to
    the first step unconverged in ANY sample), every sample has its own window, so a
    sample's result does not depend on its batch; the slide is a host decision once per
    iteration (one GPU->CPU sync). ``info``, if given, receives ``iterations`` (per
    sample) and ``windows`` (the per-iteration ``(b, e)`` lists).
    """
    tol = check_tol("paradigms", tol)
    check_positive_int("paradigms", "window", window)
    if max_rows is not None:
        check_positive_int("paradigms", "max_rows", max_rows)
    spec = resolve_inner("paradigms", inner, inner_options, allow_multistep=False)
    den = chunked(denoiser, max_rows)
    batch, dev = x.shape[0], x.device
    S = per_row_grid(sigmas, batch)  # host [N+1, batch]
    N = S.shape[0] - 1
    d = x[0].numel()
    # Convergence threshold per state: err <= tol^2 * d * var (var = 0: only err = 0).
    thresh = (tol**2 * d * tolerance_scale(S)).to(dev, x.dtype)
    Z = predraw_noise(noise, x, N) if spec.stochastic else None
    # Buffer of all N+1 states, initialised to x_0 (x_T in the paper).
    X = x[None].repeat(N + 1, *([1] * x.ndim))
    # Per-sample windows [b, e) and iteration counts: host tensors, updated without a
    # Python loop over the samples.
    b = torch.zeros(batch, dtype=torch.long)
    e = torch.full((batch,), min(window, N), dtype=torch.long)
    iterations = torch.zeros(batch, dtype=torch.long)
    windows: list[list[tuple[int, int]]] = []
    cols = torch.arange(batch, device=dev)
    while bool((b < N).any()):
        lens = e - b
        W = int(lens.max())
        # Rows (w, k) of the window, w-major: state x_{b_k + w} of sample k. Indices are
        # built on the host and sent without blocking (no sync but the convergence test).
        valid = torch.arange(W)[:, None] < lens[None]  # host [W, batch]
        wi, kk = valid.nonzero(as_tuple=True)  # row-major: the order of mask indexing
        jj = b[kk] + wi
        jn = (b[None] + torch.arange(1, W + 1)[:, None]).clamp_max(N)  # [W, batch]
        idx = torch.stack([jj, kk, wi, jn[wi, kk]]).to(dev, non_blocking=True)
        jj_d, kk_d, wi_d, jv_d = idx
        jn_d = jn.to(dev, non_blocking=True)
        b_d = b.to(dev, non_blocking=True)
        rows = X[jj_d, kk_d]
        grid = torch.stack([S[jj, kk], S[jj + 1, kk]])  # host [2, R]
        draws = [Z[jj_d, kk_d]] if Z is not None else []
        # Drifts of the whole window in ONE batched call (step(x_j) - x_j).
        delta = torch.zeros((W, batch, *x.shape[1:]), device=dev, dtype=x.dtype)
        delta[wi_d, kk_d] = spec.run(take_rows(den, kk_d), rows, grid, draws) - rows
        # Picard update by cumulative sums from the window start.
        X_new = X[b_d, cols][None] + delta.cumsum(0)
        # Error of each refined state against the previous iterate.
        err = (X_new - X[jn_d, cols[None]]).reshape(W, batch, -1).pow(2).sum(-1)
        unconverged = (err > thresh[jn_d, cols[None]]).cpu() & valid  # the one sync
        # Write back, slide each window to its first unconverged step (at most `window`).
        X[jv_d, kk_d] = X_new[wi_d, kk_d]
        windows.append(list(zip(b.tolist(), e.tolist(), strict=True)))
        active = b < N
        iterations += active
        first_bad = unconverged.to(torch.uint8).argmax(0)  # first True (or 0 if none)
        ind = torch.where(unconverged.any(0), first_bad, lens)
        # States up to b+ind+1 are now exact; the slide never exceeds the window.
        nb = b + torch.minimum(1 + ind, lens).clamp_max(window)
        ne = (nb + window).clamp_max(N)
        # Newly exposed states x_{e+1..ne} start from the last state of the old window:
        # all samples in one indexed copy.
        grow = torch.where(active & (ne > e), ne - e, 0)
        total = int(grow.sum())
        if total > 0:
            ks = torch.arange(batch).repeat_interleave(grow)
            first = torch.cumsum(grow, 0) - grow
            js = e[ks] + 1 + torch.arange(total) - first[ks]
            js_d, ks_d, src_d = torch.stack([js, ks, e[ks]]).to(dev, non_blocking=True)
            X[js_d, ks_d] = X[src_d, ks_d]
        b, e = torch.where(active, nb, b), torch.where(active, ne, e)
    if info is not None:
        info.update(iterations=iterations.tolist(), windows=windows)
    return X[N]
