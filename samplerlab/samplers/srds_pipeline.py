"""Pipelined SRDS (Selvam et al. 2024, §3.3 "pipelining") as a wavefront schedule.

``G_i(x_i^p)`` and ``F_i(x_i^p)`` start as soon as ``x_i^p`` exists; each wave is ONE inner
step on the rows of every running task, coarse steps and fine sub-steps alike, in one
batched network call (two for a two-stage solver such as Heun). The states are those of
the plain schedule (:func:`samplerlab.samplers.srds_parareal.run_plain`): same formulas,
same inputs; only the order of the calls differs.

* Single-step inner solvers run each task's step as the inner solver on a per-row 2-point
  grid.
* Multistep inner solvers with a ``history_step`` step each fine task with its own history
  (the ``(x, D, sigma)`` of its earlier sub-steps, :meth:`Inner.step`); a fine solve of block
  ``i`` from ``x_i^p`` starts with the history at the end of the fine solve of block
  ``i - 1`` that made ``x_i^p`` (``F_{i-1}(x_{i-1}^{p-1})``; none for ``p = 0``), as the
  plain schedule does; a coarse step (one step) is first order.
* ``G_i(x_i^p)`` and the first sub-step of ``F_i(x_i^p)`` start from the same state at the
  same sigma: their first network call is made once (:class:`FirstCall`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .parallel import FirstCall
from .srds_parareal import Hist, Parareal, Stopper, push, shift, step_with_histories


@dataclass
class _Task:
    kind: str  # "G" (one coarse step) or "F" (L fine sub-steps)
    i: int  # block
    p: int  # iteration of the block's start state
    x: Tensor
    s: int = 0  # sub-steps done
    hist: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)  # (x, D, sigma)
    d0: Tensor | None = None  # multistep G: D at its start state (the next G's history)
    shift_from: Tensor | None = None  # multistep F: the end state its history comes from


def _wave(pr: Parareal, tasks: list[_Task]) -> list[Tensor]:
    """One inner step on every task's rows; returns each task's new state."""
    batch, inner = pr.batch, pr.inner
    grids, draws = [], []
    for t in tasks:
        if t.kind == "G":
            grids.append(pr.coarse_grid(t.i))
            draws.append(pr.coarse_draw(t.i))
        else:
            grids.append(pr.fine_step_grid(t.i, t.s))
            draws.append(pr.fine_step_draw(t.i, t.s))
    # Rows whose first call repeats another task's: F_i(x_i^p) at sub-step 0 shares the
    # first call of G_i(x_i^p) (same state, same sigma).
    first_of = {(t.i, t.p): k for k, t in enumerate(tasks) if t.kind == "G"}
    src = torch.arange(len(tasks) * batch)
    shared = False
    for k, t in enumerate(tasks):
        g = first_of.get((t.i, t.p)) if t.kind == "F" and t.s == 0 else None
        if g is not None:
            src[k * batch : (k + 1) * batch] = torch.arange(g * batch, (g + 1) * batch)
            shared = True
    x = torch.cat([t.x for t in tasks])
    grid = torch.cat(grids, 1)  # host [2, rows]
    # Multistep F tasks whose history comes from another end state f: D(f) in this call.
    moved = [k for k, t in enumerate(tasks) if t.shift_from is not None]
    n = x.shape[0]
    if moved:
        x = torch.cat([x, *(tasks[k].shift_from for k in moved)])  # type: ignore[misc]
        grid = torch.cat([grid, *(grids[k] for k in moved)], 1)
        src = torch.cat([src, torch.arange(n, x.shape[0])])
    den = FirstCall(pr.den, x.shape[0], src if shared else None)
    if not inner.multistep:
        z = [torch.cat([d[0] for d in draws])] if pr.Z is not None else []
        return list(inner.run(den, x, grid, z).split(batch))
    # Multistep: one call for D at every task's state, then each task's own-history step.
    dev = grid.to(x.device, x.dtype, non_blocking=True)
    s, s_next = dev[0], dev[1]
    D = den(x, s)
    if moved:
        Df, x, s, s_next, D = D[n:].split(batch), x[:n], s[:n], s_next[:n], D[:n]
        for k, Dfk in zip(moved, Df, strict=True):
            t, rows = tasks[k], slice(k * batch, (k + 1) * batch)
            t.hist = shift(t.hist, t.x - t.shift_from, D[rows] - Dfk)  # type: ignore[operator]
            t.shift_from = None
    # G tasks carry the coarse history already cut to its order (Parareal.coarse_hist).
    caps = pr.fine_caps([(t.i, t.s) for t in tasks])
    caps = [len(t.hist) if t.kind == "G" else c for t, c in zip(tasks, caps, strict=True)]
    hists = [t.hist for t in tasks]
    out = step_with_histories(x, s, s_next, D, hists, inner=inner, batch=batch, caps=caps)
    for k, t in enumerate(tasks):
        rows = slice(k * batch, (k + 1) * batch)
        if t.kind == "F":
            t.hist = push(inner, t.hist, x[rows], D[rows], s[rows])
        else:
            t.d0 = D[rows]
    return list(out.split(batch))


def run_pipelined(pr: Parareal, stopper: Stopper) -> Tensor:
    """The wavefront schedule; returns the stopper's output (see :class:`Stopper`)."""
    B, L, P = pr.B, pr.L, stopper.cap
    X: dict[tuple[int, int], Tensor] = {}
    g: dict[tuple[int, int], Tensor] = {}
    f: dict[tuple[int, int], Tensor] = {}
    tail: dict[tuple[int, int], Hist] = {}  # multistep: history at the end of F_i(x_i^p)
    d0: dict[tuple[int, int], Tensor] = {}  # multistep: D(x_i^p) from G_i(x_i^p)
    tasks: list[_Task] = []
    finals: dict[int, Tensor] = {}
    next_final = 0

    def add_state(i: int, p: int, x: Tensor) -> None:
        X[(i, p)] = x
        if i == B:
            finals[p] = x
            return
        # Start both propagators from the new state (skipping the unused fine solve); G
        # continues the coarse history of the block starts x_{i-m}^{min(p, i-m)} (the
        # states and D the plain schedule's coarse sweep uses).
        ghist: Hist = []
        if pr.carry:
            js = [i - m for m in range(1, 1 + int(pr.inner.history_len(torch.tensor(i), B)))]
            xs = {j: X[(j, min(p, j))] for j in js}
            ghist = pr.coarse_hist(i, xs, {j: d0[(j, min(p, j))] for j in js})
        tasks.append(_Task("G", i, p, x, hist=ghist))
        if p < P:
            # x_i^p was made by F_{i-1}(x_{i-1}^{p-1}): its fine solve continues that history.
            hist = list(tail.get((i - 1, p - 1), [])) if pr.carry else []
            # Not the exact state (i > p): the history is moved by the jump from f to x.
            moved = f[(i - 1, p - 1)] if hist and i > p else None
            tasks.append(_Task("F", i, p, x, hist=hist, shift_from=moved))

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
        out = _wave(pr, tasks)
        done: list[_Task] = []
        running: list[_Task] = []
        for t, xt in zip(tasks, out, strict=True):
            t.x, t.s = xt, t.s + 1
            (done if t.kind == "G" or t.s == L else running).append(t)
        tasks = running
        for t in done:
            if t.kind == "G" and t.d0 is not None:
                d0[(t.i, t.p)] = t.d0
        for t in sorted(done, key=lambda t: (t.p, t.i)):
            if t.kind == "G":
                g[(t.i, t.p)] = t.x
                try_make(t.i + 1, t.p)
                try_make(t.i + 1, t.p + 1)
            else:
                f[(t.i, t.p)] = t.x
                tail[(t.i, t.p)] = t.hist
                try_make(t.i + 1, t.p + 1)
        # Convergence checks, in iteration order, on the final states that now exist.
        while next_final in finals:
            if stopper.update(next_final, finals.pop(next_final)):
                return stopper.out
            next_final += 1
    raise AssertionError("srds: pipelined schedule ended before the last iteration")
