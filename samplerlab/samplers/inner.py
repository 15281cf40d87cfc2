"""Inner solvers of the parallel-in-time samplers (SRDS, ParaDiGMS).

The registry resolves a parallel sampler's ``inner`` name and ``inner_options`` into an
:class:`Inner` (:func:`samplerlab.samplers.spec.resolve_inner`) before the sampler runs,
so the parallel samplers never look names up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError
from .dpm_solver import step_dpmpp_2m
from .noise import ReplayNoise

DEFAULT_INNER = "ddim"  # the inner solver of SRDS and ParaDiGMS when ``inner`` is unset

# A multistep solver's step with its history given explicitly (the step convention of
# samplerlab.samplers.spec): ``step(x, sigma, sigma_next, denoised, history) -> x_next``
# with ``denoised = D(x, sigma)`` and ``history`` the ``(x, D, sigma)`` triples of the
# previous states, most recent first; the step's order is set by how many it is given
# (:meth:`Inner.history_len`: fewer at the solver's lower-order start).
History = Sequence[tuple[Tensor, Tensor, Tensor]]
HistoryStep = Callable[[Tensor, Tensor, Tensor, Tensor, History], Tensor]


def dpmpp_2m_history_step(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
) -> Tensor:
    """One DPM-Solver++(2M) step (Lu et al. 2022b, Alg. 2) with the previous state's
    ``(x, D, sigma)`` given: first order without history; ``h_prev = log(sigma_prev / sigma)``
    otherwise (what :func:`sample_dpmpp_2m` carries from step to step)."""
    if not history:
        return step_dpmpp_2m(x, sigma, sigma_next, denoised)[0]
    _, d_prev, s_prev = history[0]
    return step_dpmpp_2m(x, sigma, sigma_next, denoised, d_prev, torch.log(s_prev / sigma))[0]


@dataclass(frozen=True)
class Inner:
    """An inner solver prepared for parallel use.

    ``run(den, x, grid, draws)`` runs it on ``x`` with a per-row ``grid`` ``[n+1, R]``;
    ``draws`` are the ``n`` pre-drawn standard-normal tensors ``[R, ...]`` of its steps
    (ignored when the solver is deterministic). A multistep solver with a
    ``history_step`` also steps one state at a time with its history given (:meth:`step`).
    """

    name: str
    fn: Callable[..., Tensor]
    options: Mapping[str, Any]
    stochastic: bool
    multistep: bool
    history_step: HistoryStep | None = None
    history: int = 0  # previous (x, D, sigma) triples a step uses
    lowers_final_order: bool = False  # step j of N uses at most N - 1 - j of them

    def history_len(self, j: Tensor, steps: int) -> Tensor:
        """How many previous states step ``j`` (host long tensor) of a ``steps``-step grid
        is given: the serial solver's order there minus one (its warm-up ``min(history,
        j)``; ``N - 1 - j`` too where it lowers the order at the grid's end)."""
        n = j.clamp_max(self.history)
        if self.lowers_final_order:
            n = torch.minimum(n, (steps - 1 - j).clamp_min(0))
        return n

    def run(self, den: Denoiser, x: Tensor, grid: Tensor, draws: Sequence[Tensor] = ()) -> Tensor:
        noise = ReplayNoise(draws) if self.stochastic else None
        return self.fn(den, x, grid, noise=noise, **self.options)

    @staticmethod
    def check(sampler: str, inner: Inner | str) -> Inner:
        """``inner``, which the registry must have resolved from a solver's name."""
        if not isinstance(inner, Inner):
            raise SamplerError(
                f"{sampler}: inner={inner!r} is a name the registry resolves; run it through "
                f"get_sampler({sampler!r})(denoiser, x, sigmas, inner=...) or samplerlab.sample"
            )
        return inner

    def step(
        self, x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor, history: History
    ) -> Tensor:
        """One multistep step from ``x`` with ``denoised = D(x, sigma)`` and ``history``
        (the caller passes :meth:`history_len` triples; more are cut to :attr:`history`)."""
        assert self.history_step is not None
        return self.history_step(x, sigma, sigma_next, denoised, history[: self.history])
