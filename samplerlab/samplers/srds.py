"""SRDS: Self-Refining Diffusion Samplers (Selvam, Merchant, Ermon; NeurIPS 2024).

Parareal over an N-step inner solver (Selvam et al. 2024, Alg. 1): the fine grid is split
into B blocks of K = N/B steps; the coarse propagator ``G_i`` is ONE inner step from the
block start to the block end, the fine propagator ``F_i`` the K inner steps of the block,
and

    x_{i+1}^p = G_i(x_i^p) + F_i(x_i^{p-1}) - G_i(x_i^{p-1})        (Alg. 1 line 11)

with ``G_i(x_i^{p-1})`` cached from the previous iteration. After p iterations the
boundary states ``x_i^p``, ``i <= p``, are exact, so the result equals the serial solve
after at most B iterations.

The serial solve it converges to: for a single-step inner solver (DDIM, Euler, Heun,
DPM-Solver, DDPM with pre-drawn noise), exactly the serial N-step run. A multistep solver
whose registry entry has a ``history_step`` (DPM-Solver++(2M) and (3M), UniPC, DEIS,
iPNDM, LMS, with their default options) is stepped with its history carried across block
boundaries: the fine solve ``F_i(x_i^p)`` starts with the history at the end of
``F_{i-1}(x_{i-1}^{p-1})``, the fine solve whose result made ``x_i^p`` (none at
``p = 0``), moved by the jump from that solve's end ``f`` to ``x_i^p`` (every entry's
``x`` by ``x_i^p - f``, its ``D`` by ``D(x_i^p) - D(f)``, D(f) batched into the same call:
the history keeps the fine trajectory's differences, so ``F_i`` depends on the previous
iterate only through them; on the panel this cut the iterations by about a fifth and the
error 3-5x); the coarse step ``G_i`` continues the coarse history (the previous block
starts and their ``D``: at ``p = 0`` the solver's serial run on the coarse grid). Both
moves vanish at the fixed point. The exactness induction still holds (``x_p^p`` comes from
the exact ``x_{p-1}^{p-1}`` with the exact history), so SRDS over any of them converges to
its plain serial run (for UniPC the boundary state is the predicted state, where the serial
solver evaluates). A multistep solver without a ``history_step`` (or given ``inner_options``:
plain schedule only) restarts its history at every block start (the parareal state is the
boundary state only): it converges to "the solver restarted at each of the B block starts"
and cannot be pipelined.
``G_i(x)`` and the first sub-step of ``F_i(x)`` start from the same state at the same
sigma and share that network call.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError
from .denoisers import chunked
from .inner import DEFAULT_INNER, Inner
from .noise import NoiseSource
from .parallel import check_positive_int, check_tol, per_row_grid
from .srds_parareal import Parareal, Stopper, run_plain
from .srds_pipeline import run_pipelined

TOL = 1e-3  # default tolerance on the relative change of the final state (panel-chosen)
PIPELINED = True  # the pipelined schedule by default


def block_choices(steps: int) -> list[int]:
    """The valid block counts for ``steps`` fine steps (the divisors of N)."""
    return [b for b in range(1, steps + 1) if steps % b == 0]


def default_blocks(steps: int, factor: float = 2.5) -> int:
    """The divisor ``B`` of N nearest to ``factor * sqrt(N)`` among those leaving blocks of
    at least 2 steps (``L = N/B = 1`` makes ``G_i = F_i``: the serial solve, no speed-up).

    Pipelined SRDS takes about ``B + (L - 1) p`` rounds for ``p`` iterations (``G_i`` and
    the first sub-step of ``F_i`` share a call), least at ``B = sqrt(p N)``; a batch takes
    as many iterations as its slowest sample. Default 2.5, chosen on the analytic panel at
    a batch of 1024 samples and N = 100 (six models, three inner solvers), where the slowest
    of 1024 samples needs 3-11 iterations: 25 blocks took 0.42x the serial rounds on average
    (worst 0.58x), 20 blocks (``2 sqrt(N)``, the choice at 32 samples) 0.45x (worst 0.64x),
    10 blocks 0.69x (README, "SRDS, ParaDiGMS and parallel randomized midpoints")."""
    choices = [b for b in block_choices(steps) if steps // b >= 2] or block_choices(steps)
    return min(choices, key=lambda b: (abs(b - factor * math.sqrt(steps)), -b))


@dataclass(frozen=True)
class SRDS:
    """The settings of one SRDS run (the options of :func:`sample_srds`)."""

    inner: Inner
    blocks: int | None = None
    tol: float = TOL
    max_iters: int | None = None
    pipelined: bool = PIPELINED
    max_rows: int | None = None

    def prepare(
        self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseSource | None
    ) -> tuple[Parareal, Stopper]:
        """The checked parareal state and stopper of a run on ``x`` over ``sigmas``."""
        tol = check_tol("srds", self.tol)
        inner, pipelined = self.inner, self.pipelined
        if pipelined and inner.multistep and inner.stochastic:
            raise SamplerError("srds: pipelined=True needs a deterministic multistep inner solver")
        if self.max_rows is not None:
            check_positive_int("srds", "max_rows", self.max_rows)
        S = per_row_grid(sigmas, x.shape[0])  # host float64 [N+1, batch]
        N = S.shape[0] - 1
        blocks = default_blocks(N) if self.blocks is None else self.blocks
        check_positive_int("srds", "blocks", blocks)
        if N % blocks != 0:
            raise SamplerError(
                f"srds: blocks={blocks} does not divide the N={N} steps of the grid; "
                f"valid: {', '.join(map(str, block_choices(N)))}"
            )
        max_iters = blocks if self.max_iters is None else self.max_iters
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 0:
            raise SamplerError(f"srds: max_iters must be an integer >= 0, got {max_iters!r}")
        pr = Parareal(chunked(denoiser, self.max_rows), x, S, inner, blocks, noise)
        return pr, Stopper(tol, min(max_iters, blocks), pr.batch)


@torch.no_grad()
def sample_srds(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: Inner | str = DEFAULT_INNER,
    inner_options: Mapping[str, Any] | None = None,
    blocks: int | None = None,
    tol: float = TOL,
    max_iters: int | None = None,
    pipelined: bool = PIPELINED,
    max_rows: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """SRDS (Selvam et al. 2024, Alg. 1): parareal over the inner solver ``inner``.

    ``inner`` (a solver's name) and ``inner_options`` (its options) are resolved by the
    registry into an :class:`Inner` before this runs:
    ``get_sampler("srds")(denoiser, x, sigmas, inner="dpmpp_2m")``.

    ``sigmas`` is the fine N-step grid; it is split into ``blocks`` blocks (B must divide
    N; default: the divisor of N nearest ``2.5 sqrt(N)`` with blocks of >= 2 steps,
    :func:`default_blocks`).

    Convergence test: sample ``k`` stops at the first iteration ``p`` whose final state
    changed by ``||x_B^p - x_B^{p-1}|| / ||x_B^p|| < tol`` (2-norms over the sample's
    elements: a per-sample relative RMS change; ``tol=0`` disables the test); its output
    is then frozen. Parareal converges superlinearly, so the error of the stopped iterate
    against the serial solve is typically below the last change (tested: per-sample
    relative error <= tol on the analytic mixture); it is not a bound, as the iterates need
    not change monotonically: on the analytic panel at N = 100 (25 blocks, 1024 samples per
    model; ``benchmarks/probe_srds_blocks.py``) the worst sample stopped 3.7e-3 from serial,
    every batch's relative RMS distance below 2.4e-4. At most ``max_iters`` iterations (default
    and at most B, where the result is exact); the stop is one host decision per iteration.
    A batch takes as many iterations as its slowest sample, and the slowest are samples near
    a mode boundary, which sit in another mode until parareal's exact front (one block per
    iteration) has nearly crossed the noise band where their trajectories part; so the
    rounds grow with the batch (panel, N = 100, 25 blocks, ddim inside, vp-d8-k6-cos: the
    slowest of 32 samples needs 4.0 iterations on average, of 1024 7.8, of 4096 8-11 over
    four batches, i.e. up to 0.58x the serial rounds; ``benchmarks/probe_srds_tail.py``).
    ``max_iters`` below B bounds the rounds at ``B + max_iters (L - 1)`` (pipelined,
    one-call steps) but returns the samples it stops unconverged: ``info["unconverged"]``
    counts them and a warning says so.
    ``pipelined`` (default) runs the pipelined schedule (:mod:`srds_pipeline`): the same
    iterates in fewer sequential rounds. Defaults (``tol``, ``blocks``, ``pipelined``)
    were chosen on the analytic panel models (README, "SRDS and ParaDiGMS").

    Stochastic inner solvers (ddpm, ddim with eta > 0) run on noise pre-drawn in the serial
    order, so the result converges to the serial run with the same seeds. Multistep inner
    solvers (dpmpp_2m, dpmpp_3m, unipc, deis, ipndm, lms) carry their history across
    blocks and converge to their serial run (module docstring; without a ``history_step``
    they restart at each block).
    ``max_rows`` caps the rows per network call (results unchanged). ``info``, if given,
    receives ``iterations`` (per sample), ``blocks`` and ``unconverged`` (samples stopped by a
    ``max_iters`` below B with their change still >= ``tol``: warned about, as their result
    is not the serial solve).
    """
    config = SRDS(Inner.check("srds", inner), blocks, tol, max_iters, pipelined, max_rows)
    pr, stopper = config.prepare(denoiser, x, sigmas, noise)
    out = run_pipelined(pr, stopper) if pipelined else run_plain(pr, stopper, None)
    # Below B iterations a sample stopped by the cap is not the serial solve: say so.
    short = ~stopper.converged if stopper.tol > 0 and stopper.cap < pr.B else None
    if short is not None and bool(short.any()):
        warnings.warn(
            f"srds: {int(short.sum())} of {pr.batch} samples reached max_iters={stopper.cap} "
            f"(< blocks={pr.B}) with a change of the final state still >= tol={stopper.tol:g}; "
            "they are returned unconverged (not the serial solve)",
            stacklevel=3,
        )
    if info is not None:
        info.update(
            iterations=stopper.iterations.tolist(),
            blocks=pr.B,
            unconverged=0 if short is None else int(short.sum()),
        )
    return out
