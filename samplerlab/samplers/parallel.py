"""Shared machinery of the parallel-in-time samplers (SRDS, ParaDiGMS).

* :class:`FirstCall` serves the first network call of an inner run from known or shared
  rows (SRDS: ``G_i`` and the first sub-step of ``F_i`` start from the same state);
* :func:`predraw_noise` draws every step's noise up front, in the serial sampler's order,
  so that serial and parallel runs of a stochastic solver agree;
* :class:`ShardedDenoiser` / :class:`DistributedDenoiser` (in ``sharding``) split a
  batched call's rows over devices or processes;
* the inner solver arrives resolved by the registry (:class:`~.inner.Inner`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError, check_grid
from .noise import NoiseSource, randn_like
from .sharding import DistributedDenoiser, ShardedDenoiser

__all__ = ["DistributedDenoiser", "FirstCall", "ShardedDenoiser"]


class FirstCall:
    """A denoiser whose FIRST call is assembled from known and shared rows.

    Args:
        denoiser: the network.
        rows: the row count the first call must have.
        src: host ``[rows]`` long tensor or None: row ``r``'s first-call output is that of
            row ``src[r]`` (same state, same sigma); only representatives are evaluated.
        known: ``(index, D)``: host index of rows whose first-call output ``D`` is already
            known (computed by an earlier call on the same state and sigma).

    Later calls go straight to ``denoiser``. The first call's full output is kept in
    :attr:`first` (for reuse by a later call on the same rows).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        rows: int,
        src: Tensor | None = None,
        known: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.denoiser, self.rows = denoiser, rows
        self.src, self.known = src, known
        self.first: Tensor | None = None
        self.used = False

    def __getattr__(self, name: str) -> Any:
        if name in ("denoiser", "rows", "src", "known", "first", "used"):
            raise AttributeError(name)
        return getattr(self.denoiser, name)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.used:
            return self.denoiser(x, sigma)
        self.used = True
        if x.shape[0] != self.rows:
            raise SamplerError(f"inner solver's first call has {x.shape[0]} rows, not {self.rows}")
        # Rows to evaluate: representatives whose output is not known yet (host-side).
        need = torch.ones(self.rows, dtype=torch.bool)
        if self.src is not None:
            need &= self.src == torch.arange(self.rows)
        if self.known is not None:
            need[self.known[0]] = False
        out = torch.empty_like(x)
        if bool(need.all()):
            out = self.denoiser(x, sigma)
        else:
            idx = need.nonzero().flatten().to(x.device, non_blocking=True)
            if len(idx):
                out[idx] = self.denoiser(x[idx], sigma[idx])
            if self.known is not None:
                out[self.known[0].to(x.device, non_blocking=True)] = self.known[1]
        if self.src is not None:
            out = out[self.src.to(x.device, non_blocking=True)]
        self.first = out
        return out


def predraw_noise(noise: NoiseSource | None, x: Tensor, steps: int) -> Tensor:
    """``[steps, B, ...]``: one ``randn_like(noise, x)`` per step, in step order.

    This is exactly the sequence of draws the serial single-step samplers make (the
    foundation's convention), so a parallel run replays the serial run's noise.
    """
    return torch.stack([randn_like(noise, x) for _ in range(steps)])


def per_row_grid(sigmas: Tensor, batch: int) -> Tensor:
    """The host float64 grid as ``[N+1, batch]`` (a shared ``[N+1]`` grid is expanded)."""
    s = check_grid(sigmas)
    if s.ndim == 1:
        return s[:, None].expand(-1, batch).contiguous()
    if s.shape[1] != batch:
        raise SamplerError(f"per-row sigmas have {s.shape[1]} columns but x has {batch} rows")
    return s


def check_tol(sampler: str, tol: float) -> float:
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise SamplerError(f"{sampler}: tol must be a number >= 0, got {tol!r}") from None
    if not tol >= 0 or tol == float("inf"):
        raise SamplerError(f"{sampler}: tol must be a finite number >= 0, got {tol!r}")
    return tol


def check_positive_int(sampler: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SamplerError(f"{sampler}: {key} must be an integer >= 1, got {value!r}")
    return value


def relative_change(new: Tensor, old: Tensor) -> Tensor:
    """``[B]``: per-sample relative RMS change ``||new - old|| / ||new||`` (2-norm over each
    sample's elements; the ``1/sqrt(d)`` of an RMS cancels), the convergence measure of the
    parallel samplers. A sample with ``new = 0`` counts as changed unless ``old = 0`` too."""
    B = new.shape[0]
    num = (new - old).reshape(B, -1).pow(2).sum(1)
    den = new.reshape(B, -1).pow(2).sum(1)
    return (num / den.clamp_min(torch.finfo(den.dtype).tiny)).sqrt()
