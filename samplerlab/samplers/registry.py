"""The literal sampler registry: config name -> :class:`SamplerSpec`.

A new entry is picked up by the parametrised tests, ``samplerlab samplers`` and
``samplerlab bench`` automatically.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import (
    adaptive,
    ancestral,
    ddim,
    ddpm,
    dpm_solver,
    edm,
    multistep,
    paradigms,
    parallel,
    pmm,
    rmm,
    rmm_parallel,
    sde,
    srds,
    unipc,
)
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


# --- the contenders of k-diffusion and diffusers (issue 11) ---------------------------
# Defaults (grids and options) chosen on the analytic panel: benchmarks/bench_panel.py,
# benchmarks/results/panel.md.
_DPM_GRID: dict[str, Any] = {
    "default_schedule": "logsnr",
    "default_schedule_options": {"final": "replace"},
    "vp_schedule": "time_quadratic",
}
# ``order`` is the global rate a refinement ladder measures with the defaults: a first-order
# warm-up step (and ``lower_order_final``) holds third-order multistep methods to 2; their
# nominal orders are tested with a fine warm-up in tests/test_contenders.py.
CONTENDERS: dict[str, SamplerSpec] = {
    "unipc": SamplerSpec(
        "unipc",
        unipc.sample_unipc,
        "UniPC (Zhao et al. 2023): UniP predictor + UniC corrector on the data prediction; "
        "order=1|2|3 (default 2), variant=bh1|bh2 (bh2)",
        deterministic=True,
        nfe=lambda n: n,
        order=3,
        multistep=True,
        **_DPM_GRID,
    ),
    "deis": SamplerSpec(
        "deis",
        multistep.sample_deis,
        "DEIS (Zhang & Chen 2023): multistep exponential integrator, log-rho Lagrange "
        "polynomial of the noise history; order=1|2|3",
        deterministic=True,
        nfe=lambda n: n,
        order=None,
        multistep=True,
        default_schedule="karras",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "ipndm": SamplerSpec(
        "ipndm",
        multistep.sample_ipndm,
        "improved PNDM (Zhang & Chen 2023; Zhou et al. 2024): fixed Adams-Bashforth-4 on the "
        "PF-ODE slope with lower-order warm-up",
        deterministic=True,
        nfe=lambda n: n,
        order=2,
        multistep=True,
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "lms": SamplerSpec(
        "lms",
        multistep.sample_lms,
        "linear multistep (Adams-Bashforth in sigma, order 4; k-diffusion / diffusers LMS)",
        deterministic=True,
        nfe=lambda n: n,
        order=None,
        multistep=True,
        default_schedule="karras",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "dpmpp_3m": SamplerSpec(
        "dpmpp_3m",
        multistep.sample_dpmpp_3m,
        "DPM-Solver++(3M) multistep on the data prediction (Lu et al. 2022b); "
        "form=library (the reference code's weights, default) | taylor (third order)",
        deterministic=True,
        nfe=lambda n: n,
        order=None,
        multistep=True,
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
    ),
    "dpmpp_2m_sde": SamplerSpec(
        "dpmpp_2m_sde",
        sde.sample_dpmpp_2m_sde,
        "DPM-Solver++(2M) SDE (Lu et al. 2022b; diffusers' sde-dpmsolver++); eta=1",
        deterministic=False,
        nfe=lambda n: n,
        multistep=True,
    ),
    "dpmpp_3m_sde": SamplerSpec(
        "dpmpp_3m_sde",
        sde.sample_dpmpp_3m_sde,
        "DPM-Solver++(3M) SDE (Lu et al. 2022b; k-diffusion); eta=1",
        deterministic=False,
        nfe=lambda n: n,
        multistep=True,
    ),
    "dpmpp_sde": SamplerSpec(
        "dpmpp_sde",
        sde.sample_dpmpp_sde,
        "DPM-Solver++ SDE, singlestep (Lu et al. 2022b; k-diffusion); Brownian noise "
        "at both stages",
        deterministic=False,
        nfe=lambda n: 2 * n - 1,
    ),
    "dpmpp_2s_ancestral": SamplerSpec(
        "dpmpp_2s_ancestral",
        ancestral.sample_dpmpp_2s_ancestral,
        "DPM-Solver++(2S) ancestral (Lu et al. 2022b, Alg. 1 + ancestral noise)",
        deterministic=False,
        nfe=lambda n: 2 * n - 1,
    ),
    "dpm_2": SamplerSpec(
        "dpm_2",
        ancestral.sample_dpm_2,
        "DPM-2 (Karras et al. 2022): second order, midpoint in log sigma; s_churn>0 stochastic",
        deterministic=True,
        nfe=lambda n: 2 * n - 1,
        order=2,
        stochastic_options=("s_churn",),
        default_schedule="karras",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "dpm_2_ancestral": SamplerSpec(
        "dpm_2_ancestral",
        ancestral.sample_dpm_2_ancestral,
        "DPM-2 ancestral (k-diffusion; diffusers' KDPM2AncestralDiscreteScheduler)",
        deterministic=False,
        nfe=lambda n: 2 * n - 1,
    ),
    "euler_ancestral": SamplerSpec(
        "euler_ancestral",
        ancestral.sample_euler_ancestral,
        "Euler ancestral ('Euler a'; = DDIM eta=1, the DDPM posterior step)",
        deterministic=False,
        nfe=lambda n: n,
    ),
    "dpm_adaptive": SamplerSpec(
        "dpm_adaptive",
        adaptive.sample_dpm_adaptive,
        "adaptive step-size DPM-Solver-23 (Lu et al. 2022, App. C): per-sample error "
        "control (rtol, atol) below a step cap of 1/steps of the log-SNR range; NFE realised",
        deterministic=True,
        nfe=lambda n: 3 * n + 1,
        nfe_exact=False,
        multistep=True,
        **_DPM_GRID,
    ),
}

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(
        "euler",
        ancestral.sample_euler_churn,
        "Euler on the probability-flow ODE (Karras et al. 2022); s_churn>0 stochastic",
        deterministic=True,
        nfe=lambda n: n,
        order=1,
        stochastic_options=("s_churn",),
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
        "DPM-Solver-2 singlestep on the data prediction (DPM-Solver++, Lu et al. 2022b; "
        "algorithm=dpmsolver: Lu et al. 2022); steps = NFE (DPM-Solver-fast orders)",
        deterministic=True,
        nfe=_dpm_nfe,
        order=2,
        plan=_dpm_fast(2),
        defaults={"order": 2, "algorithm": "dpmsolver++"},
        default_schedule="logsnr",
        default_schedule_options={"final": "replace"},
        vp_schedule="time_quadratic",
    ),
    "dpm_solver_3": SamplerSpec(
        "dpm_solver_3",
        dpm_solver.sample_dpm_solver,
        "DPM-Solver-3 singlestep on the data prediction (DPM-Solver++, Lu et al. 2022b; "
        "algorithm=dpmsolver: Lu et al. 2022); steps = NFE (DPM-Solver-fast orders)",
        deterministic=True,
        nfe=_dpm_nfe,
        order=3,
        plan=_dpm_fast(3),
        defaults={"order": 3, "algorithm": "dpmsolver++"},
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
    **CONTENDERS,
}


def get_sampler(name: str) -> SamplerSpec:
    """The registry entry of ``name``, or one clear error listing the valid names."""
    if name not in SAMPLERS:
        close = difflib.get_close_matches(name, [*SAMPLERS, *ALIASES], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SamplerError(
            f"unknown sampler '{name}'; valid: {', '.join(SAMPLERS)}, or an alias listed by "
            f"`samplerlab samplers`{hint}"
        )
    return SAMPLERS[name]


def list_samplers() -> dict[str, str]:
    """Sampler names with their one-line descriptions."""
    return {name: spec.description for name, spec in SAMPLERS.items()}


# --- aliases: the names users search for (issue 11) ------------------------------------


@dataclass(frozen=True)
class Alias:
    """A library's sampler name as (registry sampler, options, grid).

    ``schedule`` ``None`` keeps the sampler's default grid. A1111's plain names use the
    model's time grid (k-diffusion's ``get_sigmas``: uniform in the table's time, then 0 =
    ``time_uniform``), its "Karras" names the Karras grid (rho 7, then 0); diffusers' class
    names their default ``timestep_spacing="linspace"`` (timesteps rounded to the table)
    with the final sigma 0 (``final="replace"`` for the multistep/singlestep solvers).
    """

    sampler: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    schedule_options: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


_KARRAS = {"schedule": "karras"}
_A1111 = {"schedule": "time_uniform"}
_DIFF_MS = {"schedule": "linspace", "schedule_options": {"final": "replace"}}
_DIFF_K = {"schedule": "linspace"}

ALIASES: dict[str, Alias] = {
    # AUTOMATIC1111 / Forge / ComfyUI-style names (k-diffusion samplers).
    "Euler": Alias("euler", "A1111", **_A1111),
    "Euler a": Alias("euler_ancestral", "A1111", **_A1111),
    "Heun": Alias("edm_heun", "A1111", **_A1111),
    "LMS": Alias("lms", "A1111", **_A1111),
    "LMS Karras": Alias("lms", "A1111", **_KARRAS),
    "DPM2": Alias("dpm_2", "A1111", **_A1111),
    "DPM2 Karras": Alias("dpm_2", "A1111", **_KARRAS),
    "DPM2 a": Alias("dpm_2_ancestral", "A1111", **_A1111),
    "DPM2 a Karras": Alias("dpm_2_ancestral", "A1111", **_KARRAS),
    "DPM++ 2S a": Alias("dpmpp_2s_ancestral", "A1111", **_A1111),
    "DPM++ 2S a Karras": Alias("dpmpp_2s_ancestral", "A1111", **_KARRAS),
    "DPM++ 2M": Alias("dpmpp_2m", "A1111", **_A1111),
    "DPM++ 2M Karras": Alias("dpmpp_2m", "A1111", **_KARRAS),
    "DPM++ SDE": Alias("dpmpp_sde", "A1111", **_A1111),
    "DPM++ SDE Karras": Alias("dpmpp_sde", "A1111", **_KARRAS),
    "DPM++ 2M SDE": Alias("dpmpp_2m_sde", "A1111", **_A1111),
    "DPM++ 2M SDE Karras": Alias("dpmpp_2m_sde", "A1111", **_KARRAS),
    "DPM++ 3M SDE": Alias("dpmpp_3m_sde", "A1111", {"form": "library"}, **_A1111),
    "DPM++ 3M SDE Karras": Alias("dpmpp_3m_sde", "A1111", {"form": "library"}, **_KARRAS),
    "DPM fast": Alias(
        "dpm_solver_3", "A1111", schedule="logsnr", note="DPM-Solver-fast on a log-SNR grid"
    ),
    "DPM adaptive": Alias("dpm_adaptive", "A1111"),
    "UniPC": Alias(
        "unipc",
        "A1111",
        {"order": 3, "variant": "bh1", "lower_order_final": True},
        note="A1111's UniPC settings: bh1, order 3",
        **_A1111,
    ),
    "DDIM": Alias(
        "ddim",
        "A1111",
        schedule="leading",
        schedule_options={"steps_offset": 1},
        note="A1111's 'uniform' DDIM timesteps",
    ),
    # diffusers scheduler classes with their default configurations.
    "DPMSolverMultistepScheduler": Alias("dpmpp_2m", "diffusers", **_DIFF_MS),
    "DPMSolverSinglestepScheduler": Alias(
        "dpm_solver_2",
        "diffusers",
        {"algorithm": "dpmsolver++"},
        note="intermediate points at half log-SNR (diffusers: at its grid points)",
        **_DIFF_MS,
    ),
    "UniPCMultistepScheduler": Alias(
        "unipc", "diffusers", {"order": 2, "variant": "bh2", "lower_order_final": True}, **_DIFF_MS
    ),
    "DEISMultistepScheduler": Alias(
        "deis",
        "diffusers",
        {"order": 2, "lower_order_final": True},
        note="ends at 0 (diffusers: at the table's sigma_min)",
        **_DIFF_MS,
    ),
    "LMSDiscreteScheduler": Alias("lms", "diffusers", **_DIFF_K),
    "EulerDiscreteScheduler": Alias("euler", "diffusers", **_DIFF_K),
    "EulerAncestralDiscreteScheduler": Alias("euler_ancestral", "diffusers", **_DIFF_K),
    "HeunDiscreteScheduler": Alias("edm_heun", "diffusers", **_DIFF_K),
    "KDPM2DiscreteScheduler": Alias("dpm_2", "diffusers", **_DIFF_K),
    "KDPM2AncestralDiscreteScheduler": Alias("dpm_2_ancestral", "diffusers", **_DIFF_K),
    "DPMSolverSDEScheduler": Alias("dpmpp_sde", "diffusers", **_DIFF_K),
    "DDIMScheduler": Alias("ddim", "diffusers", schedule="leading"),
    "DDPMScheduler": Alias("ddpm", "diffusers", schedule="leading"),
}


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


_ALIAS_KEYS = {_key(k): k for k in ALIASES}


def find_alias(name: str) -> str | None:
    """The alias ``name`` refers to (case and spacing ignored), or ``None``."""
    if name in SAMPLERS:
        return None
    return _ALIAS_KEYS.get(_key(name))


def resolve(
    name: str,
    options: Mapping[str, Any],
    schedule: str | None,
    schedule_options: Mapping[str, Any] | None,
) -> tuple[str, dict[str, Any], str | None, dict[str, Any] | None]:
    """``(sampler, options, schedule, schedule_options)`` for a registry name or an alias;
    the caller's options and schedule override the alias's."""
    key = find_alias(name)
    if key is None:
        return (
            name,
            dict(options),
            schedule,
            None if schedule_options is None else dict(schedule_options),
        )
    alias = ALIASES[key]
    if schedule is None and alias.schedule is not None:
        schedule = alias.schedule
        schedule_options = {**alias.schedule_options, **(schedule_options or {})}
    return alias.sampler, {**alias.options, **options}, schedule, schedule_options
