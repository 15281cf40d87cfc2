"""Langevin Monte Carlo and its Poisson-midpoint forms (Kandasamy & Nagaraj, NeurIPS 2024).

Targets ``pi(x) ∝ exp(-F(x))`` given the drift ``b(x) = -grad F(x)``:

* overdamped (OLMC): ``dX = b(X) dt + sqrt(2) dB``; :func:`lmc` is Euler-Maruyama,
  :func:`plmc_olmc` the Poisson midpoint step over K sub-steps of size ``step/K``
  (the OLMC recursion of Kandasamy & Nagaraj 2024 with sub-step ``step/K``: ``X_{i+1} = X_i +
  (step/K) b(X_i) + sqrt(2 step/K) Z_i``);
* underdamped (ULMC): ``dX = V dt``, ``dV = (b(X) - gamma V) dt + sqrt(2 gamma) dB`` with
  stationary law ``pi(x) N(v; 0, I)``; :func:`ulmc` integrates the OU part exactly with the
  drift frozen over a step (the jointly Gaussian ``(W_x, W_v)`` of Cheng, Chatterji, Bartlett &
  Jordan 2018, the discretisation of their Eq. 1 with ``u = 1``),
  :func:`plmc_ulmc` is its Poisson midpoint form;
* :func:`uld_randomized_midpoint_step`: the randomized-midpoint ULD step with jointly
  Gaussian ``(W1, W2, W3)`` (Shen & Lee 2019, Alg. 1), used by the RMM corrector.

Every random quantity is drawn through a :class:`NoiseSource` with the chain index as the
leading dimension, so chain ``k`` depends only on its own seed with ``PerSampleNoise``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .core import append_dims
from .errors import SamplerError
from .noise import NoiseSource, default_noise
from .pmm import check_pmm_options, draw_midpoints, poisson_midpoint_step

Drift = Callable[[Tensor], Tensor]


def _check(step: float, n_steps: int, gamma: float | None = None) -> None:
    if not step > 0:
        raise SamplerError(f"Langevin step must be > 0, got {step!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise SamplerError(f"n_steps must be an integer >= 0, got {n_steps!r}")
    if gamma is not None and not gamma > 0:
        raise SamplerError(f"friction gamma must be > 0, got {gamma!r}")


@torch.no_grad()
def lmc(
    drift: Drift, x: Tensor, step: float, n_steps: int, noise: NoiseSource | None = None
) -> Tensor:
    """Langevin Monte Carlo: ``x <- x + step b(x) + sqrt(2 step) z`` (1 drift call per step)."""
    _check(step, n_steps)
    source = default_noise(noise)
    for _ in range(n_steps):
        z = source.randn(x.shape, device=x.device, dtype=x.dtype)
        x = x + step * drift(x) + math.sqrt(2 * step) * z
    return x


@torch.no_grad()
def plmc_olmc(
    drift: Drift,
    x: Tensor,
    step: float,
    K: int,
    n_steps: int,
    noise: NoiseSource | None = None,
    *,
    midpoints: str = "bernoulli",
) -> Tensor:
    """Poisson midpoint OLMC (PLMC): ``n_steps`` coarse steps of size ``step``, ``K`` sub-steps.

    Approximates LMC with step ``step/K`` (Kandasamy & Nagaraj 2024, OLMC form
    ``X_{i+1} = X_i + (h/K) b(X_0) + h H_i (b(X^+_i) - b(X_0)) + sqrt(2h/K) Z_i``); ``K = 1`` is
    :func:`lmc`. Expected drift calls per coarse step: ``1 + (K-1)/K``.
    """
    _check(step, n_steps)
    check_pmm_options(K, midpoints)
    source = default_noise(noise)
    B, delta = x.shape[0], step / K
    for _ in range(n_steps):
        # Increments Z_0..Z_{K-1}, then the midpoint selection H (host side).
        z = source.randn((B, K, *x.shape[1:]), device=x.device, dtype=x.dtype).transpose(0, 1)
        H, weight = draw_midpoints(source, B, K, midpoints)
        b0 = drift(x)
        x, _ = poisson_midpoint_step(
            lambda pts, rows, sub: drift(pts),
            x,
            b0,
            lambda i, s: s,
            lambda i, b: delta * b,
            math.sqrt(2 * delta) * z,
            H,
            weight,
        )
    return x


def ulmc_coefficients(delta: float, gamma: float) -> dict[str, float]:
    """Exact OU-part coefficients of one ULMC step of length ``delta`` (Cheng et al. 2018)."""
    e1 = math.exp(-gamma * delta)
    phi1 = -math.expm1(-gamma * delta) / gamma  # (1 - e^{-g d}) / g
    var_v = -math.expm1(-2 * gamma * delta)
    var_x = (2 / gamma) * (delta - 2 * phi1 + var_v / (2 * gamma))
    cov = (1 - e1) ** 2 / gamma
    return {
        "decay": e1,
        "phi1": phi1,  # v -> x and b -> v
        "phi2": (delta - phi1) / gamma,  # b -> x
        "std_v": math.sqrt(var_v),
        "cov_xv_over_std_v": cov / math.sqrt(var_v),
        "std_x_given_v": math.sqrt(max(var_x - cov**2 / var_v, 0.0)),
    }


def _ulmc_noise(c: dict[str, float], z: Tensor) -> Tensor:
    """``(W_x, W_v)`` stacked on dim 1 from standard normals ``z [B, 2, ...]`` (same path)."""
    w_v = c["std_v"] * z[:, 1]
    w_x = c["cov_xv_over_std_v"] * z[:, 1] + c["std_x_given_v"] * z[:, 0]
    return torch.stack([w_x, w_v], 1)


def _ulmc_maps(c: dict[str, float]) -> tuple[Callable, Callable]:
    def A(i: int, s: Tensor) -> Tensor:
        return torch.stack([s[:, 0] + c["phi1"] * s[:, 1], c["decay"] * s[:, 1]], 1)

    def G(i: int, b: Tensor) -> Tensor:
        return torch.stack([c["phi2"] * b, c["phi1"] * b], 1)

    return A, G


@torch.no_grad()
def ulmc(
    drift: Drift,
    x: Tensor,
    v: Tensor,
    step: float,
    n_steps: int,
    noise: NoiseSource | None = None,
    *,
    gamma: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """Underdamped LMC with exact OU-part integration and the drift frozen over each step."""
    _check(step, n_steps, gamma)
    source = default_noise(noise)
    c = ulmc_coefficients(step, gamma)
    A, G = _ulmc_maps(c)
    s = torch.stack([x, v], 1)
    for _ in range(n_steps):
        z = source.randn((x.shape[0], 1, 2, *x.shape[1:]), device=x.device, dtype=x.dtype)
        s = A(0, s) + G(0, drift(s[:, 0])) + _ulmc_noise(c, z[:, 0])
    return s[:, 0], s[:, 1]


@torch.no_grad()
def plmc_ulmc(
    drift: Drift,
    x: Tensor,
    v: Tensor,
    step: float,
    K: int,
    n_steps: int,
    noise: NoiseSource | None = None,
    *,
    gamma: float = 2.0,
    midpoints: str = "bernoulli",
) -> tuple[Tensor, Tensor]:
    """Poisson midpoint ULMC: approximates :func:`ulmc` with step ``step/K`` (same noise law).

    State ``(x, v)``; each sub-step integrates the OU part exactly with the drift frozen at
    ``b0 + K H_i c_i``; the pair ``(W_x, W_v)`` of sub-step ``i`` is shared by interpolation
    and update. ``K = 1`` is :func:`ulmc` (same draws).
    """
    _check(step, n_steps, gamma)
    check_pmm_options(K, midpoints)
    source = default_noise(noise)
    c = ulmc_coefficients(step / K, gamma)
    A, G = _ulmc_maps(c)
    B = x.shape[0]
    s = torch.stack([x, v], 1)
    for _ in range(n_steps):
        z = source.randn((B, K, 2, *x.shape[1:]), device=x.device, dtype=x.dtype)
        W = torch.stack([_ulmc_noise(c, z[:, i]) for i in range(K)])
        H, weight = draw_midpoints(source, B, K, midpoints)
        s, _ = poisson_midpoint_step(
            lambda pts, rows, sub: drift(pts),
            s,
            drift(s[:, 0]),
            A,
            G,
            W,
            H,
            weight,
            position=lambda st: st[:, 0],
        )
    return s[:, 0], s[:, 1]


def _f3(a: Tensor) -> Tensor:
    """``a - 2(1 - e^{-a}) + (1 - e^{-2a})/2`` without cancellation (~ a^3/3 for small a)."""
    series = a**3 / 3 - a**4 / 4 + 7 * a**5 / 60
    exact = a + 2 * torch.expm1(-a) - torch.expm1(-2 * a) / 2
    return torch.where(a < 1e-3, series, exact)


def uld_midpoint_cholesky(delta: Tensor, gamma: Tensor, alpha: Tensor) -> Tensor:
    """Per-row factor ``L [B, 3, 3]``, ``L L^T = Cov(W1, W2, W3)`` (Shen & Lee 2019, Alg. 1).

    ``W1``: position noise at ``alpha delta``; ``W2, W3``: position and velocity noise at
    ``delta``, all from the same Brownian path. Computed in float64; pivots are clamped at 0
    so a (numerically) singular covariance (``alpha -> 0``) stays finite.
    """
    d, g, al = (t.to(torch.float64) for t in (delta, gamma, alpha))
    ad, c = al * d, (1 - al) * d
    e_c = torch.exp(-g * c)
    var1 = 2 / g**2 * _f3(g * ad)
    var2 = 2 / g**2 * _f3(g * d)
    var3 = -torch.expm1(-2 * g * d)
    cov23 = torch.expm1(-g * d) ** 2 / g
    one_m = -torch.expm1(-g * ad)  # 1 - e^{-g a d}
    one_m2 = -torch.expm1(-2 * g * ad)
    cov12 = 2 / g * (ad - (1 + e_c) * one_m / g + e_c * one_m2 / (2 * g))
    cov13 = 2 * e_c * (one_m / g - one_m2 / (2 * g))
    C = torch.stack(
        [
            torch.stack([var1, cov12, cov13], -1),
            torch.stack([cov12, var2, cov23], -1),
            torch.stack([cov13, cov23, var3], -1),
        ],
        -2,
    )
    # Cholesky in the order (W3, W2, W1): well-conditioned pivots first.
    P = C.flip((1, 2))  # reversed order, no index tensor (no host->device copy)
    L = torch.zeros_like(P)
    for j in range(3):
        piv = (P[:, j, j] - (L[:, j, :j] ** 2).sum(-1)).clamp_min(0).sqrt()
        L[:, j, j] = piv
        safe = torch.where(piv > 0, piv, torch.ones_like(piv))
        for k in range(j + 1, 3):
            val = (P[:, k, j] - (L[:, k, :j] * L[:, j, :j]).sum(-1)) / safe
            L[:, k, j] = torch.where(piv > 0, val, torch.zeros_like(val))
    # Back to the order (W1, W2, W3): W = L_perm z with rows permuted.
    return L.flip(1)


def uld_randomized_midpoint_step(
    score: Drift,
    x: Tensor,
    v: Tensor,
    delta: Tensor,
    gamma: Tensor,
    alpha: Tensor,
    z: Tensor,
) -> tuple[Tensor, Tensor]:
    """One randomized-midpoint ULD step (Shen & Lee 2019, Alg. 1).

    Per-row ``delta, gamma, alpha [B]``; ``z [B, 3, ...]`` standard normals mapped to the
    jointly Gaussian ``(W1, W2, W3)`` by one Cholesky factor per row. 2 score calls.
    """
    n = x.ndim
    L = uld_midpoint_cholesky(delta, gamma, alpha).to(x.dtype)  # [B, 3, 3]
    W = torch.einsum("bij,bj...->bi...", L, z)
    a = lambda t: append_dims(t.to(x.dtype), n)
    d, g, al = a(delta), a(gamma), a(alpha)
    ad = al * d
    s0 = score(x)
    # Midpoint position at time alpha*delta (drift frozen at s(x)).
    phi_a = -torch.expm1(-g * ad) / g
    x_mid = x + phi_a * v + (ad - phi_a) / g * s0 + W[:, 0]
    s_mid = score(x_mid)
    # Endpoint: exact OU part + unbiased one-point quadrature of the drift integral.
    phi = -torch.expm1(-g * d) / g
    x_new = x + phi * v + d * (-torch.expm1(-g * (1 - al) * d) / g) * s_mid + W[:, 1]
    v_new = torch.exp(-g * d) * v + d * torch.exp(-g * (1 - al) * d) * s_mid + W[:, 2]
    return x_new, v_new


@torch.no_grad()
def parallel_uld(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigma: Tensor,
    noise: NoiseSource,
    *,
    steps: int,
    rounds: int,
    gamma: float = 2.0,
    step_size: float = 0.1,
) -> Tensor:
    """Parallel underdamped-Langevin corrector targeting ``p_sigma`` (Gupta et al. 2025,
    parallel corrector, after Anari, Chewi, Vuong 2024; Shen & Lee 2019 Picard form).

    The chain of ``steps`` randomized-midpoint ULD steps of the sequential corrector
    (``rmm.corrector_uld``: score ``(D(x, sigma) - x) / sigma^2``, step ``step_size sigma``,
    friction ``gamma / sigma``, ``v_0 ~ N(0, I)``; the same draws in the same order) is solved
    by Picard rounds: each round recomputes the whole chain from the previous round's
    scores (no network calls) and then evaluates the score at ALL its ``2 steps`` points
    (grid positions and midpoints) in ONE batched call. The first guess is the score at
    ``x`` everywhere (one call). After ``2 steps`` rounds the chain equals the sequential
    corrector; ``rounds`` (e.g. O(log d)) stops earlier. Returns the final position.
    """
    B, n, shape = x.shape[0], x.ndim, x.shape[1:]
    s2 = append_dims(sigma, n) ** 2
    delta, fric = step_size * sigma, gamma / sigma
    # All draws up front, in the sequential corrector's order.
    v0 = noise.randn(x.shape, device=x.device, dtype=x.dtype)
    draws = []
    for _ in range(steps):
        alpha = noise.rand((B,), device=x.device, dtype=x.dtype)
        z = noise.randn((B, 3, *shape), device=x.device, dtype=x.dtype)
        draws.append((alpha, z))
    score0 = (denoiser(x, sigma) - x) / s2
    scores = [score0] * (2 * steps)  # lagged scores at the chain's points, in call order

    def chain(scores: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The chain with the given scores; returns the end and the points it used."""
        it = iter(scores)
        points: list[Tensor] = []

        def lagged(y: Tensor) -> Tensor:
            points.append(y)
            return next(it)

        xc, vc = x, v0
        for alpha, z in draws:
            xc, vc = uld_randomized_midpoint_step(lagged, xc, vc, delta, fric, alpha, z)
        return xc, points

    for _ in range(rounds):
        _, points = chain(scores)
        # One batched call at every point of the chain.
        pts = torch.cat(points)
        sig = sigma.repeat(len(points))
        sc = (denoiser(pts, sig) - pts) / append_dims(sig, n) ** 2
        scores = list(sc.split(B))
    return chain(scores)[0]
