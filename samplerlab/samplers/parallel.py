"""Shared machinery of the parallel-in-time samplers (SRDS, ParaDiGMS).

* :func:`resolve_inner` turns an inner solver's registry entry into a callable that runs it
  on a per-row grid (``[n+1, R]``: each row its own time points), with pre-drawn noise;
  which solvers qualify, and whether a multistep one can take its history from elsewhere
  (:meth:`Inner.step`), is read from the registry entry (``parallel_inner``,
  ``multistep``, ``history_step``), never from a list of names;
* :class:`FirstCall` serves the first network call of an inner run from known or shared
  rows (SRDS: ``G_i`` and the first sub-step of ``F_i`` start from the same state);
* :func:`predraw_noise` draws every step's noise up front, in the serial sampler's order,
  so that serial and parallel runs of a stochastic solver agree;
* :class:`ShardedDenoiser` / :class:`DistributedDenoiser` (in ``sharding``) split a
  batched call's rows over devices or processes;
* :func:`inner_sampler_spec` builds registry entries whose determinism follows the inner
  solver.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .core import Denoiser, SamplerError
from .dpm_solver import step_dpmpp_2m
from .noise import NoiseSource, ReplayNoise, randn_like
from .sharding import DistributedDenoiser, ShardedDenoiser

__all__ = ["DistributedDenoiser", "FirstCall", "Inner", "ShardedDenoiser", "resolve_inner"]

# A multistep solver's step with its history given explicitly:
# ``step(x, sigma, sigma_next, denoised, history) -> x_next`` with ``denoised = D(x, sigma)``
# and ``history`` the ``(D, sigma)`` pairs of the previous states, most recent first (fewer
# than the solver uses: its lower-order start).
HistoryStep = Callable[[Tensor, Tensor, Tensor, Tensor, Sequence[tuple[Tensor, Tensor]]], Tensor]


def dpmpp_2m_history_step(
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    denoised: Tensor,
    history: Sequence[tuple[Tensor, Tensor]],
) -> Tensor:
    """One DPM-Solver++(2M) step (Lu et al. 2022b, Alg. 2) with the previous ``(D, sigma)``
    given: first order without history; ``h_prev = log(sigma_prev / sigma)`` otherwise
    (what :func:`sample_dpmpp_2m` carries from step to step)."""
    if not history:
        return step_dpmpp_2m(x, sigma, sigma_next, denoised)[0]
    d_prev, s_prev = history[0]
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
    history: int = 0  # previous (D, sigma) pairs a step uses

    def run(self, den: Denoiser, x: Tensor, grid: Tensor, draws: Sequence[Tensor] = ()) -> Tensor:
        noise = ReplayNoise(draws) if self.stochastic else None
        return self.fn(den, x, grid, noise=noise, **self.options)

    def step(
        self,
        x: Tensor,
        sigma: Tensor,
        sigma_next: Tensor,
        denoised: Tensor,
        history: Sequence[tuple[Tensor, Tensor]],
    ) -> Tensor:
        """One multistep step from ``x`` with ``denoised = D(x, sigma)`` and ``history``."""
        assert self.history_step is not None
        return self.history_step(x, sigma, sigma_next, denoised, history[: self.history])


def can_be_inner(spec: Any) -> bool:
    """Whether a registry entry can serve as an inner solver: its ``parallel_inner`` flag,
    else (unset) any deterministic solver with a fixed NFE that needs no fitted coefficients
    (restartable on any sub-grid of its grid)."""
    flag = getattr(spec, "parallel_inner", None)
    if flag is not None:
        return bool(flag)
    return bool(spec.deterministic and spec.nfe_exact and not spec.needs_coeffs)


def resolve_inner(
    sampler: str,
    inner: str,
    inner_options: Mapping[str, Any] | None,
    *,
    need_history: bool,
    history_reason: str = "",
) -> Inner:
    """Look up ``inner`` in the registry and check it can serve ``sampler``.

    ``need_history``: the caller steps multistep solvers one state at a time
    (:meth:`Inner.step`), so a multistep ``inner`` needs a ``history_step`` in its entry.
    """
    from .registry import SAMPLERS

    def usable(spec: Any) -> bool:
        return can_be_inner(spec) and not (
            need_history and spec.multistep and spec.history_step is None
        )

    valid = [name for name, s in SAMPLERS.items() if usable(s)]
    spec = SAMPLERS.get(inner) if isinstance(inner, str) else None
    if spec is None or not usable(spec):
        if spec is not None and can_be_inner(spec):
            raise SamplerError(
                f"{sampler}: inner solver '{inner}' is multistep and its registry entry has no "
                f"history_step{history_reason}; valid: {', '.join(valid)}"
            )
        raise SamplerError(
            f"{sampler}: unknown or unsupported inner solver {inner!r}; valid: {', '.join(valid)}"
        )
    if not isinstance(inner_options, (Mapping, type(None))):
        raise SamplerError(f"{sampler}: inner_options must be a dict, got {inner_options!r}")
    opts = dict(inner_options or {})
    spec.check_options(opts)
    for key in getattr(spec, "grid_dependent_options", ()):
        if float({**spec.defaults, **opts}.get(key, 0) or 0) > 0:
            raise SamplerError(
                f"{sampler}: inner '{inner}' with {key} > 0 is stochastic in a way that depends "
                f"on the grid length; a deterministic inner solver is required here "
                f"(set {key}=0, or use ddpm / ddim with eta > 0)"
            )
    stepper = spec.history_step if spec.multistep else None
    if stepper is not None and opts:
        taken = set(inspect.signature(stepper).parameters)
        extra = [k for k in opts if k not in taken]
        if extra and need_history:
            raise SamplerError(
                f"{sampler}: inner option(s) {', '.join(extra)} of '{inner}' are not supported "
                f"when its history comes from neighbouring states{history_reason}"
            )
        if extra:
            stepper = None  # options the stepper does not know: run the solver itself
    return Inner(
        name=inner,
        fn=spec.fn,
        options={**spec.defaults, **opts},
        stochastic=not spec.is_deterministic(opts),
        multistep=spec.multistep,
        history_step=stepper,
        history=int(getattr(spec, "history", 0)) if stepper is not None else 0,
    )


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


def inner_is_deterministic(inner: str, inner_options: Mapping[str, Any] | None = None) -> bool:
    from .registry import get_sampler

    return get_sampler(inner).is_deterministic(inner_options or {})


def predraw_noise(noise: NoiseSource | None, x: Tensor, steps: int) -> Tensor:
    """``[steps, B, ...]``: one ``randn_like(noise, x)`` per step, in step order.

    This is exactly the sequence of draws the serial single-step samplers make (the
    foundation's convention), so a parallel run replays the serial run's noise.
    """
    return torch.stack([randn_like(noise, x) for _ in range(steps)])


def per_row_grid(sigmas: Tensor, batch: int) -> Tensor:
    """The host float64 grid as ``[N+1, batch]`` (a shared ``[N+1]`` grid is expanded)."""
    from .core import check_grid

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


_SPEC_CLASS: dict[type, type] = {}


def inner_sampler_spec(base: type, *args: Any, **kwargs: Any) -> Any:
    """A registry entry (subclass of ``base`` = ``SamplerSpec``) whose
    :meth:`is_deterministic` follows its inner solver: deterministic iff the inner solver
    (option ``inner``, with ``inner_options``) is."""
    cls = _SPEC_CLASS.get(base)
    if cls is None:

        class InnerSamplerSpec(base):  # type: ignore[misc, valid-type]
            def is_deterministic(self, options: Mapping[str, Any] | None = None) -> bool:
                opts = {**self.defaults, **(options or {})}
                return inner_is_deterministic(
                    opts.get("inner", "ddim"), opts.get("inner_options") or {}
                )

        cls = _SPEC_CLASS[base] = InnerSamplerSpec
    return cls(*args, **kwargs)


def relative_change(new: Tensor, old: Tensor) -> Tensor:
    """``[B]``: per-sample relative RMS change ``||new - old|| / ||new||`` (2-norm over each
    sample's elements; the ``1/sqrt(d)`` of an RMS cancels), the convergence measure of the
    parallel samplers. A sample with ``new = 0`` counts as changed unless ``old = 0`` too."""
    B = new.shape[0]
    num = (new - old).reshape(B, -1).pow(2).sum(1)
    den = new.reshape(B, -1).pow(2).sum(1)
    return (num / den.clamp_min(torch.finfo(den.dtype).tiny)).sqrt()
