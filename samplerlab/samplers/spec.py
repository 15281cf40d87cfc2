"""What the registry knows about a sampler (:class:`SamplerSpec`), with the shared planning
and NFE rules of its entries.

Every rule of an entry has one fixed signature, over the options merged with the entry's
defaults:

* planning, ``plan(steps, options) -> (grid steps, planned options)``: maps the user's
  ``steps`` to the grid the sampler runs on (e.g. DPM-Solver's ``steps`` is its NFE budget,
  allocated over per-step orders; PMM's are coarse steps over a fine grid);
* NFE, ``nfe(steps, options) -> float``: network evaluations per sample (an expectation
  where ``nfe_exact`` is False);
* determinism, ``deterministic(options) -> bool``.

The options of a sampler are the keyword-only parameters of its function (``noise``
excluded), with their defaults: that signature is the one source of truth for option
names. For a sampler over an inner solver (SRDS, ParaDiGMS: ``resolve_inner`` set) the
registry resolves the options ``inner`` (a solver's name) and ``inner_options`` into the
:class:`~samplerlab.samplers.inner.Inner` passed as ``inner``.

Step functions share one calling convention: the state, then the step's end points,
``step(x, sigma, sigma_next, ...)``, per-row ``[B]`` sigmas on ``x``'s device. A
single-step solver's step calls the network itself and takes it first,
``step_<method>(denoiser, x, sigma, sigma_next, *, options)``; a multistep solver's step
takes the network output at ``x`` and the history instead (it is evaluated once and shared),
``step(x, sigma, sigma_next, denoised, history) -> x_next`` with ``denoised = D(x, sigma)``
and ``history`` the ``(x, D, sigma)`` triples of the previous states, most recent first, as
many as the step's order uses (:meth:`~samplerlab.samplers.inner.Inner.history_len`;
:data:`~samplerlab.samplers.inner.HistoryStep`; :attr:`SamplerSpec.history_step`). A
coarse step over sub-steps takes the sub-step grid ``sigmas`` ``[K+1, B]`` in place of
``(sigma, sigma_next)`` (:func:`~samplerlab.samplers.pmm.step_pmm`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .core import SamplerError
from .dpm_solver import dpm_solver_fast_orders
from .inner import DEFAULT_INNER, HistoryStep, Inner

Options = Mapping[str, Any]
PlanRule = Callable[[int, Options], tuple[int, dict[str, Any]]]
NfeRule = Callable[[int, Options], float]
DeterminismRule = Callable[[Options], bool]


def same_grid(steps: int, options: Options) -> tuple[int, dict[str, Any]]:
    """The plan of most samplers: ``steps`` grid steps, no planned options."""
    return steps, {}


def one_per_step(steps: int, options: Options) -> float:
    """One network evaluation per step."""
    return steps


def two_stage(steps: int, options: Options) -> float:
    """Two evaluations per step, one for a last step to sigma = 0 (Heun-type solvers)."""
    return 2 * steps - 1


def positive(options: Options, key: str) -> bool:
    """Whether option ``key`` is set to a value > 0 (unset and None count as 0)."""
    return float(options.get(key, 0) or 0) > 0


@dataclass(frozen=True)
class SamplerSpec:
    """What the registry knows about a sampler.

    Attributes:
        fn: the pure sampler ``fn(denoiser, x, sigmas, *, noise, **options)``.
        description: one line for ``samplerlab samplers``.
        stochastic: stochastic whatever its options (see :meth:`deterministic`).
        nfe_rule: network evaluations per sample, ``(steps, options) -> float``.
        nfe_exact: False when the NFE rule gives an expectation (random NFE, e.g. PMM).
        order: convergence order of a deterministic solver (tested on the Gaussian).
        plan_rule: ``(steps, options) -> (grid steps, planned options)``.
        stochastic_options: options that make the sampler stochastic when > 0.
        deterministic_rule: replaces ``stochastic`` / ``stochastic_options`` where
            determinism depends on more (SRDS, ParaDiGMS: on the inner solver's).
        defaults: options bound for this registry name (e.g. ``order=3``).
        needs_coeffs: takes fitted IIA coefficients.
        multistep: its steps use history (cannot be restarted per step by ParaDiGMS).
        default_schedule: grid used when the denoiser has no VP time table (``karras``;
            ``logsnr`` for the DPM-Solvers), with ``default_schedule_options``.
        vp_schedule: grid used when it has one (e.g. ``time_quadratic`` for the DPM-Solvers:
            measured best on the analytic mixture, see benchmarks/README.md), with
            ``vp_schedule_options``.
        parallel_inner: can serve as the inner solver of SRDS / ParaDiGMS (restartable on any
            sub-grid; randomness only as one standard-normal draw per step); None: any
            deterministic solver with a fixed NFE and no fitted coefficients.
        grid_dependent_options: options (> 0) whose effect depends on the grid length (not
            restartable per block or step).
        history_step: for a multistep solver, its step with the history given (module
            docstring); lets ParaDiGMS and pipelined SRDS take the history from neighbouring
            states (with the solver's default options); ``history``: how many previous
            states it uses; ``lowers_final_order``: its serial solver lowers the order at
            the grid's end (``lower_order_final``: step j of N uses <= N-1-j of them).
        resolve_inner: for a sampler over an inner solver, the registry's resolution of the
            options' ``inner`` / ``inner_options`` into the :class:`Inner` it runs.
        grid_from: for a sampler over an inner solver, the entry whose default grid it uses
            (``options -> SamplerSpec``: SRDS / ParaDiGMS take their inner solver's, so that
            with no options they converge to the inner solver's own default run).
    """

    name: str
    fn: Callable[..., Any]
    description: str
    stochastic: bool = False
    nfe_rule: NfeRule = one_per_step
    nfe_exact: bool = True
    order: int | None = None
    plan_rule: PlanRule = same_grid
    stochastic_options: tuple[str, ...] = ()
    deterministic_rule: DeterminismRule | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    needs_coeffs: bool = False
    multistep: bool = False
    default_schedule: str = "karras"
    default_schedule_options: Mapping[str, Any] = field(default_factory=dict)
    vp_schedule: str | None = None
    vp_schedule_options: Mapping[str, Any] = field(default_factory=dict)
    parallel_inner: bool | None = None
    grid_dependent_options: tuple[str, ...] = ()
    history_step: HistoryStep | None = None
    history: int = 0
    lowers_final_order: bool = False
    resolve_inner: Callable[[Options], Inner] | None = None
    grid_from: Callable[[Options], SamplerSpec] | None = None

    def with_defaults(self, options: Options | None = None) -> dict[str, Any]:
        """The user's options over the entry's defaults."""
        return {**self.defaults, **(options or {})}

    def deterministic(self, options: Options | None = None) -> bool:
        """Whether the sampler is deterministic with these options."""
        opts = self.with_defaults(options)
        if self.deterministic_rule is not None:
            return self.deterministic_rule(opts)
        return not self.stochastic and not any(positive(opts, k) for k in self.stochastic_options)

    def plan(self, steps: int, options: Options | None = None) -> tuple[int, dict[str, Any]]:
        """(grid steps, planned options) for ``steps``."""
        return self.plan_rule(steps, self.with_defaults(options))

    def nfe(self, steps: int, options: Options | None = None) -> float:
        """NFE per sample at ``steps`` with these options."""
        return float(self.nfe_rule(steps, self.with_defaults(options)))

    def can_be_inner(self) -> bool:
        """Whether the entry can serve as an inner solver: its ``parallel_inner`` flag, else
        (unset) any deterministic solver with a fixed NFE that needs no fitted coefficients
        (restartable on any sub-grid of its grid)."""
        if self.parallel_inner is not None:
            return self.parallel_inner
        return self.nfe_exact and not self.needs_coeffs and self.deterministic()

    def option_names(self) -> list[str]:
        """The options the sampler takes (module docstring)."""
        names = []
        for p in inspect.signature(self.fn).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "noise":
                names.append(p.name)
        return names

    def check_options(self, options: Options) -> None:
        valid = self.option_names()
        for key in options:
            if key not in valid:
                raise SamplerError(
                    f"unknown option '{key}' for sampler '{self.name}'; valid: "
                    f"{', '.join(valid) or '(none)'}"
                )

    def steps_for_nfe(
        self, budget: int, options: Options | None = None, max_steps: int | None = None
    ) -> int | None:
        """The ``steps`` whose NFE (:meth:`nfe`) is the largest value ``<= budget``.

        A generic inversion of the NFE rule (ties go to more steps), so samplers with 2 or 3
        NFE per step are compared at equal NFE; step counts the sampler rejects
        (``SamplerError``) are skipped. ``None`` if no step count fits.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise SamplerError(f"NFE budgets must be integers >= 1, got {budget!r}")
        best: tuple[float, int] | None = None
        for steps in range(1, (max_steps or 4 * budget + 16) + 1):
            try:
                nfe = self.nfe(steps, options)
            except SamplerError:
                continue
            if nfe <= budget + 1e-9 and (best is None or (nfe, steps) >= best):
                best = (nfe, steps)
        return None if best is None else best[1]

    def grid_owner(self, options: Options | None = None) -> SamplerSpec:
        """The entry whose default grid this sampler uses with ``options`` (itself, or for
        SRDS / ParaDiGMS the inner solver's entry: :attr:`grid_from`)."""
        if self.grid_from is None:
            return self
        return self.grid_from(self.with_defaults(options)).grid_owner()

    def schedule_for(self, has_vp: bool) -> str:
        return self.vp_schedule if (has_vp and self.vp_schedule) else self.default_schedule

    def schedule_options_for(self, has_vp: bool) -> dict[str, Any]:
        """The options of :meth:`schedule_for`'s grid (``vp_schedule_options`` for the VP
        grid, ``default_schedule_options`` whenever the grid is ``default_schedule``)."""
        if has_vp and self.vp_schedule and self.vp_schedule_options:
            return dict(self.vp_schedule_options)
        if self.schedule_for(has_vp) == self.default_schedule:
            return dict(self.default_schedule_options)
        return {}

    def __call__(self, denoiser: Any, x: Any, sigmas: Any, **options: Any) -> Any:
        opts = self.with_defaults(options)
        if self.resolve_inner is not None:
            opts["inner"] = self.resolve_inner(opts)
        return self.fn(denoiser, x, sigmas, **opts)


def dpm_solver_rules(order: int) -> dict[str, Any]:
    """The plan and NFE rules of the DPM-Solver entries: explicit per-step ``orders`` define
    the grid, NFE their sum with the last step to sigma = 0 a 1-NFE denoise (grids end at
    0); else ``steps`` is the NFE, allocated over orders up to ``order`` by DPM-Solver-fast
    (Lu et al. 2022, §3.4)."""

    def plan(steps: int, options: Options) -> tuple[int, dict[str, Any]]:
        orders = options.get("orders") or dpm_solver_fast_orders(steps, order)
        return len(orders), {"orders": list(orders)}

    def nfe(steps: int, options: Options) -> float:
        orders = options.get("orders")
        return steps if orders is None else int(sum(orders[:-1])) + 1

    return {"plan_rule": plan, "nfe_rule": nfe}


def multistep_entry(
    step: HistoryStep, history: int, lowers_final_order: bool = False
) -> dict[str, Any]:
    """The fields of a multistep entry with its history step (ParaDiGMS, pipelined SRDS):
    ``history`` previous states, ``lowers_final_order`` (:class:`SamplerSpec`)."""
    return {
        "multistep": True,
        "history_step": step,
        "history": history,
        "lowers_final_order": lowers_final_order,
    }


def resolve_inner(
    samplers: Mapping[str, SamplerSpec],
    sampler: str,
    options: Mapping[str, Any],
    *,
    need_history: bool,
    history_reason: str = "",
) -> Inner:
    """The :class:`Inner` of ``options["inner"]`` (a name in ``samplers``; unset: ``ddim``)
    with ``options["inner_options"]``, checked to serve ``sampler``. Which solvers qualify,
    and whether a multistep one can take its history from elsewhere (:meth:`Inner.step`),
    is read from the registry entry (``parallel_inner``, ``multistep``, ``history_step``),
    never from a list of names.

    ``need_history``: the caller steps multistep solvers one state at a time
    (:meth:`Inner.step`), so a multistep inner solver needs a ``history_step`` in its entry.
    """
    inner = options.get("inner", DEFAULT_INNER)
    inner_options = options.get("inner_options")

    def usable(spec: SamplerSpec) -> bool:
        return spec.can_be_inner() and not (
            need_history and spec.multistep and spec.history_step is None
        )

    valid = [name for name, s in samplers.items() if usable(s)]
    spec = samplers.get(inner) if isinstance(inner, str) else None
    if spec is None or not usable(spec):
        if spec is not None and spec.can_be_inner():
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
    merged = spec.with_defaults(opts)
    for key in spec.grid_dependent_options:
        if positive(merged, key):
            raise SamplerError(
                f"{sampler}: inner '{inner}' with {key} > 0 is stochastic in a way that depends "
                f"on the grid length; a deterministic inner solver is required here "
                f"(set {key}=0, or use ddpm / ddim with eta > 0)"
            )
    stepper = spec.history_step if spec.multistep else None
    if stepper is not None and opts:
        # A history step takes no options (the step convention): run the solver itself.
        if need_history:
            raise SamplerError(
                f"{sampler}: inner option(s) {', '.join(opts)} of '{inner}' are not supported "
                f"when its history comes from neighbouring states{history_reason}"
            )
        stepper = None
    return Inner(
        name=inner,
        fn=spec.fn,
        options=merged,
        stochastic=not spec.deterministic(opts),
        multistep=spec.multistep,
        history_step=stepper,
        history=spec.history if stepper is not None else 0,
        lowers_final_order=spec.lowers_final_order and stepper is not None,
    )
