"""The parareal iteration of SRDS (Selvam et al. 2024, Alg. 1): blocks, propagators,
per-sample stopping and the plain (iteration by iteration) schedule.

The fine grid of N steps is split into B blocks of ``L = N/B`` steps; the coarse
propagator ``G_i`` is ONE inner step from the block start to the block end, the fine
propagator ``F_i`` the ``L`` inner steps of the block (see :mod:`samplerlab.samplers.srds`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, where_rows
from .inner import Inner
from .noise import NoiseSource
from .parallel import FirstCall, predraw_noise, relative_change

Hist = list[tuple[Tensor, Tensor, Tensor]]


def push(inner: Inner, hist: Hist, x: Tensor, D: Tensor, s: Tensor) -> Hist:
    """The history after a step from the state ``x`` at ``s`` with ``D``: most recent first."""
    return [(x, D, s), *hist][: max(inner.history, 1)]


def shift(hist: Hist, dx: Tensor, dD: Tensor) -> Hist:
    """``hist`` moved by the jump from the end state ``f`` of the fine solve it comes from
    to the new start state ``x`` (``dx = x - f``, ``dD = D(x) - D(f)``): the history keeps
    the fine trajectory's differences but starts from ``x``, so a fine solve from ``x``
    depends on the previous iterate only through those differences (zero at the fixed
    point, where ``x = f``)."""
    return [(xh + dx, Dh + dD, sh) for xh, Dh, sh in hist]


def step_with_histories(
    x: Tensor,
    s: Tensor,
    s_next: Tensor,
    D: Tensor,
    hists: list[Hist],
    *,
    inner: Inner,
    batch: int,
    caps: list[int],
) -> Tensor:
    """One multistep step (the step convention, :mod:`samplerlab.samplers.spec`) of several
    tasks stacked (task ``k``: rows ``k*batch..``), each with its own history ``hists[k]``,
    cut to ``caps[k]`` (:meth:`Inner.history_len` of its step); tasks with equally long
    histories share one elementwise step."""
    out = torch.empty_like(x)
    by_len: dict[int, list[int]] = {}
    for k, h in enumerate(hists):
        by_len.setdefault(min(len(h), caps[k]), []).append(k)
    for n_hist, ks in by_len.items():
        rows = torch.cat([torch.arange(k * batch, (k + 1) * batch) for k in ks])
        r = rows.to(x.device, non_blocking=True)
        hist = [
            tuple(torch.cat([hists[k][h][c] for k in ks]) for c in range(3)) for h in range(n_hist)
        ]
        out[r] = inner.step(x[r], s[r], s_next[r], D[r], hist)
    return out


class Parareal:
    """The blocks, grids and pre-drawn noise of one SRDS call (host-side bookkeeping)."""

    def __init__(
        self,
        den: Denoiser,
        x: Tensor,
        S: Tensor,
        inner: Inner,
        blocks: int,
        noise: NoiseSource | None,
    ) -> None:
        self.den, self.x0, self.inner = den, x, inner
        self.batch = x.shape[0]
        self.S = S  # host float64 [N+1, batch]
        self.N = S.shape[0] - 1
        self.B, self.L = blocks, self.N // blocks  # B blocks of L fine steps
        # Multistep with history_step: fine solves continue the previous block's history.
        self.carry = inner.multistep and inner.history_step is not None and not inner.stochastic
        self.Z: Tensor | None = None
        self.Zc: Tensor | None = None
        if inner.stochastic:
            # One draw per fine step, in the serial order; the coarse step of a block uses
            # the normalised sum of its fine draws (a standard normal; any fixed choice
            # keeps parareal exact, this one tracks the fine path's Brownian increment).
            self.Z = predraw_noise(noise, x, self.N)
            self.Zc = self.Z.reshape(self.B, self.L, *x.shape).sum(1) / math.sqrt(self.L)

    # Coarse and fine propagators on stacked rows.
    def coarse_grid(self, i: int) -> Tensor:
        return self.S[[i * self.L, (i + 1) * self.L]]

    def coarse_draw(self, i: int) -> list[Tensor]:
        return [self.Zc[i]] if self.Zc is not None else []

    def fine_step_grid(self, i: int, s: int) -> Tensor:
        return self.S[i * self.L + s : i * self.L + s + 2]

    def fine_step_draw(self, i: int, s: int) -> list[Tensor]:
        return [self.Z[i * self.L + s]] if self.Z is not None else []

    def fine_draws(self, i: int) -> list[Tensor]:
        return [self.Z[i * self.L + j] for j in range(self.L)] if self.Z is not None else []

    def fine_caps(self, steps: list[tuple[int, int]]) -> list[int]:
        """History lengths of the fine sub-steps ``(block, sub-step)`` (global step index)."""
        j = torch.tensor([i * self.L + s for i, s in steps], dtype=torch.long)
        return self.inner.history_len(j, self.N).tolist()

    def coarse_hist(self, i: int, xs: Any, ds: Any) -> Hist:
        """The history of ``G_i`` (when :attr:`carry`): the previous block starts ``xs[i-m]``
        with their ``D`` ``ds[i-m]`` (most recent first), cut to the order of step ``i`` of
        the B-step coarse grid (:meth:`Inner.history_len`): G is the multistep solver on the
        coarse grid, as its serial run there. ``xs``, ``ds``: indexable by block."""
        n = int(self.inner.history_len(torch.tensor(i), self.B))
        return [
            (xs[j], ds[j], self.S[j * self.L].to(xs[j].device, xs[j].dtype, non_blocking=True))
            for j in range(i - 1, i - 1 - n, -1)
        ]

    def G(self, i: int, x: Tensor, hist: Hist | None = None) -> tuple[Tensor, Tensor]:
        """``G_i``: one inner step from the block start to the block end (multistep with
        :attr:`carry`: with the coarse history ``hist``, :meth:`coarse_hist`). Also returns
        the step's first network output ``D(x, sigma_{k_i})`` (reused by ``F_i(x)``)."""
        if self.carry:
            g = self.coarse_grid(i).to(x.device, x.dtype, non_blocking=True)
            D = self.den(x, g[0])
            return self.inner.step(x, g[0], g[1], D, hist or []), D
        den = FirstCall(self.den, x.shape[0])
        out = self.inner.run(den, x, self.coarse_grid(i), self.coarse_draw(i))
        assert den.first is not None
        return out, den.first

    def F(
        self, blocks: list[int], xs: list[Tensor], d0: list[Tensor], hists: list[Hist]
    ) -> tuple[dict[int, Tensor], dict[int, Hist]]:
        """``F_i`` of several blocks at once on the stacked states with a per-row grid
        ``[L+1, len(blocks) * batch]`` (one batched network call per sub-step). ``d0``:
        ``D(x_i, sigma_{k_i})`` of each start state, computed by ``G_i(x_i)``: the first
        sub-step's network call is not repeated. ``hists``: each block's history at its
        start (used when :attr:`carry`); returns the states and the histories at the ends."""
        L = self.L
        grid = torch.cat([self.S[i * L : (i + 1) * L + 1] for i in blocks], dim=1)
        x = torch.cat(xs)
        if self.carry:
            # Sub-step by sub-step, each block with its own history (Inner.step).
            dev = grid.to(x.device, x.dtype, non_blocking=True)
            for j in range(L):
                D = torch.cat(d0) if j == 0 else self.den(x, dev[j])
                caps = self.fine_caps([(i, j) for i in blocks])
                x_new = step_with_histories(
                    x, dev[j], dev[j + 1], D, hists, inner=self.inner, batch=self.batch, caps=caps
                )
                parts = zip(
                    hists,
                    x.split(self.batch),
                    D.split(self.batch),
                    dev[j].split(self.batch),
                    strict=True,
                )
                hists = [push(self.inner, h, xk, Dk, sk) for h, xk, Dk, sk in parts]
                x = x_new
            states = dict(zip(blocks, x.split(self.batch), strict=True))
            return states, dict(zip(blocks, hists, strict=True))
        draws = []
        if self.Z is not None:
            draws = [torch.cat([self.Z[i * L + j] for i in blocks]) for j in range(L)]
        den = FirstCall(self.den, x.shape[0], known=(torch.arange(x.shape[0]), torch.cat(d0)))
        out = self.inner.run(den, x, grid, draws)
        return dict(zip(blocks, out.split(self.batch), strict=True)), {}


class Stopper:
    """Per-sample early stopping on the relative change of the final state.

    Sample ``k`` stops at the first iteration ``p`` with
    ``||x_B^p - x_B^{p-1}|| / ||x_B^p|| < tol`` (2-norms over the sample's elements:
    :func:`relative_change`); its output is frozen there, so it does not depend on the
    other samples of its batch (``tol = 0`` disables the test). The check is one host
    decision per iteration (one GPU->CPU sync).
    """

    def __init__(self, tol: float, cap: int, batch: int) -> None:
        self.tol, self.cap = tol, cap
        self.out: Tensor | None = None
        self.last: Tensor | None = None
        self.stopped = torch.zeros(batch, dtype=torch.bool)
        self.converged = torch.zeros(batch, dtype=torch.bool)  # stopped by the test
        self.iterations = torch.full((batch,), cap, dtype=torch.long)

    def update(self, p: int, x_final: Tensor) -> bool:
        """Feed the final state of iteration ``p``; returns True when every sample stopped."""
        if self.out is None:
            self.out = x_final
        newly = torch.zeros_like(self.stopped)
        if self.tol > 0 and self.last is not None:
            newly = (relative_change(x_final, self.last) < self.tol).cpu() & ~self.stopped
            self.converged |= newly
        if p >= self.cap:
            newly = ~self.stopped
        if bool(newly.any()):
            self.iterations[newly] = p
            self.out = where_rows(newly.to(x_final.device), x_final, self.out)
            self.stopped |= newly
        self.last = x_final
        return bool(self.stopped.all())


def run_plain(pr: Parareal, stopper: Stopper, record: list[Tensor] | None) -> Tensor:
    """Iteration by iteration: all fine solves, then the sequential coarse sweep."""
    B = pr.B
    # Coarse initialisation: a B-step inner solve (Alg. 1 lines 2-4).
    X = [pr.x0]
    g: list[Tensor] = []
    d0: list[Tensor] = []  # D(x_i, sigma_{k_i}) of the current x_i, from G_i's first call
    hist: list[Hist] = [[] for _ in range(B)]  # multistep: history at the current x_i
    for i in range(B):
        gi, di = pr.G(i, X[i], pr.coarse_hist(i, X, d0) if pr.carry else None)
        g.append(gi)
        d0.append(di)
        X.append(g[i])
    if record is not None:
        record.append(torch.stack(X))
    if stopper.update(0, X[B]):
        return stopper.out
    for p in range(1, stopper.cap + 1):
        # Fine solves of blocks i >= p-1 from the previous iterate, batched (line 7);
        # blocks i < p-1 are exact already and skipped.
        live = list(range(p - 1, B))
        f, tails = pr.F(live, [X[i] for i in live], [d0[i] for i in live], [hist[i] for i in live])
        if pr.carry:
            # x_i^p (i >= p) comes from F_{i-1}(x_{i-1}^{p-1}): its history continues there.
            for i in range(p, B):
                hist[i] = tails[i - 1]
        # x_i^p = x_i^{p-1} is exact for i < p; x_p^p = F(x_{p-1}^{p-1}) is exact too.
        Xn = [*X[:p], f[p - 1]]
        # Sequential coarse sweep with the parareal correction (lines 9-11).
        for i in range(p, B):
            g_new, d0[i] = pr.G(i, Xn[i], pr.coarse_hist(i, Xn, d0) if pr.carry else None)
            Xn.append(g_new + f[i] - g[i])
            g[i] = g_new
        moved = [i for i in range(p + 1, B) if pr.carry and hist[i]]
        if moved:
            # x_i^p (i > p) is not the end f of the fine solve its history comes from:
            # move that history by the jump (D(f) in one batched call).
            fs = torch.cat([f[i - 1] for i in moved])
            sig = torch.cat([pr.S[i * pr.L] for i in moved]).to(fs.device, fs.dtype)
            Df = pr.den(fs, sig).split(pr.batch)
            for i, Dfi in zip(moved, Df, strict=True):
                hist[i] = shift(hist[i], Xn[i] - f[i - 1], d0[i] - Dfi)
        X = Xn
        if record is not None:
            record.append(torch.stack(X))
        if stopper.update(p, X[B]):
            break
    return stopper.out
