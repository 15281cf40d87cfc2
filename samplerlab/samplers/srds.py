"""SRDS: Self-Refining Diffusion Samplers (Selvam, Merchant, Ermon; NeurIPS 2024).

Parareal over an N-step inner solver (algorithms.md §5): the fine grid is split into B
blocks of K = N/B steps; the coarse propagator ``G_i`` is ONE inner step from the block
start to the block end, the fine propagator ``F_i`` the K inner steps of the block, and

    x_{i+1}^p = G_i(x_i^p) + F_i(x_i^{p-1}) - G_i(x_i^{p-1})        (Alg. 1 line 11)

with ``G_i(x_i^{p-1})`` cached from the previous iteration (pitfall §5.5.1). After p
iterations the boundary states ``x_i^p``, ``i <= p``, are exact (equal to the serial
solve), so the result equals the serial N-step solve after at most B iterations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError, where_rows
from .denoisers import chunked
from .noise import NoiseSource
from .parallel import (
    MULTISTEP_INNER,
    SINGLE_STEP_INNER,
    Inner,
    check_positive_int,
    check_tol,
    per_row_grid,
    predraw_noise,
    resolve_inner,
)


def block_choices(steps: int) -> list[int]:
    """The valid block counts for ``steps`` fine steps (the divisors of N)."""
    return [b for b in range(1, steps + 1) if steps % b == 0]


def default_blocks(steps: int) -> int:
    """The divisor of N nearest to sqrt(N) (= sqrt(N) when N is a square)."""
    return min(block_choices(steps), key=lambda b: (abs(b - math.sqrt(steps)), -b))


def _rms(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1).pow(2).mean(1).sqrt()


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

    def G(self, i: int, x: Tensor) -> Tensor:
        """``G_i``: one inner step from the block start to the block end."""
        return self.inner.run(self.den, x, self.coarse_grid(i), self.coarse_draw(i))

    def F(self, blocks: list[int], xs: list[Tensor]) -> dict[int, Tensor]:
        """``F_i`` of several blocks at once: ONE inner call on the stacked states with a
        per-row grid ``[K+1, len(blocks) * batch]`` (one batched network call per sub-step)."""
        K = self.K
        grid = torch.cat([self.S[i * K : (i + 1) * K + 1] for i in blocks], dim=1)
        draws = []
        if self.Z is not None:
            draws = [torch.cat([self.Z[i * K + j] for i in blocks]) for j in range(K)]
        out = self.inner.run(self.den, torch.cat(xs), grid, draws)
        return dict(zip(blocks, out.split(self.batch), strict=True))


class _Stopper:
    """Per-sample early stopping on the RMS change of the final state.

    A sample's output is frozen at the first iteration whose change is below ``tol``
    (``tol = 0`` disables it), so a sample's result does not depend on the others in
    its batch. The check is one host decision per iteration (one GPU->CPU sync).
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
            newly = (_rms(x_final - self.last) < self.tol).cpu() & ~self.stopped
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
    for i in range(B):
        g.append(pr.G(i, X[i]))
        X.append(g[i])
    if record is not None:
        record.append(torch.stack(X))
    if stopper.update(0, X[B]):
        return stopper.out
    for p in range(1, stopper.cap + 1):
        # Fine solves of blocks i >= p-1 from the previous iterate, batched (line 7);
        # blocks i < p-1 are exact already and skipped.
        live = list(range(p - 1, B))
        f = pr.F(live, [X[i] for i in live])
        # x_i^p = x_i^{p-1} is exact for i < p; x_p^p = F(x_{p-1}^{p-1}) is exact too.
        Xn = [*X[:p], f[p - 1]]
        # Sequential coarse sweep with the parareal correction (lines 9-11).
        for i in range(p, B):
            g_new = pr.G(i, Xn[i])
            Xn.append(g_new + f[i] - g[i])
            g[i] = g_new
        X = Xn
        if record is not None:
            record.append(torch.stack(X))
        if stopper.update(p, X[B]):
            break
    return stopper.out


@dataclass
class _Task:
    kind: str  # "G" (one coarse step) or "F" (K fine sub-steps)
    i: int  # block
    p: int  # iteration of the block's start state
    x: Tensor
    s: int = 0  # sub-steps done


def _run_pipelined(pr: _Parareal, stopper: _Stopper) -> Tensor:
    """Pipelined SRDS (algorithms.md §5.3) as a wavefront.

    ``G_i(x_i^p)`` and ``F_i(x_i^p)`` start as soon as ``x_i^p`` exists; each wave is ONE
    inner step (a 2-point per-row grid) on the rows of every running task, coarse steps
    and fine sub-steps alike. The states are computed by the same formulas as in
    :func:`_run_plain`, so the result is the same; only the schedule (rounds) differs.
    """
    B, K, P, batch = pr.B, pr.K, stopper.cap, pr.batch
    X: dict[tuple[int, int], Tensor] = {}
    g: dict[tuple[int, int], Tensor] = {}
    f: dict[tuple[int, int], Tensor] = {}
    tasks: list[_Task] = []
    finals: dict[int, Tensor] = {}
    next_final = 0

    def add_state(i: int, p: int, x: Tensor) -> None:
        X[(i, p)] = x
        if i == B:
            finals[p] = x
            return
        # Start both propagators from the new state (skipping the unused ones).
        tasks.append(_Task("G", i, p, x))
        if p < P:
            tasks.append(_Task("F", i, p, x))

    def try_make(i1: int, p: int) -> None:
        if (i1, p) in X or p > P or i1 < p:
            return
        i = i1 - 1
        if p == 0:
            if (i, 0) in g:
                add_state(i1, 0, g[(i, 0)])
        elif i1 == p:
            # Exact state: the fine solve from the exact x_{p-1}^{p-1}.
            if (i, p - 1) in f:
                add_state(i1, p, f[(i, p - 1)])
        elif (i, p) in g and (i, p - 1) in f and (i, p - 1) in g:
            # Parareal correction with the cached G_i(x_i^{p-1}).
            add_state(i1, p, g[(i, p)] + f[(i, p - 1)] - g[(i, p - 1)])

    add_state(0, 0, pr.x0)
    while tasks:
        # One wave: one inner step on every running task's rows.
        grids, draws = [], []
        for t in tasks:
            if t.kind == "G":
                grids.append(pr.coarse_grid(t.i))
                draws.append(pr.coarse_draw(t.i))
            else:
                grids.append(pr.fine_step_grid(t.i, t.s))
                draws.append(pr.fine_step_draw(t.i, t.s))
        z = [torch.cat([d[0] for d in draws])] if pr.Z is not None else []
        out = pr.inner.run(pr.den, torch.cat([t.x for t in tasks]), torch.cat(grids, 1), z)
        done: list[_Task] = []
        running: list[_Task] = []
        for t, xt in zip(tasks, out.split(batch), strict=True):
            t.x, t.s = xt, t.s + 1
            (done if t.kind == "G" or t.s == K else running).append(t)
        tasks = running
        for t in sorted(done, key=lambda t: (t.p, t.i)):
            if t.kind == "G":
                g[(t.i, t.p)] = t.x
                try_make(t.i + 1, t.p)
                try_make(t.i + 1, t.p + 1)
            else:
                f[(t.i, t.p)] = t.x
                try_make(t.i + 1, t.p + 1)
        # Convergence checks, in iteration order, on the final states that now exist.
        while next_final in finals:
            if stopper.update(next_final, finals.pop(next_final)):
                return stopper.out
            next_final += 1
    raise AssertionError("srds: pipelined schedule ended before the last iteration")


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
    if pipelined and inner in MULTISTEP_INNER:
        raise SamplerError(
            f"srds: pipelined=True needs a single-step inner solver (fine solves advance one "
            f"step per wave), not the multistep '{inner}'; valid: {', '.join(SINGLE_STEP_INNER)}"
        )
    spec = resolve_inner("srds", inner, inner_options, allow_multistep=True)
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
    tol: float = 1e-3,
    max_iters: int | None = None,
    pipelined: bool = False,
    max_rows: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """SRDS (Selvam et al. 2024, Alg. 1): parareal over the inner solver ``inner``.

    ``sigmas`` is the fine N-step grid; it is split into ``blocks`` blocks (B must
    divide N; default: the divisor of N nearest sqrt(N)). Iterates until the RMS change of
    a sample's final state between two iterations is below ``tol`` (per sample; its output
    is then frozen; ``tol=0`` disables early stopping) or ``max_iters`` (default and at
    most B, where the result is exact) iterations are done; the stop is a host decision
    once per iteration (one GPU->CPU sync per iteration when ``tol > 0``). ``pipelined`` runs the
    pipelined schedule (§5.3): same result, fewer sequential rounds.

    Stochastic inner solvers (ddpm, ddim with eta > 0) run on noise pre-drawn in the serial
    order, so the result converges to the serial run with the same seeds. Multistep inner
    solvers (dpmpp_2m) restart their history at each block boundary (the parareal state is
    the boundary state only): they converge to that block-restarted serial solve.
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
    out = _run_pipelined(pr, stopper) if pipelined else _run_plain(pr, stopper, None)
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
    """The serial solve SRDS converges to: the inner solver block after block.

    For single-step inner solvers this is the plain serial N-step run; a multistep solver
    restarts its history at every block boundary.
    """
    pr, _ = _prepare(
        denoiser, x, sigmas, noise, inner, inner_options, blocks, 0.0, None, False, None
    )
    for i in range(pr.B):
        x = pr.F([i], [x])[i]
    return x
