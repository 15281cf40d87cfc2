"""The literal sampler registry: config name -> :class:`SamplerSpec`.

A new entry is picked up by the parametrised tests, ``samplerlab samplers`` and
``samplerlab bench`` automatically. Every entry's rules take ``(steps, options)``
(:mod:`samplerlab.samplers.spec`); the parallel samplers get their inner solver here.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
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
    pmm,
    rmm,
    rmm_parallel,
    sde,
    srds,
    unipc,
)
from .aliases import ALIAS_KEYS, ALIASES, Alias, alias_key
from .core import SamplerError
from .history_steps import HISTORY
from .iia import sample_biia_edm, sample_iia_ddim, sample_iia_dpmpp_2m, sample_iia_edm
from .inner import Inner
from .spec import DEFAULT_INNER, Options, SamplerSpec, dpm_solver_rules, resolve_inner, two_stage

__all__ = ["ALIASES", "SAMPLERS", "Alias", "SamplerSpec", "get_sampler", "resolve"]

# Grids (defaults chosen on the analytic panel: benchmarks/bench_panel.py,
# benchmarks/results/panel.md). ``final="replace"``: the last sigma replaced by 0.
FINAL_0 = {"final": "replace"}
VP_UNIFORM: dict[str, Any] = {"vp_schedule": "time_uniform"}
KARRAS_TQ: dict[str, Any] = {"default_schedule_options": FINAL_0, "vp_schedule": "time_quadratic"}
LOGSNR: dict[str, Any] = {"default_schedule": "logsnr", "default_schedule_options": FINAL_0}
LOGSNR_TQ: dict[str, Any] = {**LOGSNR, "vp_schedule": "time_quadratic"}
# EDM Heun's grids (IIA-EDM's too): Karras (EDM) / log-SNR (VP table), sigma_min -> 0.
HEUN: dict[str, Any] = {"vp_schedule": "logsnr", "vp_schedule_options": FINAL_0}
HEUN_GRIDS: dict[str, Any] = {**HEUN, "default_schedule_options": FINAL_0}
# The IIA samplers: fitted coefficients, multistep (the fitted terms use earlier steps).
IIA: dict[str, Any] = {"needs_coeffs": True, "multistep": True}
IIA_HEUN: dict[str, Any] = {**IIA, **HEUN_GRIDS, "nfe_rule": two_stage, "order": 2}


def _singlestep(order: int, **defaults: Any) -> dict[str, Any]:
    """The DPM-Solver-k entries: order k, its plan and NFE rules, the DPM grids."""
    return {
        "order": order,
        "defaults": {"order": order, **defaults},
        **dpm_solver_rules(order),
        **LOGSNR_TQ,
    }


DPM_SOLVER_PP = (
    "DPM-Solver-{order} singlestep on the data prediction (DPM-Solver++, Lu et al. 2022b; "
    "algorithm=dpmsolver: Lu et al. 2022); steps = NFE (DPM-Solver-fast orders)"
)


def _inner_deterministic(options: Options) -> bool:
    """A parallel sampler is deterministic iff its inner solver is."""
    return _inner_spec(options).deterministic(options.get("inner_options") or {})


def _srds_inner(options: Options) -> Inner:
    pipelined = bool(options.get("pipelined", srds.PIPELINED))
    reason = " (pipelined=True steps fine solves one state at a time)"
    return resolve_inner(SAMPLERS, "srds", options, need_history=pipelined, history_reason=reason)


def _paradigms_inner(options: Options) -> Inner:
    reason = " (ParaDiGMS takes a step's history from its neighbouring states)"
    return resolve_inner(SAMPLERS, "paradigms", options, need_history=True, history_reason=reason)


def _inner_spec(options: Options) -> SamplerSpec:
    return get_sampler(options.get("inner", DEFAULT_INNER))


# The parallel-in-time samplers: realised NFE; determinism, grid and inner solver from
# ``inner`` (the default grid is the checked inner solver's: ``grid_from``).
PARALLEL: dict[str, Any] = {"nfe_exact": False, "deterministic_rule": _inner_deterministic}

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(
        "euler",
        ancestral.sample_euler_churn,
        "Euler on the probability-flow ODE (Karras et al. 2022); s_churn>0 stochastic",
        order=1,
        stochastic_options=("s_churn",),
        **KARRAS_TQ,
    ),
    "ddim": SamplerSpec(
        "ddim",
        ddim.sample_ddim,
        "DDIM (Song et al. 2021); eta=0 deterministic, eta>0 stochastic",
        order=1,
        stochastic_options=("eta",),
        **KARRAS_TQ,
    ),
    "ddpm": SamplerSpec(
        "ddpm",
        ddpm.sample_ddpm,
        "DDPM ancestral (Ho et al. 2020); variant=posterior|fixed_large|sde",
        stochastic=True,
        parallel_inner=True,
        **VP_UNIFORM,
    ),
    "edm_heun": SamplerSpec(
        "edm_heun",
        edm.sample_edm_heun,
        "EDM Heun, 2nd order (Karras et al. 2022, Alg. 2); s_churn>0 stochastic",
        nfe_rule=two_stage,
        order=2,
        stochastic_options=("s_churn",),
        grid_dependent_options=("s_churn",),
        **HEUN_GRIDS,
    ),
    "dpm_solver_1": SamplerSpec(
        "dpm_solver_1",
        dpm_solver.sample_dpm_solver,
        "DPM-Solver-1 singlestep (Lu et al. 2022); steps = NFE",
        **_singlestep(1),
    ),
    "dpm_solver_2": SamplerSpec(
        "dpm_solver_2",
        dpm_solver.sample_dpm_solver,
        DPM_SOLVER_PP.format(order=2),
        **_singlestep(2, algorithm="dpmsolver++"),
    ),
    "dpm_solver_3": SamplerSpec(
        "dpm_solver_3",
        dpm_solver.sample_dpm_solver,
        DPM_SOLVER_PP.format(order=3),
        **_singlestep(3, algorithm="dpmsolver++"),
    ),
    "dpmpp_2m": SamplerSpec(
        "dpmpp_2m",
        dpm_solver.sample_dpmpp_2m,
        "DPM-Solver++(2M) multistep on the data prediction (Lu et al. 2022b)",
        order=2,
        **HISTORY["dpmpp_2m"],
        **LOGSNR_TQ,
    ),
    # --- Poisson midpoint, randomized midpoints ---
    "pmm": SamplerSpec(
        "pmm",
        pmm.sample_pmm,
        "Poisson Midpoint (Kandasamy & Nagaraj 2024) over the DDPM chain; steps = coarse "
        "steps N, K = 1000//N sub-steps each (fine grid N*K); random NFE ~ N(2 - 1/K)",
        stochastic=True,
        nfe_rule=lambda n, o: pmm.expected_nfe(n, o.get("K"), o.get("midpoints", "bernoulli")),
        nfe_exact=False,
        plan_rule=pmm.plan_pmm,
        **VP_UNIFORM,
    ),
    "rmm": SamplerSpec(
        "rmm",
        rmm.sample_rmm,
        "randomized midpoint on the PF-ODE (Gupta, Cai, Chen 2025); 2 NFE/step, random "
        "midpoint times; form=ddim (default)|data|exponential",
        stochastic=True,
        nfe_rule=two_stage,
        **VP_UNIFORM,
    ),
    "rmm_pc": SamplerSpec(
        "rmm_pc",
        rmm.sample_rmm_pc,
        "randomized-midpoint predictor + randomized-midpoint underdamped-Langevin corrector "
        "(Gupta, Cai, Chen 2025)",
        stochastic=True,
        nfe_rule=lambda n, o: rmm.rmm_pc_nfe(n, o.get("window", 1), o.get("corrector_steps", 1)),
        **VP_UNIFORM,
    ),
    "rmm_parallel": SamplerSpec(
        "rmm_parallel",
        rmm_parallel.sample_rmm_parallel,
        "parallel randomized midpoints (Gupta, Cai, Chen 2025; Shen & Lee 2019): windows of "
        "R=3K/2 steps, only the midpoints evaluated, K = ceil(log2 d)+1 Picard rounds per window "
        "in one batched call each; corrector_steps>0: parallel ULD corrector; nfe realised",
        stochastic=True,
        nfe_rule=lambda n, o: rmm_parallel.rmm_parallel_nfe(n, o.get("R"), o.get("K")),
        nfe_exact=False,
        **VP_UNIFORM,
    ),
    # --- parallel-in-time samplers over an inner solver: SRDS, ParaDiGMS ---
    "srds": SamplerSpec(
        "srds",
        srds.sample_srds,
        "SRDS parareal over an inner solver (Selvam et al. 2024), pipelined; converges to the "
        "plain serial run of the inner solver (multistep ones carry their history across "
        "blocks; with inner_options or no history_step: restarted at each block, not "
        "pipelined); nfe/rounds are realised",
        resolve_inner=_srds_inner,
        grid_from=lambda o: SAMPLERS[_srds_inner(o).name],
        **PARALLEL,
    ),
    "paradigms": SamplerSpec(
        "paradigms",
        paradigms.sample_paradigms,
        "ParaDiGMS Picard iteration with a sliding window over an inner solver (Shih et al. "
        "2023; multistep ones take their history from neighbouring states); converges to the "
        "plain serial run of the inner solver; nfe/rounds are realised",
        resolve_inner=_paradigms_inner,
        grid_from=lambda o: SAMPLERS[_paradigms_inner(o).name],
        **PARALLEL,
    ),
    # --- IIA samplers ---
    "iia_ddim": SamplerSpec(
        "iia_ddim",
        sample_iia_ddim,
        "IIA-DDIM (Zhang et al. 2024, eq. 6/8); coeffs= fitted file, else plain DDIM",
        order=1,
        **IIA,
        **KARRAS_TQ,
    ),
    "iia_dpmpp_2m": SamplerSpec(
        "iia_dpmpp_2m",
        sample_iia_dpmpp_2m,
        "IIA-DPM-Solver++(2M) (Zhang et al. 2024, eq. 23); coeffs= fitted file",
        order=2,
        **IIA,
        **LOGSNR_TQ,
    ),
    "iia_edm": SamplerSpec(
        "iia_edm",
        sample_iia_edm,
        "IIA-EDM Heun (Zhang et al. 2024, eqs. 17-19); coeffs= fitted file",
        **IIA_HEUN,
    ),
    "biia_edm": SamplerSpec(
        "biia_edm",
        sample_biia_edm,
        "BIIA-EDM Heun (Zhang et al. 2024, eq. 13, Alg. 2); coeffs= fitted file",
        **IIA_HEUN,
    ),
    # --- the contenders of k-diffusion and diffusers ---
    # ``order`` is the global rate a refinement ladder measures with the defaults: a
    # first-order warm-up step (and ``lower_order_final``) holds third-order multistep
    # methods to 2; their nominal orders are tested with a fine warm-up (test_contenders.py).
    "unipc": SamplerSpec(
        "unipc",
        unipc.sample_unipc,
        "UniPC (Zhao et al. 2023): UniP predictor + UniC corrector on the data prediction; "
        "order=1|2|3 (default 2), variant=bh1|bh2 (bh2)",
        order=3,
        **HISTORY["unipc"],
        **LOGSNR_TQ,
    ),
    "deis": SamplerSpec(
        "deis",
        multistep.sample_deis,
        "DEIS (Zhang & Chen 2023): multistep exponential integrator, log-rho Lagrange "
        "polynomial of the noise history; order=1|2|3",
        **HISTORY["deis"],
        **KARRAS_TQ,
    ),
    "ipndm": SamplerSpec(
        "ipndm",
        multistep.sample_ipndm,
        "improved PNDM (Zhang & Chen 2023; Zhou et al. 2024): fixed Adams-Bashforth-4 on the "
        "PF-ODE slope with lower-order warm-up",
        order=2,
        **HISTORY["ipndm"],
        **LOGSNR_TQ,
    ),
    "lms": SamplerSpec(
        "lms",
        multistep.sample_lms,
        "linear multistep (Adams-Bashforth in sigma, order 4; k-diffusion / diffusers LMS)",
        **HISTORY["lms"],
        **KARRAS_TQ,
    ),
    "dpmpp_3m": SamplerSpec(
        "dpmpp_3m",
        multistep.sample_dpmpp_3m,
        "DPM-Solver++(3M) multistep on the data prediction (Lu et al. 2022b); "
        "form=library (the reference code's weights, default) | taylor (third order)",
        **HISTORY["dpmpp_3m"],
        **LOGSNR,
    ),
    "dpmpp_2m_sde": SamplerSpec(
        "dpmpp_2m_sde",
        sde.sample_dpmpp_2m_sde,
        "DPM-Solver++(2M) SDE (Lu et al. 2022b; diffusers' sde-dpmsolver++); eta=1",
        stochastic=True,
        multistep=True,
    ),
    "dpmpp_3m_sde": SamplerSpec(
        "dpmpp_3m_sde",
        sde.sample_dpmpp_3m_sde,
        "DPM-Solver++(3M) SDE (Lu et al. 2022b; k-diffusion); eta=1",
        stochastic=True,
        multistep=True,
    ),
    "dpmpp_sde": SamplerSpec(
        "dpmpp_sde",
        sde.sample_dpmpp_sde,
        "DPM-Solver++ SDE, singlestep (Lu et al. 2022b; k-diffusion); Brownian noise "
        "at both stages",
        stochastic=True,
        nfe_rule=two_stage,
    ),
    "dpmpp_2s_ancestral": SamplerSpec(
        "dpmpp_2s_ancestral",
        ancestral.sample_dpmpp_2s_ancestral,
        "DPM-Solver++(2S) ancestral (Lu et al. 2022b, Alg. 1 + ancestral noise)",
        stochastic=True,
        nfe_rule=two_stage,
    ),
    "dpm_2": SamplerSpec(
        "dpm_2",
        ancestral.sample_dpm_2,
        "DPM-2 (Karras et al. 2022): second order, midpoint in log sigma; s_churn>0 stochastic",
        nfe_rule=two_stage,
        order=2,
        stochastic_options=("s_churn",),
        **KARRAS_TQ,
    ),
    "dpm_2_ancestral": SamplerSpec(
        "dpm_2_ancestral",
        ancestral.sample_dpm_2_ancestral,
        "DPM-2 ancestral (k-diffusion; diffusers' KDPM2AncestralDiscreteScheduler)",
        stochastic=True,
        nfe_rule=two_stage,
    ),
    "euler_ancestral": SamplerSpec(
        "euler_ancestral",
        ancestral.sample_euler_ancestral,
        "Euler ancestral ('Euler a'; = DDIM eta=1, the DDPM posterior step)",
        stochastic=True,
    ),
    "dpm_adaptive": SamplerSpec(
        "dpm_adaptive",
        adaptive.sample_dpm_adaptive,
        "adaptive step-size DPM-Solver-23 (Lu et al. 2022, App. C): per-sample error "
        "control (rtol, atol) below a step cap of 1/steps of the log-SNR range; NFE realised",
        nfe_rule=lambda steps, options: 3 * steps + 1,
        nfe_exact=False,
        multistep=True,
        **LOGSNR_TQ,
    ),
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


def find_alias(name: str) -> str | None:
    """The alias ``name`` refers to (case and spacing ignored), or ``None``."""
    if name in SAMPLERS:
        return None
    return ALIAS_KEYS.get(alias_key(name))


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
