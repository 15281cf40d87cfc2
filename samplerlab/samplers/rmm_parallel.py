"""Parallel randomized midpoints (Gupta, Cai, Chen; ICLR 2025, after Shen & Lee 2019).

The grid is cut into windows of ``R`` steps (sub-intervals). In the integration variable
``u`` of the form (``rmm`` module: ``sigma`` for ``ddim``, OU time for ``exponential``;
``u = 1/sigma`` with the state ``z = x/sigma`` for ``data``) the ODE is ``dz/du = g``, and
sub-interval ``j`` of a window ``[u_0, u_R]`` gets a random midpoint
``u_mid_j = u_j + alpha_j (u_{j+1} - u_j)``, ``alpha_j ~ U[0, 1)``. Only the R midpoint
states ``y_j`` are unknowns; each Picard round evaluates the model at ALL of them in one
batched call and updates (Shen & Lee 2019, Alg. 2; Gupta et al. 2025, parallel predictor):

    z_j   = z_0 + sum_{l<j} (u_{l+1} - u_l) g(y_l^{(k-1)})          (grid points: no calls)
    y_j^{(k)} = z_j + (u_mid_j - u_j) g(y_{j-1}^{(k-1)})
    z_R   = z_0 + sum_l (u_{l+1} - u_l) g(y_l^{(K-1)})               (window end)

The partial sub-interval ``[u_j, u_mid_j]`` is predicted with the slope of the previous
midpoint (``g(y_{-1})``: the slope carried into the window). The reconstructed form with
the midpoint's own slope, ``(u_mid_j - u_j) g(y_j)``, makes each midpoint implicit; its
Picard rounds diverge on the first steps of a diffusion grid (the step in sigma is many
times sigma_mid there: on the analytic panel's cosine-table model the iterates reached
1e46), while the lagged slope keeps the scheme explicit and the rounds triangular: after
``k`` rounds the first ``k`` midpoints are exact, so ``K >= R`` is the serial method.

``K`` rounds per window (default ``ceil(log2 d) + 1``, the O(log d) of the theory; window
``R = floor(3K/2)`` steps by default; a window of ``P < K`` steps takes ``P`` rounds, after
which further rounds reproduce the same values bit for bit); the initial guess
``g(y^{(0)})`` is the last midpoint evaluation of the previous window (the first window: one
call at the start state), frozen over the window. The fixed point is a randomized midpoint
method with ONE call per step (:func:`rmm_parallel_fixed_point`, the serial computation it
converges to, tested); grid points are never evaluated. A final step to sigma = 0 is the
denoise step ``x <- D(x, sigma)`` (one more call).

``corrector_steps > 0`` adds, at every window end with sigma > 0, the parallel
underdamped-Langevin corrector (:func:`samplerlab.samplers.langevin.parallel_uld`:
randomized-midpoint ULD steps targeting ``p_sigma``, solved by Picard rounds over the
whole corrector chain, one batched call per round).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .core import Denoiser, Grid, SamplerError, append_dims, to_d
from .ddim import step_euler
from .denoisers import chunked
from .langevin import parallel_uld
from .noise import NoiseSource, default_noise
from .rmm import check_form, midpoint_sigma, step_rmm


def default_rounds(dim: int) -> int:
    """``ceil(log2 d) + 1`` Picard rounds per window (at least 2)."""
    return max(2, math.ceil(math.log2(max(dim, 1))) + 1)


def _u(s: Tensor, form: str) -> Tensor:
    if form == "data":
        return 1 / s
    return 0.5 * torch.log1p(s**2) if form == "exponential" else s


def _to_z(x: Tensor, s: Tensor, form: str) -> Tensor:
    return x / append_dims(s, x.ndim) if form == "data" else x


def _to_x(z: Tensor, s: Tensor, form: str) -> Tensor:
    return z * append_dims(s, z.ndim) if form == "data" else z


def _g(y: Tensor, s: Tensor, D: Tensor, form: str) -> Tensor:
    """``dz/du`` at the state ``y`` at ``s`` with the model output ``D = D(y, s)``."""
    if form == "data":
        return D
    eps = to_d(y, s, D)
    return eps if form == "ddim" else eps * append_dims((1 + s**2) / s, eps.ndim)


def _window_plan(grid: Grid) -> tuple[int, str]:
    """(steps solved by windows, how the last step is taken): the first N - 1 steps by
    windows; the last is the denoise step where every row's grid ends at 0, else one
    sequential randomized-midpoint step (:func:`step_rmm`: the denoise step on the rows of
    a per-row grid that end at 0), so a row's result does not depend on its batch."""
    return grid.steps - 1, ("denoise" if grid.all_final(grid.steps - 1) else "rmm")


def _last_step(den: Denoiser, x: Tensor, grid: Grid, how: str, source: NoiseSource, form: str):
    if how == "denoise":
        return step_euler(den, x, grid.dev[-2], grid.dev[-1])
    alpha = source.rand((x.shape[0],), device=x.device, dtype=x.dtype)
    return step_rmm(den, x, grid.dev[-2], grid.dev[-1], alpha, form=form)


def _check(R: int, K: int | None, corrector_steps: int) -> None:
    for key, val, lo in (("R", R, 1), ("K", K, 1), ("corrector_steps", corrector_steps, 0)):
        if key == "K" and val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise SamplerError(f"rmm_parallel option {key} must be an integer >= {lo}, got {val!r}")


def _defaults(R: int | None, K: int | None, dim: int) -> tuple[int, int]:
    """``K = ceil(log2 d) + 1`` and ``R = floor(3K/2)`` unless given. R was chosen on the
    analytic panel (``R = K``: the serial form exactly; ``2K`` missed the sequential error
    by 10x on the narrow-mode EDM model at N = 20; ``3K/2`` stayed within 1.3x everywhere)."""
    K = default_rounds(dim) if K is None else K
    return ((3 * K) // 2 if R is None else R), K


def _windows(steps: int, R: int) -> list[int]:
    """The window lengths ``P`` of a grid of ``steps`` (the last step is not windowed)."""
    return [min(R, steps - 1 - start) for start in range(0, steps - 1, R)]


def rmm_parallel_rounds(
    steps: int, R: int | None = None, K: int | None = None, final: bool = True, dim: int = 64
) -> int:
    """Sequential network calls of :func:`sample_rmm_parallel` without corrector on a grid
    of ``steps`` (``final``: ending in 0): one start call, K per window, one denoise
    (two calls for a last step that does not end at 0); a window of ``P < K`` steps takes
    ``P`` rounds (exact after ``P``: the rounds are triangular).
    ``R``/``K`` unset: the defaults for dimension ``dim``."""
    R, K = _defaults(R, K, dim)
    return 1 + sum(min(K, P) for P in _windows(steps, R)) + (1 if final else 2)


def rmm_parallel_nfe(
    steps: int, R: int | None = None, K: int | None = None, final: bool = True, dim: int = 64
) -> int:
    """NFE per sample (no corrector): 1 + K per window step + 1 for the denoise step
    (``R``/``K`` unset: the defaults for dimension ``dim``)."""
    R, K = _defaults(R, K, dim)
    return 1 + sum(min(K, P) * P for P in _windows(steps, R)) + (1 if final else 2)


@torch.no_grad()
def sample_rmm_parallel(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    form: str = "ddim",
    R: int | None = None,
    K: int | None = None,
    corrector_steps: int = 0,
    gamma: float = 2.0,
    step_size: float = 0.1,
    max_rows: int | None = None,
    info: dict | None = None,
) -> Tensor:
    """Parallel randomized midpoints (module docstring): windows of ``R`` steps (default
    ``floor(3K/2)``), ``K`` Picard rounds each (default ``ceil(log2 d) + 1``), one batched call of
    R rows per sample per round. Midpoint times: one ``rand([B])`` per grid step in step order (as
    :func:`sample_rmm`). ``corrector_steps``, ``gamma``, ``step_size``: the parallel ULD
    corrector at each window end (0: none; options as in :func:`sample_rmm_pc`).
    ``max_rows`` splits calls (same results). ``info`` receives ``R`` and ``K``.
    """
    check_form(form)
    _check(R if R is not None else 1, K, corrector_steps)
    R, K = _defaults(R, K, x[0].numel())
    if not gamma > 0 or not step_size > 0:
        raise SamplerError(
            f"rmm_parallel: gamma and step_size must be > 0, got {gamma}, {step_size}"
        )
    den = chunked(denoiser, max_rows)
    grid = Grid(sigmas, x)
    source = default_noise(noise)
    B, shape = x.shape[0], x.shape[1:]
    n = x.ndim
    windowed, final = _window_plan(grid)
    G_prev: Tensor | None = None  # g at the last midpoint evaluated (initial guess)
    for start in range(0, windowed, R):
        P = min(R, windowed - start)
        # Midpoint times: one rand([B]) per grid step, in step order.
        alpha = torch.stack([source.rand((B,), device=x.device, dtype=x.dtype) for _ in range(P)])
        s, s_next = grid.dev[start : start + P], grid.dev[start + 1 : start + P + 1]  # [P, B]
        s_mid = midpoint_sigma(s, s_next, alpha, form)
        u, u_next, u_mid = _u(s, form), _u(s_next, form), _u(s_mid, form)
        du = append_dims(u_next - u, n + 1)  # [P, B, 1...]
        dm = append_dims(u_mid - u, n + 1)
        z0 = _to_z(x, s[0], form)
        if G_prev is None:
            # The first window: the model at the start state.
            G_prev = _g(x, s[0], den(x, s[0]), form)
        # Initial guess: the last evaluation, frozen over the window.
        G = G_prev.expand(P, *x.shape)
        for _ in range(min(K, P)):
            # Grid points and midpoints from the lagged slopes (no network calls).
            zj = z0 + torch.cat([torch.zeros_like(G[:1]), (du * G).cumsum(0)[:-1]])
            y = _to_x(zj + dm * torch.cat([G_prev[None], G[:-1]]), s_mid, form)
            # One batched call at every midpoint of the window.
            flat, sm = y.reshape(-1, *shape), s_mid.reshape(-1)
            G = _g(flat, sm, den(flat, sm), form).view(P, B, *shape)
        # Window end from the last round's slopes.
        x = _to_x(z0 + (du * G).sum(0), s_next[-1], form)
        G_prev = G[-1]
        if corrector_steps > 0 and not grid.any_final(start + P - 1):
            x = parallel_uld(
                den,
                x,
                s_next[-1],
                source,
                steps=corrector_steps,
                rounds=K,
                gamma=gamma,
                step_size=step_size,
            )
            G_prev = None  # the corrector moved the state: evaluate afresh
    # The last step to sigma = 0: the denoise step.
    x = _last_step(den, x, grid, final, source, form)
    if info is not None:
        info.update(R=R, K=K)
    return x


@torch.no_grad()
def rmm_parallel_fixed_point(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    form: str = "ddim",
) -> Tensor:
    """The serial computation :func:`sample_rmm_parallel` converges to (``K >= R``, no
    corrector): randomized midpoints with ONE call per step, the midpoint predicted with
    the slope of the previous midpoint (the start state's for the first step),
    ``y_j = z_j + (u_mid_j - u_j) g_{j-1}``, ``z_{j+1} = z_j + (u_{j+1} - u_j) g(y_j)``; the
    same midpoint draws; the final step to 0 is the denoise step."""
    check_form(form)
    grid = Grid(sigmas, x)
    source = default_noise(noise)
    windowed, final = _window_plan(grid)
    B = x.shape[0]
    alphas = [source.rand((B,), device=x.device, dtype=x.dtype) for _ in range(windowed)]
    G = _g(x, grid.dev[0], denoiser(x, grid.dev[0]), form)
    for j in range(windowed):
        s, s_next = grid.dev[j], grid.dev[j + 1]
        s_mid = midpoint_sigma(s, s_next, alphas[j], form)
        z = _to_z(x, s, form)
        # Predictor to the midpoint with the previous slope; quadrature with the midpoint's.
        y = _to_x(z + append_dims(_u(s_mid, form) - _u(s, form), x.ndim) * G, s_mid, form)
        G = _g(y, s_mid, denoiser(y, s_mid), form)
        x = _to_x(z + append_dims(_u(s_next, form) - _u(s, form), x.ndim) * G, s_next, form)
    return _last_step(denoiser, x, grid, final, source, form)
