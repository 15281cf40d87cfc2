"""ParaDiGMS (Shih, Belkhale, Ermon, Sadigh, Anari; NeurIPS 2023): Picard iteration with a
sliding window.

The N-step trajectory ``x_{j+1} = x_j + delta_j(x_j)`` of an inner solver is solved as a
fixed point (Shih et al. 2023, Alg. 1): on a window ``[b, e)``,

    x'_{j+1} = x_b + sum_{k=b..j} delta_k(x_k)          (Picard update, cumulative sums)

where all drifts of the window come from ONE batched network call. The window slides past
the converged prefix (by at most the window size); with ``tol = 0`` the result is the
serial solve (up to floating point).

Convergence test: the new iterate ``x'_{j+1}`` of a state is converged when its relative
change ``||x'_{j+1} - x_{j+1}|| / ||x'_{j+1}||`` (2-norms over the sample's elements, per
sample) is at most ``tol``. (The reference divides the squared change by ``d`` times the
DDPM posterior variance of the step instead; that scale vanishes near sigma = 0 and is
large at high noise, where it accepted states that left the final sample ~1e-1 from the
serial one on the analytic mixtures.) The relative change is the same measure SRDS uses.

Multistep inner solvers (those whose registry entry has a ``history_step``: DPM-Solver++(2M)
and (3M), UniPC, DEIS, iPNDM, LMS): as in the reference's multistep DPM-Solver, the history
of a step comes from its neighbours inside the window (the previous states and their
``D``, evaluated in the same batched call); the window's first state takes the states
before it and their ``D`` from the iteration that last evaluated them (the reference
uses a first-order step there), so the fixed point is the serial multistep solve itself
(with the solver's default options: its warm-up and, for DPM-Solver++(3M) and DEIS, its
lower orders at the grid's end) and ``tol = 0`` reproduces it. For UniPC the state is the
predicted one, whose output the serial solver's corrector and next predictor use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError, take_rows
from .denoisers import chunked
from .inner import DEFAULT_INNER, Inner
from .noise import NoiseSource
from .parallel import check_positive_int, check_tol, per_row_grid, predraw_noise, relative_change

# Defaults chosen on the analytic panel (benchmarks/bench_parallel.py --sweep, then four
# seed sets): window 32 took the fewest rounds at N = 1024; tol 3e-4 met 1e-3 on one seed
# set but let one sample of another (vp-d32-k10, N = 1024) end in a different mode (a
# trajectory near a mode boundary amplifies accepted errors ~200x); 1e-5 keeps it within
# 2e-3 of serial for 10-25% more rounds (N = 100: 31 vs 28, N = 1024: 114 vs 90).
WINDOW = 32  # steps per parallel iteration
TOL = 1e-5  # on the relative change of a state between iterates


def _drifts(
    inner: Inner,
    den: Denoiser,
    rows: Tensor,
    grid: Tensor,
    draws: list[Tensor],
    jj: Tensor,
    kk: Tensor,
    S: Tensor,
    bufs: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """``step(x_j) - x_j`` for the window rows ``(jj, kk)`` in ONE batched network call;
    multistep: ``bufs`` = (states, their D) as last evaluated, the steps' histories."""
    if not inner.multistep:
        return inner.run(den, rows, grid, draws) - rows
    assert bufs is not None
    Xe, Dbuf = bufs
    dev = rows.device
    g = grid.to(dev, rows.dtype, non_blocking=True)
    s, s_next = g[0], g[1]
    D = den(rows, s)
    jd, kd = jj.to(dev, non_blocking=True), kk.to(dev, non_blocking=True)
    # The D of every window state first: the history of a state is its predecessors'.
    Xe[jd, kd], Dbuf[jd, kd] = rows, D
    out = torch.empty_like(rows)
    n_hist = inner.history_len(jj, S.shape[0] - 1)  # host: the serial solver's order - 1
    for n in n_hist.unique().tolist():
        sel = (n_hist == n).nonzero().flatten()
        r, js, ks = sel.to(dev, non_blocking=True), jj[sel], kk[sel]
        hist = []
        for h in range(1, n + 1):
            jh, kh = (js - h).to(dev, non_blocking=True), ks.to(dev, non_blocking=True)
            sh = S[js - h, ks].to(dev, rows.dtype, non_blocking=True)
            hist.append((Xe[jh, kh], Dbuf[jh, kh], sh))
        out[r] = inner.step(rows[r], s[r], s_next[r], D[r], hist)
    return out - rows


@torch.no_grad()
def sample_paradigms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: Inner | str = DEFAULT_INNER,
    inner_options: Mapping[str, Any] | None = None,
    window: int = WINDOW,
    tol: float = TOL,
    max_rows: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """ParaDiGMS (Shih et al. 2023, Alg. 1) over the inner solver ``inner``.

    ``inner`` (a solver's name) and ``inner_options`` (its options) are resolved by the
    registry into an :class:`Inner` before this runs:
    ``get_sampler("paradigms")(denoiser, x, sigmas, inner="dpmpp_2m")``.

    ``window`` time steps per sample are refined per parallel iteration (one batched
    network call of up to ``window * batch`` rows, each with its own 2-point grid). A state
    is converged when its relative change between two iterates is at most ``tol`` (module
    docstring); ``tol = 0`` reproduces the serial sampler. Defaults: chosen on the analytic
    panel models (README, "SRDS and ParaDiGMS"). Stochastic inner solvers (ddpm, ddim with
    eta > 0) run on noise pre-drawn in the serial order, so they reproduce the serial run
    with the same seeds; multistep ones take their history from the neighbouring states.
    Unlike the reference (one window for the batch, advanced to the first step unconverged
    in ANY sample), every sample has its own window, so a sample's result does not depend
    on its batch; the slide is a host decision once per iteration (one GPU->CPU sync).
    ``info``, if given, receives ``iterations`` (per sample) and ``windows`` (the
    per-iteration ``(b, e)`` lists).
    """
    tol = check_tol("paradigms", tol)
    check_positive_int("paradigms", "window", window)
    if max_rows is not None:
        check_positive_int("paradigms", "max_rows", max_rows)
    inner = Inner.check("paradigms", inner)
    if inner.multistep and inner.stochastic:
        raise SamplerError("paradigms: a multistep inner solver must be deterministic")
    den = chunked(denoiser, max_rows)
    batch, dev = x.shape[0], x.device
    S = per_row_grid(sigmas, batch)  # host [N+1, batch]
    N = S.shape[0] - 1
    Z = predraw_noise(noise, x, N) if inner.stochastic else None
    # Buffer of all N+1 states, initialised to x_0 (x_T in the paper); multistep: their D.
    X = x[None].repeat(N + 1, *([1] * x.ndim))
    bufs = (torch.zeros_like(X), torch.zeros_like(X)) if inner.multistep else None
    b = torch.zeros(batch, dtype=torch.long)  # host window starts
    e = torch.full((batch,), min(window, N), dtype=torch.long)
    iterations = torch.zeros(batch, dtype=torch.long)
    windows: list[list[tuple[int, int]]] = []
    cols = torch.arange(batch)
    cols_d = cols.to(dev, non_blocking=True)
    while bool((b < N).any()):
        lens = e - b
        W = int(lens.max())
        # Rows (w, k) of the window, w-major: state x_{b_k + w} of sample k. Indices are
        # built on the host and sent without blocking (no sync but the convergence test).
        valid = torch.arange(W)[:, None] < lens[None]  # host [W, batch]
        wi, kk = valid.nonzero(as_tuple=True)
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
        delta[wi_d, kk_d] = _drifts(inner, take_rows(den, kk_d), rows, grid, draws, jj, kk, S, bufs)
        # Picard update by cumulative sums from the window start.
        X_new = X[b_d, cols_d][None] + delta.cumsum(0)
        # Relative change of each refined state against the previous iterate.
        old = X[jn_d, cols_d[None]]
        err = relative_change(X_new.flatten(0, 1), old.flatten(0, 1)).view(W, batch)
        unconverged = (err > tol).cpu() & valid  # the one sync
        # Write back, slide each window to its first unconverged step (at most `window`).
        X[jv_d, kk_d] = X_new[wi_d, kk_d]
        windows.append(list(zip(b.tolist(), e.tolist(), strict=True)))
        active = b < N
        iterations += active.long()
        first_bad = torch.where(unconverged.any(0), unconverged.long().argmax(0), lens)
        # States up to b+ind+1 are now exact; the slide never exceeds the window.
        nb = b + torch.minimum(first_bad + 1, lens)
        ne = (nb + window).clamp_max(N)
        # Newly exposed states start from the last state of the old window.
        grow = (ne - e).clamp_min(0)
        if bool((grow > 0).any()):
            gk = torch.repeat_interleave(cols, grow)
            offs = torch.arange(int(grow.sum())) - torch.repeat_interleave(
                grow.cumsum(0) - grow, grow
            )
            gj = e[gk] + 1 + offs
            gsrc = e[gk]
            g_idx = torch.stack([gj, gk, gsrc]).to(dev, non_blocking=True)
            X[g_idx[0], g_idx[1]] = X[g_idx[2], g_idx[1]]
        b, e = torch.where(active, nb, b), torch.where(active, ne, e)
    if info is not None:
        info.update(iterations=iterations.tolist(), windows=windows)
    return X[N]
