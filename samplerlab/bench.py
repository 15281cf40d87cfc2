"""Quality and cost of every registered sampler versus NFE on an analytic model.

For each sampler x NFE budget, :func:`run_bench` plans its jobs with the evaluation's
planner (:mod:`samplerlab.evaluation.plan`): the largest number of steps whose registry NFE
(``spec.nfe(steps)``) fits the budget, so samplers with 2 or 3 evaluations per step and
samplers whose ``steps`` already is the NFE (DPM-Solver) are compared at equal cost; a
budget below one step's NFE runs one step (its row's ``expected_nfe`` exceeds the budget).
Every sampler draws from the same seeds (a paired comparison) and is scored by

* ``sw``: the sliced 2-Wasserstein distance of its samples to an independent exact sample
  of the same size (``sw_floor`` is the same distance between two exact samples: the
  Monte-Carlo noise level below which differences mean nothing);
* ``rms`` (deterministic samplers only): the RMS error to the exact probability-flow ODE
  endpoint from the same initial noise. For the Gaussian the endpoint is the closed form;
  for the mixture it is a fine DPM-Solver-3 solve in float64 whose convergence is checked
  by halving its resolution (``ref_residual``, the RMS change between the two solves).
  On a multimodal model the RMS is dominated by the few samples a coarse solver sends to
  another mode, so ``err_median`` (the median over samples of each sample's RMS error)
  is reported too.

Both pathwise errors come with their spread over ``seed_sets`` (default 4) independent seed
sets: the ``n`` seeds are split into that many disjoint contiguous blocks (per-sample
seeds: each block is an independent draw of initial and sampler noise), the error is
computed on each block, and ``rms_std`` / ``err_median_std`` are the standard deviations of
the block values (``rms_sets``, ``err_median_sets``). They are the spread of a run with
``n / seed_sets`` samples; the all-``n`` value's standard error is that over
``sqrt(seed_sets)``. Two samplers' errors differ beyond noise only where they are further
apart than these spreads.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .analytic import Gaussian, GaussianMixture, sliced_wasserstein
from .errors import USER_ERRORS, ConfigError
from .evaluation.plan import plan_sampler
from .samplers.core import SamplerError, describe
from .samplers.dpm_solver import sample_dpm_solver
from .samplers.noise import PerSampleNoise
from .samplers.registry import SAMPLERS, get_sampler
from .samplers.schedules import SCHEDULES, logsnr

MODELS = ("gmm", "gaussian")
DEFAULT_BUDGETS = (10, 20, 50, 100)
DEFAULT_DDPM_BUDGETS = (1000,)
DEFAULT_FLOOR_REPEATS = 8
DEFAULT_SEED_SETS = 4
# Seeds of the two exact reference samples (far from any sampling seed range).
_EXACT_SEED_A, _EXACT_SEED_B = 1_000_003, 2_000_003


# --------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------


def default_gaussian(dim: int = 8, seed: int = 0) -> Gaussian:
    """An anisotropic Gaussian whose stds span 0.05 to 1 (stiff and curved enough to rank)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=torch.float64)
    log_s = torch.empty(dim, dtype=torch.float64).uniform_(math.log(0.05), 0.0, generator=g)
    return Gaussian(mu, log_s.exp())


def make_model(name: str, dim: int = 8, seed: int = 0) -> Gaussian | GaussianMixture:
    """The analytic benchmark model ``name`` (``gmm`` or ``gaussian``) in ``dim`` dimensions."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"--dim must be an integer >= 1, got {dim!r}")
    if name == "gmm":
        return GaussianMixture.default(dim=dim, seed=seed)
    if name == "gaussian":
        return default_gaussian(dim=dim, seed=seed)
    if Path(name).exists():
        raise ConfigError(
            f"--model '{name}': a trained model has no exact samples or ODE endpoints; "
            f"race its samplers on FID with `samplerlab evaluate --ckpt {name}` "
            f"(bench models: {', '.join(MODELS)})"
        )
    raise ConfigError(f"unknown --model '{name}'; valid: {', '.join(MODELS)}")


# --------------------------------------------------------------------------------------
# Reference ODE endpoints.
# --------------------------------------------------------------------------------------


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def per_sample_error(a: Tensor, b: Tensor) -> Tensor:
    """The RMS over dimensions of each sample's error ``[n]``."""
    return (a.double() - b.double()).reshape(a.shape[0], -1).pow(2).mean(1).sqrt()


def fine_solve(
    denoiser: Any, x: Tensor, sigma0: float, steps: int, sigma_end: float = 3e-5
) -> Tensor:
    """The PF-ODE from ``(x, sigma0)`` to 0: DPM-Solver-3 on ``steps`` log-SNR steps down to
    ``sigma_end``, then the denoise step (whose error is ``O(sigma_end^2)``), in float64."""
    grid = logsnr(steps + 1, sigma_min=sigma_end, sigma_max=sigma0)  # steps steps, then 0
    return sample_dpm_solver(denoiser, x.double(), grid, orders=[3] * steps + [1])


def reference_endpoint(
    model: Any, x: Tensor, sigma0: float, steps: int = 400
) -> tuple[Tensor, float]:
    """The exact PF-ODE endpoint from ``(x, sigma0)`` and the reference's residual.

    Closed form where the model has ``ode_solution`` (residual 0); otherwise a fine
    :func:`fine_solve` with ``steps`` order-3 steps, checked against ``steps // 2``.
    """
    x = x.double()
    if hasattr(model, "ode_solution"):
        return model.ode_solution(x, sigma0, 0.0), 0.0
    fine = fine_solve(model, x, sigma0, steps)
    coarse = fine_solve(model, x, sigma0, max(steps // 2, 1))
    return fine, _rms(fine, coarse)


# --------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------


def _check_samplers(samplers: Iterable[str] | None) -> list[str]:
    names = list(SAMPLERS) if samplers is None else list(samplers)
    if not names:
        raise SamplerError(f"no samplers selected; valid: {', '.join(SAMPLERS)}")
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise SamplerError(
            f"unknown sampler{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(SAMPLERS)}"
        )
    return list(dict.fromkeys(names))


def _check_budgets(budgets: Iterable[int], what: str) -> list[int]:
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise SamplerError(f"{what} must be integers >= 1, got {b!r}")
        out.append(b)
    return sorted(set(out))


def run_bench(
    model: Any,
    samplers: Sequence[str] | None = None,
    nfe_budgets: Iterable[int] = DEFAULT_BUDGETS,
    *,
    n_samples: int = 4000,
    seed: int = 0,
    ddpm_budgets: Iterable[int] = DEFAULT_DDPM_BUDGETS,
    sampler_options: Mapping[str, Mapping[str, Any]] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    reference_steps: int = 400,
    schedules: Mapping[str, str] | None = None,
    floor_repeats: int = DEFAULT_FLOOR_REPEATS,
    progress: bool = True,
    seed_sets: int = DEFAULT_SEED_SETS,
) -> list[dict[str, Any]]:
    """Run every sampler at every NFE budget on ``model`` and score it.

    Args:
        model: an analytic model (``Gaussian``, ``GaussianMixture``): a denoiser with
            ``sample(n, generator)`` (for the distribution distance) and, optionally,
            ``ode_solution`` (exact endpoints; otherwise a fine reference solve).
        samplers: registry names (default: every registered sampler).
        nfe_budgets: NFE budgets every sampler is run at.
        ddpm_budgets: extra budgets for stochastic samplers (DDPM-like chains).
        sampler_options: per-sampler options, e.g. ``{"ddim": {"eta": 1.0},
            "iia_ddim": {"coeffs": "c.safetensors"}}`` (samplers that need fitted
            coefficients run with their defaults unless given here).
        reference_steps: order-3 steps of the fine reference solve (mixture only).
        schedules: per-sampler sigma schedule (a name in ``SCHEDULES``) replacing the
            sampler's default grid, e.g. ``{"dpmpp_2m": "time_quadratic"}``.
        floor_repeats: independent exact samples whose distance to the exact sample gives
            ``sw_floor`` (mean) and ``sw_floor_std``.
        seed_sets: disjoint seed blocks over which the pathwise errors' spread is taken
            (``rms_std``, ``err_median_std``; ``rms_sets``, ``err_median_sets``).

    Returns:
        One dict per (sampler, budget): ``sampler, budget, steps, nfe, rounds, seconds, sw,
        sw_floor, sw_floor_std, rms, err_median, ref_residual, deterministic, schedule,
        options, expected_nfe`` (and ``error`` where the sampler refused or diverged; a
        budget below one step's NFE runs one step).
    """
    names = _check_samplers(samplers)
    budgets = _check_budgets(nfe_budgets, "NFE budgets")
    extra = _check_budgets(ddpm_budgets, "DDPM budgets")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise SamplerError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    options = {k: dict(v) for k, v in (sampler_options or {}).items()}
    for name, opts in options.items():
        if name not in names:
            raise SamplerError(
                f"options given for sampler '{name}', which is not benchmarked; "
                f"benchmarked: {', '.join(names)}"
            )
        get_sampler(name).check_options(opts)
    schedules = dict(schedules or {})
    for name, schedule in schedules.items():
        if name not in names:
            raise SamplerError(
                f"schedule given for sampler '{name}', which is not benchmarked; "
                f"benchmarked: {', '.join(names)}"
            )
        if schedule not in SCHEDULES:
            raise SamplerError(
                f"unknown schedule '{schedule}' for sampler '{name}'; valid: {', '.join(SCHEDULES)}"
            )
    if isinstance(floor_repeats, bool) or not isinstance(floor_repeats, int) or floor_repeats < 1:
        raise SamplerError(f"floor_repeats must be an integer >= 1, got {floor_repeats!r}")
    if isinstance(seed_sets, bool) or not isinstance(seed_sets, int) or seed_sets < 1:
        raise SamplerError(f"seed_sets must be an integer >= 1, got {seed_sets!r}")
    if n_samples < 2 * seed_sets:
        raise SamplerError(
            f"n_samples={n_samples} is too few for {seed_sets} seed sets (need >= 2 per set; "
            "--n or --seed-sets)"
        )

    info = describe(model)
    dim_shape = tuple(info.data_shape or (model.dim,))
    shape = (n_samples, *dim_shape)
    seeds = range(seed, seed + n_samples)
    device = torch.device(device)
    # The initial noise every sampler sees (sample() draws the same from the same seeds).
    z = PerSampleNoise(seeds).randn(shape, device=device, dtype=dtype)

    sw_floor = sw_floor_std = None
    exact = None
    if hasattr(model, "sample"):
        exact = model.sample(n_samples, torch.Generator().manual_seed(seed + _EXACT_SEED_A))
        # The floor: the same distance for independent exact samples (mean, std over a few).
        floors = torch.tensor(
            [
                sliced_wasserstein(
                    model.sample(n_samples, torch.Generator().manual_seed(seed + s)).reshape(shape),
                    exact.reshape(shape),
                )
                for s in range(_EXACT_SEED_B, _EXACT_SEED_B + floor_repeats)
            ]
        )
        sw_floor = float(floors.mean())
        sw_floor_std = float(floors.std()) if floor_repeats > 1 else 0.0

    references: dict[str, tuple[Tensor, float]] = {}

    def reference(sigma0: float) -> tuple[Tensor, float]:
        # One reference per starting sigma (grids may differ from it in the last bits).
        key = f"{sigma0:.12g}"
        if key not in references:
            x0 = z.double().cpu() * math.sqrt(sigma0**2 + info.prior_std**2)
            references[key] = reference_endpoint(model, x0, sigma0, reference_steps)
        return references[key]

    jobs = []
    for name in names:
        deterministic = get_sampler(name).deterministic(options.get(name))
        more = [] if deterministic else [b for b in extra if b not in budgets]
        jobs += plan_sampler(name, name, options.get(name), budgets=budgets + more)

    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    bar = tqdm(jobs, desc="bench", file=sys.stderr, disable=not progress, leave=False)
    for job in bar:
        name, budget, steps = job.sampler, job.budget, job.steps
        bar.set_postfix_str(f"{name}@{budget}")
        spec = get_sampler(name)
        opts = options.get(name, {})
        deterministic = spec.deterministic(opts)
        # sample() draws the initial noise from the seeds; deterministic samplers also get
        # it explicitly (stochastic ones must not: their later draws come from the seeds).
        kwargs: dict[str, Any] = {"noise": z} if deterministic else {}
        row: dict[str, Any] = {
            "sampler": name,
            "budget": budget,
            "steps": steps,
            "expected_nfe": spec.nfe(steps, opts),
            "deterministic": deterministic,
            "schedule": schedules.get(name, "default"),
            "options": {k: _jsonable(v) for k, v in opts.items()},
        }
        if name in schedules:
            kwargs["schedule"] = schedules[name]
        try:
            res = _sample(model, name, steps, shape, seeds, device, dtype, opts, kwargs)
        except USER_ERRORS as e:
            row["error"] = str(e)
            print(f"bench: {name} at NFE {budget}: {e}", file=sys.stderr)
            rows.append(row)
            continue
        x = res.x.detach().double().cpu()
        row.update(nfe=res.nfe, rounds=res.rounds, seconds=res.seconds)
        row["sw"] = None if exact is None else sliced_wasserstein(x, exact.reshape(shape))
        row["sw_floor"], row["sw_floor_std"] = sw_floor, sw_floor_std
        row["rms"] = row["err_median"] = row["ref_residual"] = None
        if deterministic:
            sigma0 = float(res.sigmas.reshape(res.sigmas.shape[0], -1)[0].max())
            ref, residual = reference(sigma0)
            row["rms"] = _rms(x, ref)
            err = per_sample_error(x, ref)
            row["err_median"] = err.median().item()
            # The spread over independent seed sets (disjoint blocks of the seeds).
            blocks = torch.tensor_split(torch.arange(n_samples), seed_sets)
            rms_sets = [float(err[b].pow(2).mean().sqrt()) for b in blocks]
            med_sets = [float(err[b].median()) for b in blocks]
            row["rms_sets"], row["err_median_sets"] = rms_sets, med_sets
            row["rms_std"] = _std(rms_sets)
            row["err_median_std"] = _std(med_sets)
            row["seed_sets"] = seed_sets
            row["ref_residual"] = residual
            row["sigma0"] = sigma0
        rows.append(row)
    bar.close()
    return rows


def _std(values: Sequence[float]) -> float | None:
    return float(torch.tensor(values, dtype=torch.float64).std()) if len(values) > 1 else None


def _sample(model, name, steps, shape, seeds, device, dtype, opts, kwargs):
    # samplerlab.sample: a coefficient file's path (iia_ddim.coeffs=FILE) is loaded there.
    from .sample import sample

    return sample(
        model, name, steps=steps, shape=shape, seeds=seeds, device=device, dtype=dtype,
        **kwargs, **opts,
    )  # fmt: skip


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
