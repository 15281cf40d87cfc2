"""Poisson Midpoint Method (Kandasamy & Nagaraj, NeurIPS 2024) over a DDPM fine chain.

PMM ("PLMC") approximates K small steps of a linear-Gaussian Langevin-type recursion

    X_{i+1} = A_i X_i + G_i b(X_i, tau_i) + W_i,     i = 0..K-1   (the "fine chain")

by one coarse step that calls the drift ``b`` about twice instead of K times
(Kandasamy & Nagaraj 2024, the PLMC update): ``b0 = b(x)`` once, a frozen-drift interpolant
``xh_{i+1} = A_i xh_i + G_i b0 + W_i`` that re-uses the SAME increments ``W_i``,
``H_i ~ Bernoulli(1/K)``, midpoint drifts ``c_i = b(xh_i, tau_i) - b0`` only where ``H_i = 1``,
and the corrected update ``x_{i+1} = A_i x_i + G_i (b0 + K H_i c_i) + W_i`` (same ``W_i``).
Because the recursion is linear, the corrected path is ``x_i = xh_i + corr_i`` with
``corr_{i+1} = A_i corr_i + G_i K H_i c_i`` (the closed form of the linear recursion), which is how
it is computed here: no Gaussian increment has to be stored, and a zero correction leaves
the interpolant bit-for-bit unchanged.

For diffusion models the fine chain is the DDPM reverse chain, ``b = eps_hat`` and
``(A_i, G_i, Gamma_i) = ddpm_coefficients(sigma_i, sigma_{i+1}, variant)``
(the DDPM reverse chain of Ho et al. 2020, eq. 11, as that recursion), in EDM sigma
coordinates.

Grid convention. ``sample_pmm`` receives the FINE grid (``N*K`` sub-steps) and groups it
into ``N`` coarse steps of ``K`` consecutive sub-steps. The registry's plan maps the user's
``steps = N`` (coarse steps) to ``K = max(1, 1000 // N)`` and a fine grid of ``N*K``
sub-steps: on a denoiser with a 1000-step table the default ``time_uniform`` schedule of
``1000`` steps is exactly the full DDPM chain (timesteps 999..0, then sigma = 0), so
``sample(den, "pmm", steps=25)`` is 25 coarse steps of K = 40 over the full chain
(expected NFE ``25 * (1 + 39/40) = 49.4``). With an explicit ``K=`` the plan builds a fine
grid of ``N*K`` sub-steps instead (e.g. ``steps=25, K=10``: 250 sub-steps); a ``sigmas=``
grid given directly is grouped into coarse steps of ``K`` (its length must be a multiple).

Regime (benchmarks/bench_midpoint.py). The ``K``-weighted correction is unbiased but its
variance grows with (coarse step x drift Lipschitz constant); on the 1000-step linear-beta
chain a coarse step of ``K >= 100`` sub-steps spans about one unit of OU time near
sigma_max and the samples blow up (N = 5 or 10 coarse steps). From N ~ 25-40 (50-80 NFE)
PMM is in its regime; ``midpoints="single"`` and a ``karras`` fine grid reduce the
variance further.

Midpoint batching and synchronisation. The ``H_i`` are independent of the state, so they
are drawn on the HOST (``noise.rand(..., device='cpu')``; ``PerSampleNoise`` generators
live on the CPU): the (sample, sub-step) pairs with ``H_i = 1`` are known without a
GPU->CPU sync, the midpoint states are gathered into ONE variable-size denoiser call per
coarse step, and only the evaluated rows are counted (the realised NFE is honest). The
price is a variable batch shape per call (CUDA graphs would need bucketing); a padded
fixed-size batch of all ``K-1`` candidate rows would be graph-friendly but evaluate
``K - 1`` rows per sample per step, i.e. cost as much as the fine chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, Grid, SamplerError, append_dims, take_rows, to_d
from .ddpm import DDPM_VARIANTS, ddpm_coefficients, unit_ddpm_update
from .noise import NoiseSource, default_noise

MIDPOINTS = ("bernoulli", "single")
TABLE_STEPS = 1000  # fine-chain length the registry plans for (the usual DDPM table)

# drift(points [M, ...], rows [M] device long, sub_steps [M] device long) -> drift [M, ...]
MidpointDrift = Callable[[Tensor, Tensor, Tensor], Tensor]
LinearMap = Callable[[int, Tensor], Tensor]


def default_substeps(steps: int) -> int:
    """Sub-steps per coarse step planned for ``steps`` coarse steps on a 1000-step chain."""
    return max(1, TABLE_STEPS // steps)


def plan_pmm(steps: int, options: Mapping[str, Any] | None = None) -> tuple[int, dict[str, int]]:
    """Registry plan: ``steps`` coarse steps -> a fine grid of ``steps * K`` sub-steps.

    ``K`` is the user's option when given, else ``max(1, 1000 // steps)``.
    """
    K = (options or {}).get("K")
    K = default_substeps(steps) if K is None else K
    check_pmm_options(K, (options or {}).get("midpoints", "bernoulli"))
    return steps * K, {"K": K}


def expected_nfe(steps: int, K: int | None = None, midpoints: str = "bernoulli") -> float:
    """Expected NFE per sample: ``N (1 + (K-1)/K)`` (Bernoulli) or ``N (1 + [K>1])`` (single)."""
    K = default_substeps(steps) if K is None else K
    check_pmm_options(K, midpoints)
    extra = (K - 1) / K if midpoints == "bernoulli" else float(K > 1)
    return steps * (1 + extra)


def check_pmm_options(K: int, midpoints: str) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise SamplerError(
            f"pmm option K (sub-steps per coarse step) must be an integer >= 1, got {K!r}"
        )
    if midpoints not in MIDPOINTS:
        raise SamplerError(f"unknown pmm midpoints '{midpoints}'; valid: {', '.join(MIDPOINTS)}")


def draw_midpoints(noise: NoiseSource, batch: int, K: int, midpoints: str) -> tuple[Tensor, float]:
    """Host-side ``H [B, K]`` (bool, ``H[:, 0] = False``) and the correction weight.

    ``bernoulli``: ``H_i ~ Bernoulli(1/K)`` for ``i = 1..K-1`` (``i = 0`` is a no-op since
    ``xh_0 = x``), weight ``K``. ``single``: exactly one midpoint ``i ~ U{1..K-1}`` per sample,
    weight ``K - 1`` (the uniform-over-``0..K-1`` rule with weight K, conditioned on skipping
    the no-op ``i = 0``: still unbiased, fixed NFE = 2).
    """
    H = torch.zeros(batch, K, dtype=torch.bool)
    if K == 1:
        return H, 1.0
    if midpoints == "bernoulli":
        u = noise.rand((batch, K - 1), device=torch.device("cpu"), dtype=torch.float64)
        H[:, 1:] = u < 1.0 / K
        return H, float(K)
    u = noise.rand((batch,), device=torch.device("cpu"), dtype=torch.float64)
    i = 1 + (u * (K - 1)).floor().long().clamp_max(K - 2)
    H[torch.arange(batch), i] = True
    return H, float(K - 1)


def poisson_midpoint_step(
    drift: MidpointDrift,
    x: Tensor,
    b0: Tensor,
    A: LinearMap,
    G: LinearMap,
    W: Tensor,
    H: Tensor,
    weight: float,
    position: Callable[[Tensor], Tensor] = lambda s: s,
) -> tuple[Tensor, Tensor]:
    """One coarse PMM step of a generic linear-Gaussian fine chain (Kandasamy & Nagaraj 2024,
    the PLMC update with Bernoulli midpoints ``H_i`` and weight ``K H_i``).

    Args:
        drift: evaluates ``b`` at gathered midpoint positions for (row, sub-step) pairs.
        x: state at the start of the coarse step ``[B, ...]``.
        b0: the drift at ``x`` (already evaluated, 1 NFE).
        A: ``A(i, s)`` applies the linear part of sub-step ``i`` to a state-shaped tensor.
        G: ``G(i, b)`` maps a drift-shaped tensor into the state increment of sub-step ``i``.
        W: the Gaussian increments ``[K, B, ...]`` (state-shaped), shared by both passes.
        H: host bool ``[B, K]``, midpoints to evaluate (``H[:, 0]`` ignored).
        weight: the correction weight (``K`` for Bernoulli midpoints).
        position: the part of the state the drift depends on (ULMC: the position ``x``).

    Returns:
        ``(x_K, xh_K)``: the corrected end state and the frozen-drift interpolant.
    """
    K = W.shape[0]
    dev = x.device
    # Frozen-drift interpolation with the same increments; gather midpoints where H_i = 1.
    xh, picks = x, []
    for i in range(K):
        if i > 0:
            rows = H[:, i].nonzero().flatten()  # host tensor: no device sync
            if rows.numel() > 0:
                rows_dev = rows.to(dev, non_blocking=True)
                picks.append((i, rows_dev, position(xh)[rows_dev]))
        xh = A(i, xh) + G(i, b0) + W[i]
    if not picks:
        return xh, xh
    # Midpoint drifts c_i = b(xh_i, tau_i) - b0: all (sample, i) pairs in one call.
    rows_all = torch.cat([r for _, r, _ in picks])
    steps_all = torch.cat([torch.full_like(r, i) for i, r, _ in picks])
    c = drift(torch.cat([p for _, _, p in picks]), rows_all, steps_all) - b0[rows_all]
    # Corrected update x_i = xh_i + corr_i, corr_{i+1} = A_i corr_i + G_i (K H_i c_i).
    corr = torch.zeros_like(xh)
    pos, first = 0, picks[0][0]
    by_step = {}
    for i, r, _ in picks:
        by_step[i] = (r, slice(pos, pos + r.numel()))
        pos += r.numel()
    for i in range(first, K):
        corr = A(i, corr)
        if i in by_step:
            r, sl = by_step[i]
            kick = torch.zeros_like(b0).index_copy(0, r, weight * c[sl])
            corr = corr + G(i, kick)
    return xh + corr, xh


def _unit_midpoint_step(
    drift: MidpointDrift,
    x: Tensor,
    b0: Tensor,
    G: Tensor,
    Gamma: Tensor,
    z: Tensor,
    H: Tensor,
    weight: float,
) -> tuple[Tensor, Tensor]:
    """:func:`poisson_midpoint_step` for ``A_i = 1``, per-row scalars ``G, Gamma [K, B]``
    and increments ``W_i = Gamma_i z_i``.

    The interpolant is a sum, ``xh_i = T_i + (sum_{l<i} G_l) b0`` with the running noise sum
    ``T_i = x + sum_{l<i} Gamma_l z_l`` (one fused kernel per sub-step); the midpoints are
    gathered from it and evaluated in one call; the correction
    ``corr_K = sum_i G_i (weight H_i c_i)`` is added row by row in sub-step order (one
    ``index_add_`` per midpoint rank, so no row is added to twice in one kernel: the
    recursion's sums, deterministic on every device). ``K = 1`` is :func:`sample_ddpm`'s
    update, bit for bit.
    """
    n, dev, K = x.ndim, x.device, z.shape[0]
    cG = G.cumsum(0)  # [K, B]: sum of G over sub-steps 0..i
    rank = H.cumsum(1) - 1  # host: each midpoint's rank within its row
    a = lambda v: append_dims(v, n)
    T, gathered, rows_list, steps_list = torch.addcmul(x, a(Gamma[0]), z[0]), [], [], []
    for i in range(1, K):
        rows = H[:, i].nonzero().flatten()  # host tensor: no device sync
        if rows.numel() > 0:
            r = rows.to(dev, non_blocking=True)
            gathered.append(torch.addcmul(T[r], a(cG[i - 1, r]), b0[r]))  # xh_i of these rows
            rows_list.append(rows)
            steps_list.append(torch.full_like(rows, i))
        T.addcmul_(a(Gamma[i]), z[i])
    xh = torch.addcmul(T, a(cG[-1]), b0)
    if not gathered:
        return xh, xh
    rows_h, steps_h = torch.cat(rows_list), torch.cat(steps_list)
    order = rank[rows_h, steps_h]
    rows_d, steps_d = torch.stack([rows_h, steps_h]).to(dev, non_blocking=True)
    # Midpoint drifts c_i = b(xh_i, tau_i) - b0: all (sample, i) pairs in one call.
    c = drift(torch.cat(gathered), rows_d, steps_d) - b0[rows_d]
    kicks = a(G[steps_d, rows_d]) * (weight * c)
    # Corrected end state x_K = xh_K + sum_i G_i (weight H_i c_i), in sub-step order per row.
    corr = torch.zeros_like(xh)
    for k in range(int(order.max()) + 1):  # host-known ranks
        sel = (order == k).nonzero().flatten().to(dev, non_blocking=True)
        corr.index_add_(0, rows_d[sel], kicks[sel])
    return xh + corr, xh


def step_pmm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    z: Tensor,
    H: Tensor,
    weight: float,
    *,
    variant: str = "posterior",
    coeffs: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One coarse PMM step over the DDPM sub-steps ``sigmas[0] -> ... -> sigmas[K]``.

    Args:
        sigmas: per-row fine grid of this coarse step, ``[K+1, B]`` (device).
        z: standard-normal increments ``[K, B, ...]``.
        H, weight: from :func:`draw_midpoints`.
        coeffs: the sub-steps' ``(A, G, Gamma)``, ``[K, B]`` each (computed here if None).

    Returns ``(x_K, xh_K)`` (corrected state, frozen-drift interpolant).
    """
    n = x.ndim
    if coeffs is None:
        coeffs = ddpm_coefficients(sigmas[:-1], sigmas[1:], variant)
    A, G, Gamma = coeffs
    # b0 = eps_hat(x, sigma_0): 1 NFE.
    D0 = denoiser(x, sigmas[0])
    if z.shape[0] == 1 and variant != "sde":  # K = 1: the plain DDPM step, as sample_ddpm
        x1 = unit_ddpm_update(x, D0, -G[0] / sigmas[0], Gamma[0], z[0])
        return x1, x1
    b0 = to_d(x, sigmas[0], D0)

    def drift(pts: Tensor, rows: Tensor, sub: Tensor) -> Tensor:
        # Each midpoint at its own sub-step time sigma_i of its own row (time-varying drift).
        s = sigmas[sub, rows]
        return to_d(pts, s, take_rows(denoiser, rows)(pts, s))

    if variant != "sde":  # A_i = 1: the interpolant and correction are sums
        return _unit_midpoint_step(drift, x, b0, G, Gamma, z, H, weight)
    # Gaussian increments W_i = Gamma_i Z_i of all sub-steps in one kernel.
    W = append_dims(Gamma, n + 1) * z
    return poisson_midpoint_step(
        drift,
        x,
        b0,
        lambda i, s: append_dims(A[i], n) * s,
        lambda i, b: append_dims(G[i], n) * b,
        W,
        H,
        weight,
    )


@torch.no_grad()
def sample_pmm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    K: int = 1,
    variant: str = "posterior",
    midpoints: str = "bernoulli",
) -> Tensor:
    """Poisson Midpoint Method (Kandasamy & Nagaraj 2024) over the DDPM chain on ``sigmas``.

    ``sigmas`` is the FINE grid; it is grouped into ``len(sigmas) // K`` coarse steps of ``K``
    sub-steps (``K = 1``: plain DDPM, same noise). Per coarse step: ``K`` Gaussian increments
    (one draw ``[B, K, ...]``), then the midpoint selection (host draw). NFE per coarse step
    is ``1 + #midpoints`` (mean ``1 + (K-1)/K`` for ``bernoulli``, exactly 2 for ``single``).
    """
    check_pmm_options(K, midpoints)
    if variant not in DDPM_VARIANTS:
        raise SamplerError(f"unknown pmm variant '{variant}'; valid: {', '.join(DDPM_VARIANTS)}")
    grid = Grid(sigmas, x)
    if grid.steps % K != 0:
        raise SamplerError(
            f"pmm: the fine grid has {grid.steps} sub-steps, not a multiple of K={K}; pass "
            f"sigmas with N*K steps (or leave K to the registry plan)"
        )
    source = default_noise(noise)
    B = x.shape[0]
    # (A, G, Gamma) of every fine sub-step, computed once.
    coeffs = grid.per_step(lambda s, s_next: ddpm_coefficients(s, s_next, variant))
    for c in range(grid.steps // K):
        # Gaussian increments Z_0..Z_{K-1} (shared by interpolation and update).
        z = source.randn((B, K, *x.shape[1:]), device=x.device, dtype=x.dtype).transpose(0, 1)
        # Midpoint selection H (host-side draws: no device sync).
        H, weight = draw_midpoints(source, B, K, midpoints)
        sub = slice(c * K, (c + 1) * K)
        x, _ = step_pmm(
            denoiser,
            x,
            grid.dev[c * K : (c + 1) * K + 1],
            z,
            H,
            weight,
            variant=variant,
            coeffs=tuple(v[sub] for v in coeffs),
        )
    return x
