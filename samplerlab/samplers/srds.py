"""SRDS: Self-Refining Diffusion Samplers (Selvam, Merchant, Ermon; NeurIPS 2024).

Parareal over an N-step inner solver (Selvam et al. 2024, Alg. 1): the fine grid is split
into B blocks of K = N/B steps; the coarse propagator ``G_i`` is ONE inner step from the
block start to the block end, the fine propagator ``F_i`` the K inner steps of the block,
and

    x_{i+1}^p = G_i(x_i^p) + F_i(x_i^{p-1}) - G_i(x_i^{p-1})        (Alg. 1 line 11)

with ``G_i(x_i^{p-1})`` cached from the previous iteration. After p iterations the
boundary states ``x_i^p``, ``i <= p``, are exact, so the result equals the serial solve
after at most B iterations.

The serial solve it converges to is :func:`serial_blockwise`. For a single-step inner
solver (DDIM, Euler, Heun, DPM-Solver, DDPM with pre-drawn noise) that is exactly the
serial N-step run. A multistep solver whose registry entry has a ``history_step``
(DPM-Solver++(2M)) is stepped with its history carried across block boundaries: the fine
solve ``F_i(x_i^p)`` starts with the history at the end of ``F_{i-1}(x_{i-1}^{p-1})``, the
fine solve whose result made ``x_i^p`` (none at ``p = 0``). The exactness induction still
holds (``x_p^p`` comes from the exact ``x_{p-1}^{p-1}`` with the exact history), so SRDS over
``dpmpp_2m`` converges to the plain serial dpmpp_2m. A multistep solver without a
``history_step`` restarts its history at every block start (the parareal state is the
boundary state only): it converges to "the solver restarted at each of the B block starts"
and cannot be pipelined.
``G_i(x)`` and the first sub-step of ``F_i(x)`` start from the same state at the same
sigma and share that network call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError, where_rows
from .denoisers import chunked
from .noise import NoiseSource
from .parallel import (
    FirstCall,
    Inner,
    check_positive_int,
    check_tol,
    per_row_grid,
    predraw_noise,
    relative_change,
    resolve_inner,
)
from .srds_pipeline import Hist, push, run_pipelined, step_with_histories

TOL = 1e-3  # default tolerance on the relative change of the final state (panel-chosen)


def block_choices(steps: int) -> list[int]:
    """The valid block counts for ``steps`` fine steps (the divisors of N)."""
    return [b for b in range(1, steps + 1) if steps % b == 0]


def default_blocks(steps: int, factor: float = 2.0) -> int:
    """The divisor of N nearest to ``factor * sqrt(N)`` (default 2: chosen on the analytic
    panel, where pipelined SRDS needs ~2-5 iterations: its rounds, about
    ``B + (p + 1) N / B``, are least near ``B = sqrt((p + 1) N)``; at N = 100 the paper's
    sqrt(N) blocks took 0.63x the serial rounds there on average (worst 0.82x), 2 sqrt(N)
    0.43x (worst 0.60x; README, "SRDS, ParaDiGMS and parallel randomized midpoints"))."""
    return min(block_choices(steps), key=lambda b: (abs(b - factor * math.sqrt(steps)), -b))


class _Parareal:
    """The blocks, grids and pre-drawn noise of one SRDS call (host-side bookkeeping)."""

    def __init__(
        self,
        den: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        inner: Inner,
        blocks: int | None,
        noise: NoiseSource | None,
    ) -> None:
        self.den, self.x0, self.inner = den, x, inner
        self.batch = x.shape[0]
        self.S = per_row_grid(sigmas, self.batch)  # host float64 [N+1, batch]
        self.N = self.S.shape[0] - 1
        if blocks is None:
            blocks = default_blocks(self.N)
        check_positive_int("srds", "blocks", blocks)
        if self.N % blocks != 0:
            raise SamplerError(
                f"srds: blocks={blocks} does not divide the N={self.N} steps of the grid; "
                f"valid: {', '.join(map(str, block_choices(self.N)))}"
            )
        self.B, self.K = blocks, self.N // blocks
        # Multistep with history_step: fine solves continue the previous block's history.
        self.carry = inner.multistep and inner.history_step is not None and not inner.stochastic
        self.Z: Tensor | None = None
        self.Zc: Tensor | None = None
        if inner.stochastic:
            # One draw per fine step, in the serial order; the coarse step of a block uses
            # the normalised sum of its fine draws (a standard normal; any fixed choice
            # keeps parareal exact, this one tracks the fine path's Brownian increment).
            self.Z = predraw_noise(noise, x, self.N)
            self.Zc = self.Z.reshape(self.B, self.K, *x.shape).sum(1) / math.sqrt(self.K)

    # Coarse and fine propagators on stacked rows.
    def coarse_grid(self, i: int) -> Tensor:
        return self.S[[i * self.K, (i + 1) * self.K]]

    def coarse_draw(self, i: int) -> list[Tensor]:
        return [self.Zc[i]] if self.Zc is not None else []

    def fine_step_grid(self, i: int, s: int) -> Tensor:
        return self.S[i * self.K + s : i * self.K + s + 2]

    def fine_step_draw(self, i: int, s: int) -> list[Tensor]:
        return [self.Z[i * self.K + s]] if self.Z is not None else []

    def fine_draws(self, i: int) -> list[Tensor]:
        return [self.Z[i * self.K + j] for j in range(self.K)] if self.Z is not None else []

    def G(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """``G_i``: one inner step from the block start to the block end. Also returns the
        step's first network output ``D(x, sigma_{k_i})`` (reused by ``F_i(x)``)."""
        den = FirstCall(self.den, x.shape[0])
        out = self.inner.run(den, x, self.coarse_grid(i), self.coarse_draw(i))
        assert den.first is not None
        return out, den.first

    def F(
        self, blocks: list[int], xs: list[Tensor], d0: list[Tensor], hists: list[Hist]
    ) -> tuple[dict[int, Tensor], dict[int, Hist]]:
        """``F_i`` of several blocks at once on the stacked states with a per-row grid
        ``[K+1, len(blocks) * batch]`` (one batched network call per sub-step). ``d0``:
        ``D(x_i, sigma_{k_i})`` of each start state, computed by ``G_i(x_i)``: the first
        sub-step's network call is not repeated. ``hists``: each block's history at its
        start (used when :attr:`carry`); returns the states and the histories at the ends."""
        K = self.K
        grid = torch.cat([self.S[i * K : (i + 1) * K + 1] for i in blocks], dim=1)
        x = torch.cat(xs)
        if self.carry:
            # Sub-step by sub-step, each block with its own history (Inner.step).
            dev = grid.to(x.device, x.dtype, non_blocking=True)
            for j in range(K):
                D = torch.cat(d0) if j == 0 else self.den(x, dev[j])
                x = step_with_histories(self.inner, x, dev[j], dev[j + 1], D, hists, self.batch)
                hists = [
                    push(self.inner, h, Dk, sk)
                    for h, Dk, sk in zip(
                        hists, D.split(self.batch), dev[j].split(self.batch), strict=True
                    )
                ]
            states = dict(zip(blocks, x.split(self.batch), strict=True))
            return states, dict(zip(blocks, hists, strict=True))
        draws = []
        if self.Z is not None:
            draws = [torch.cat([self.Z[i * K + j] for i in blocks]) for j in range(K)]
        den = FirstCall(self.den, x.shape[0], known=(torch.arange(x.shape[0]), torch.cat(d0)))
        out = self.inner.run(den, x, grid, draws)
        return dict(zip(blocks, out.split(self.batch), strict=True)), {}


class _Stopper:
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
        self.iterations = torch.full((batch,), cap, dtype=torch.long)

    def update(self, p: int, x_final: Tensor) -> bool:
        """Feed the final state of iteration ``p``; returns True when every sample stopped."""
        if self.out is None:
            self.out = x_final
        newly = torch.zeros_like(self.stopped)
        if p >= self.cap:
            newly = ~self.stopped
        elif self.tol > 0 and self.last is not None:
            newly = (relative_change(x_final, self.last) < self.tol).cpu() & ~self.stopped
        if bool(newly.any()):
            self.iterations[newly] = p
            self.out = where_rows(newly.to(x_final.device), x_final, self.out)
            self.stopped |= newly
        self.last = x_final
        return bool(self.stopped.all())


def _run_plain(pr: _Parareal, stopper: _Stopper, record: list[Tensor] | None) -> Tensor:
    """Iteration by iteration: all fine solves, then the sequential coarse sweep."""
    B = pr.B
    # Coarse initialisation: a B-step inner solve (Alg. 1 lines 2-4).
    X = [pr.x0]
    g: list[Tensor] = []
    d0: list[Tensor] = []  # D(x_i, sigma_{k_i}) of the current x_i, from G_i's first call
    hist: list[Hist] = [[] for _ in range(B)]  # multistep: history at the current x_i
    for i in range(B):
        gi, di = pr.G(i, X[i])
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
            g_new, d0[i] = pr.G(i, Xn[i])
            Xn.append(g_new + f[i] - g[i])
            g[i] = g_new
        X = Xn
        if record is not None:
            record.append(torch.stack(X))
        if stopper.update(p, X[B]):
            break
    return stopper.out


def _prepare(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    noise: NoiseSource | None,
    inner: str,
    inner_options: Mapping[str, Any] | None,
    blocks: int | None,
    tol: float,
    max_iters: int | None,
    pipelined: bool,
    max_rows: int | None,
) -> tuple[_Parareal, _Stopper]:
    tol = check_tol("srds", tol)
    spec = resolve_inner(
        "srds",
        inner,
        inner_options,
        need_history=bool(pipelined),
        history_reason=" (pipelined=True steps fine solves one state at a time)",
    )
    if pipelined and spec.multistep and spec.stochastic:
        raise SamplerError("srds: pipelined=True needs a deterministic multistep inner solver")
    if max_rows is not None:
        check_positive_int("srds", "max_rows", max_rows)
    pr = _Parareal(chunked(denoiser, max_rows), x, sigmas, spec, blocks, noise)
    if max_iters is None:
        max_iters = pr.B
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
        raise SamplerError(f"srds: max_iters must be an integer >= 0, got {max_iters!r}")
    return pr, _Stopper(tol, min(max_iters, pr.B), pr.batch)


@torch.no_grad()
def sample_srds(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: str = "ddim",
    inner_options: Mapping[str, Any] | None = None,
    blocks: int | None = None,
    tol: float = TOL,
    max_iters: int | None = None,
    pipelined: bool = True,
    max_rows: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """SRDS (Selvam et al. 2024, Alg. 1): parareal over the inner solver ``inner``.

    ``sigmas`` is the fine N-step grid; it is split into ``blocks`` blocks (B must divide
    N; default: the divisor of N nearest ``2 sqrt(N)``, :func:`default_blocks`).

    Convergence test: sample ``k`` stops at the first iteration ``p`` whose final state
    changed by ``||x_B^p - x_B^{p-1}|| / ||x_B^p|| < tol`` (2-norms over the sample's
    elements: a per-sample relative RMS change; ``tol=0`` disables the test); its output
    is then frozen. Parareal converges superlinearly, so the error of the stopped iterate
    against the serial solve is below the last change (tested: per-sample relative error
    <= tol on the analytic mixture). At most ``max_iters`` iterations (default and at most
    B, where the result is exact); the stop is one host decision per iteration.
    ``pipelined`` (default) runs the pipelined schedule (:mod:`srds_pipeline`): the same
    iterates in fewer sequential rounds. Defaults (``tol``, ``blocks``, ``pipelined``)
    were chosen on the analytic panel models (README, "SRDS and ParaDiGMS").

    Stochastic inner solvers (ddpm, ddim with eta > 0) run on noise pre-drawn in the serial
    order, so the result converges to the serial run with the same seeds. Multistep inner
    solvers (dpmpp_2m) carry their history across block boundaries and converge to their
    serial run (module docstring; without a ``history_step`` they restart at each block).
    ``max_rows`` caps the rows per network call (results unchanged). ``info``, if given,
    receives ``iterations`` (per sample) and ``blocks``.
    """
    pr, stopper = _prepare(
        denoiser,
        x,
        sigmas,
        noise,
        inner,
        inner_options,
        blocks,
        tol,
        max_iters,
        pipelined,
        max_rows,
    )
    out = run_pipelined(pr, stopper) if pipelined else _run_plain(pr, stopper, None)
    if info is not None:
        info.update(iterations=stopper.iterations.tolist(), blocks=pr.B)
    return out


@torch.no_grad()
def srds_iterates(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: str = "ddim",
    inner_options: Mapping[str, Any] | None = None,
    blocks: int | None = None,
    max_iters: int | None = None,
) -> list[Tensor]:
    """Debug view: the boundary states ``[B+1, batch, ...]`` of every iteration 0..p
    (non-pipelined, no early stop). At iteration p the states ``i <= p`` are exact."""
    pr, stopper = _prepare(
        denoiser, x, sigmas, noise, inner, inner_options, blocks, 0.0, max_iters, False, None
    )
    record: list[Tensor] = []
    _run_plain(pr, stopper, record)
    return record


def serial_blockwise(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: str = "ddim",
    inner_options: Mapping[str, Any] | None = None,
    blocks: int | None = None,
) -> Tensor:
    """The serial solve SRDS converges to (module docstring): the plain serial N-step run
    for single-step inner solvers and for multistep ones with a ``history_step``; for
    other multistep solvers the solver run block after block, its history restarted at
    every block start.
    """
    pr, _ = _prepare(
        denoiser, x, sigmas, noise, inner, inner_options, blocks, 0.0, None, False, None
    )
    if pr.carry:
        # The history runs on across the blocks: the plain serial solve.
        return pr.inner.run(pr.den, x, pr.S)
    for i in range(pr.B):
        x = pr.inner.run(pr.den, x, pr.S[i * pr.K : (i + 1) * pr.K + 1], pr.fine_draws(i))
    return x
