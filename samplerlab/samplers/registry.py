"""The literal sampler registry: config name -> :class:`SamplerSpec`.

A new entry is picked up by the parametrised tests, ``samplerlab samplers`` and
``samplerlab bench`` automatically.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import ddim, ddpm, dpm_solver, edm, paradigms, parallel, pmm, rmm, rmm_parallel, srds
from .core import SamplerError
from .iia import sample_biia_edm, sample_iia_ddim, sample_iia_dpmpp_2m, sample_iia_edm


def _same(steps: int) -> tuple[int, dict[str, Any]]:
    return steps, {}


def _dpm_fast(order: int) -> Callable[..., tuple[int, dict[str, Any]]]:
    def plan(steps: int, options: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        # Explicit per-step orders define the grid; else DPM-Solver-fast allocates ``steps`` NFE.
        orders = options.get("orders") or dpm_solver.dpm_solver_fast_orders(steps, order)
        return len(orders), {"orders": list(orders)}

    return plan


def _dpm_nfe(steps: int, orders: Sequence[int] | None = None) -> int:
    """DPM-Solver NFE: ``steps`` (DPM-Solver-fast), or with explicit ``orders`` their sum
    with the last step to sigma = 0 a 1-NFE denoise (grids end at 0)."""
    return steps if orders is None else int(sum(orders[:-1])) + 1


@dataclass(frozen=True)
class SamplerSpec:
    """What the registry knows about a sampler.

    Attributes:
        fn: the pure sampler ``fn(denoiser, x, sigmas, *, noise, **options)``.
        description: one line for ``samplerlab samplers``.
        deterministic: with its default options (see :meth:`is_deterministic`).
        nfe: network evaluations per sample as a function of ``steps``.
        nfe_exact: False when ``nfe`` is an expectation (random NFE, e.g. PMM).
        order: convergence order of a deterministic solver (tested on the Gaussian).
        plan: maps the user's ``steps`` to (grid steps, extra options); e.g. DPM-Solver's
            ``steps`` is its NFE budget, allocated over orders (DPM-Solver-fast).
        stochastic_options: options that make the sampler stochastic when > 0.
        defaults: options bound for this registry name (e.g. ``order=3``).
        needs_coeffs: takes fitted IIA coefficients.
        multistep: its steps use history (cannot be restarted per step by ParaDiGMS).
        default_schedule: grid used when the denoiser has no VP time table (``karras``;
            ``logsnr`` for the DPM-Solvers), with ``default_schedule_options``.
        vp_schedule: grid used when it has one (e.g. ``time_quadratic`` for the DPM-Solvers:
            measured best on the analytic mixture, see benchmarks/README.md).
        parallel_inner: can serve as the inner solver of SRDS / ParaDiGMS (restartable on any
            sub-grid; randomness only as one standard-normal draw per step); None: any
            deterministic solver with a fixed NFE and no fitted coefficients.
        grid_dependent_options: options (> 0) whose effect depends on the grid length (not
            restartable per block or step).
        history_step: for a multistep solver, its step with the history given,
            ``step(x, sigma, sigma_next, D(x, sigma), [(D_prev, sigma_prev), ...])``
            (lets ParaDiGMS and pipelined SRDS take the history from neighbouring states);
            ``history``: how many previous pairs it uses.
    """

    name: str
    fn: Callable[..., Any]
    description: str
    deterministic: bool
    nfe: Callable[[int], float]
    nfe_exact: bool = True
    order: int | None = None
    plan: Callable[[int], tuple[int, dict[str, Any]]] = _same
    stochastic_options: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    needs_coeffs: bool = False
    multistep: bool = False
    default_schedule: str = "karras"
    default_schedule_options: Mapping[str, Any] = field(default_factory=dict)
    vp_schedule: str | None = None
    parallel_inner: bool | None = None
    grid_dependent_options: tuple[str, ...] = ()
    history_step: Callable[..., Any] | None = None
    history: int = 0

    def is_deterministic(self, options: Mapping[str, Any] | None = None) -> bool:
        opts = {**self.defaults, **(options or {})}
        return self.deterministic and not any(
            float(opts.get(k, 0) or 0) > 0 for k in self.stochastic_options
        )

    def option_names(self) -> list[str]:
        params = inspect.signature(self.fn).parameters.values()
        return [
            p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "noise"
        ]

    def check_options(self, options: Mapping[str, Any]) -> None:
        valid = self.option_names()
        for key in options:
            if key not in valid:
                raise SamplerError(
                    f"unknown option '{key}' for sampler '{self.name}'; valid: "
                    f"{', '.join(valid) or '(none)'}"
                )

    def plan_for(
        self, steps: int, options: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(grid steps, planned options) for ``steps``; a plan may read the user's options."""
        if len(inspect.signature(self.plan).parameters) >= 2:
            return self.plan(steps, {**self.defaults, **(options or {})})
        return self.plan(steps)

    def nfe_for(self, steps: int, options: Mapping[str, Any] | None = None) -> float:
        """NFE per sample at ``steps`` with these options (those the NFE rule takes)."""
        params = inspect.signature(self.nfe).parameters
        opts = {
            k: v
            for k, v in {**self.defaults, **(options or {})}.items()
            if k in params and k != "steps"
        }
        return float(self.nfe(steps, **opts))

    def steps_for_nfe(
        self, budget: int, options: Mapping[str, Any] | None = None, max_steps: int | None = None
    ) -> int | None:
        """The ``steps`` whose NFE (:meth:`nfe_for`) is the largest value ``<= budget``.

        A generic inversion of the NFE rule (ties go to more steps), so samplers with 2 or 3
        NFE per step are compared at equal NFE; step counts the sampler rejects
        (``SamplerError``) are skipped. ``None`` if no step count fits.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise SamplerError(f"NFE budgets must be integers >= 1, got {budget!r}")
        best: tuple[float, int] | None = None
        for steps in range(1, (max_steps or 4 * budget + 16) + 1):
            try:
                nfe = self.nfe_for(steps, options)
            except SamplerError:
                continue
            if nfe <= budget + 1e-9 and (best is None or (nfe, steps) >= best):
                best = (nfe, steps)
        return None if best is None else best[1]

    def schedule_for(self, has_vp: bool) -> str:
        return self.vp_schedule if (has_vp and self.vp_schedule) else self.default_schedule

    def __call__(self, denoiser: Any, x: Any, sigmas: Any, **options: Any) -> Any:
        return self.fn(denoiser, x, sigmas, **{**self.defaults, **options})


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(
        "euler",
        ddim.sample_euler,
        "Euler on the probability-flow ODE (Karras et al. 2022)",
        deterministic=True,
        nfe=lambda n: n,
        order=1,
    ),
    "ddim": SamplerSpec(
        "ddim",
        ddim.sample_ddim,
        "DDIM (Song et al. 2021); eta=0 deterministic, eta>0 stochastic",
        deterministic=True,
        nfe=lambda n: n,
        order=1,
        stochastic_options=("eta",),
        vp_schedule="time_uniform",
    ),
    "ddpm": SamplerSpec(
        "ddpm",
        ddpm.sample_ddpm,
        "DDPM ancestral (Ho et al. 2020); variant=posterior|fixed_large|sde",
        deterministic=False,
        nfe=lambda n: n,
        vp_schedule="time_uniform",
        parallel_inner=True,
    ),
    "edm_heun": SamplerSpec(
        "edm_heun",
        edm.sample_edm_heun,
        "EDM Heun, 2nd order (Karras et al. 2022, Alg. 2); s_churn>0 stochastic",
        deterministic=True,
        nfe=lambda n: 2 * n - 1,
        order=2,
        stochastic_options=("s_churn",),
        grid_dependent_options=("s_churn",),
    ),
    "dpm_solver_1": SamplerSpec(
        "dpm_solver_1",
        dpm_solver.sample_dpm_solver,
        "DPM-Solver-1 singlestep (Lu et al. 2022); steps = NFE",
        deterministic=True,
        nfe=_dpm_nfe,
        order=1,
        plan=_dpm_fast(1),
        defaults={"order": 1},
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "dpm_solver_2": SamplerSpec(
        "dpm_solver_2",
        dpm_solver.sample_dpm_solver,
        "DPM-Solver-2 singlestep (Lu et al. 2022); steps = NFE (DPM-Solver-fast orders)",
        deterministic=True,
        nfe=_dpm_nfe,
        order=2,
        plan=_dpm_fast(2),
        defaults={"order": 2},
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "dpm_solver_3": SamplerSpec(
        "dpm_solver_3",
        dpm_solver.sample_dpm_solver,
        "DPM-Solver-3 singlestep (Lu et al. 2022); steps = NFE (DPM-Solver-fast orders)",
        deterministic=True,
        nfe=_dpm_nfe,
        order=3,
        plan=_dpm_fast(3),
        defaults={"order": 3},
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "dpmpp_2m": SamplerSpec(
        "dpmpp_2m",
        dpm_solver.sample_dpmpp_2m,
        "DPM-Solver++(2M) multistep on the data prediction (Lu et al. 2022b)",
        deterministic=True,
        nfe=lambda n: n,
        order=2,
        multistep=True,
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
        history_step=parallel.dpmpp_2m_history_step,
        history=1,
    ),
    # --- new samplers: Poisson midpoint, randomized midpoints (issue 3) ---
    "pmm": SamplerSpec(
        "pmm",
        pmm.sample_pmm,
        "Poisson Midpoint (Kandasamy & Nagaraj 2024) over the DDPM chain; steps = coarse "
        "steps N, K = 1000//N sub-steps each (fine grid N*K); random NFE ~ N(2 - 1/K)",
        deterministic=False,
        nfe=pmm.expected_nfe,
        nfe_exact=False,
        plan=pmm.plan_pmm,
        vp_schedule="time_uniform",
    ),
    "rmm": SamplerSpec(
        "rmm",
        rmm.sample_rmm,
        "randomized midpoint on the PF-ODE (Gupta, Cai, Chen 2025); 2 NFE/step, random "
        "midpoint times; form=ddim (default)|data|exponential",
        deterministic=False,
        nfe=lambda n: 2 * n - 1,
        vp_schedule="time_uniform",
    ),
    "rmm_pc": SamplerSpec(
        "rmm_pc",
        rmm.sample_rmm_pc,
        "randomized-midpoint predictor + randomized-midpoint underdamped-Langevin corrector "
        "(Gupta, Cai, Chen 2025)",
        deterministic=False,
        nfe=rmm.rmm_pc_nfe,
        vp_schedule="time_uniform",
    ),
    "rmm_parallel": SamplerSpec(
        "rmm_parallel",
        rmm_parallel.sample_rmm_parallel,
        "parallel randomized midpoints (Gupta, Cai, Chen 2025; Shen & Lee 2019): windows of "
        "R=3K/2 steps, only the midpoints evaluated, K = ceil(log2 d)+1 Picard rounds per window "
        "in one batched call each; corrector_steps>0: parallel ULD corrector; nfe realised",
        deterministic=False,
        nfe=rmm_parallel.rmm_parallel_nfe,
        nfe_exact=False,
        vp_schedule="time_uniform",
    ),
    # --- parallel-in-time samplers: SRDS, ParaDiGMS (issue 3) ---
    "srds": parallel.inner_sampler_spec(
        SamplerSpec,
        "srds",
        srds.sample_srds,
        "SRDS parareal over an inner solver (Selvam et al. 2024), pipelined; converges to the "
        "serial solve (multistep solvers without a history_step: restarted at each block); "
        "nfe/rounds are realised",
        deterministic=True,
        nfe=lambda n: n,
        nfe_exact=False,
        vp_schedule="time_uniform",
    ),
    "paradigms": parallel.inner_sampler_spec(
        SamplerSpec,
        "paradigms",
        paradigms.sample_paradigms,
        "ParaDiGMS Picard iteration with a sliding window over an inner solver (Shih et al. "
        "2023; multistep ones take their history from neighbouring states); converges to the "
        "serial solve; nfe/rounds are realised",
        deterministic=True,
        nfe=lambda n: n,
        nfe_exact=False,
        vp_schedule="time_uniform",
    ),
    # --- IIA samplers (issue 4) ---
    "iia_ddim": SamplerSpec(
        "iia_ddim",
        sample_iia_ddim,
        "IIA-DDIM (Zhang et al. 2024, eq. 6/8); coeffs= fitted file, else plain DDIM",
        deterministic=True,
        nfe=lambda n: n,
        order=1,
        needs_coeffs=True,
        multistep=True,
        vp_schedule="time_uniform",
    ),
    "iia_dpmpp_2m": SamplerSpec(
        "iia_dpmpp_2m",
        sample_iia_dpmpp_2m,
        "IIA-DPM-Solver++(2M) (Zhang et al. 2024, eq. 23); coeffs= fitted file",
        deterministic=True,
        nfe=lambda n: n,
        order=2,
        needs_coeffs=True,
        multistep=True,
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "iia_edm": SamplerSpec(
        "iia_edm",
        sample_iia_edm,
        "IIA-EDM Heun (Zhang et al. 2024, eqs. 17-19); coeffs= fitted file",
        deterministic=True,
        nfe=lambda n: 2 * n - 1,
        order=2,
        needs_coeffs=True,
        multistep=True,
    ),
    "biia_edm": SamplerSpec(
        "biia_edm",
        sample_biia_edm,
        "BIIA-EDM Heun (Zhang et al. 2024, eq. 13, Alg. 2); coeffs= fitted file",
        deterministic=True,
        nfe=lambda n: 2 * n - 1,
        order=2,
        needs_coeffs=True,
        multistep=True,
    ),
}


def get_sampler(name: str) -> SamplerSpec:
    """The registry entry of ``name``, or one clear error listing the valid names."""
    if name not in SAMPLERS:
        raise SamplerError(f"unknown sampler '{name}'; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def list_samplers() -> dict[str, str]:
    """Sampler names with their one-line descriptions."""
    return {name: spec.description for name, spec in SAMPLERS.items()}
