"""The IIA fit without Lightning: checks, the grid, the pure fit and the fit's metadata.

:func:`fit_coefficients` runs the greedy fit (:class:`samplerlab.samplers.iia.GreedyFit`)
in this process, on the fitting samples ``indices`` it is given; with ``all_reduce`` (a
sum over the processes of an existing DDP world, e.g. ``torch.distributed.all_reduce``)
each process fits on its own shard and all get the same coefficients, equal bit for bit to
``samplerlab.iia.fit`` (the Lightning fit stage, which drives the same object).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fitstage import check_fit_inputs, check_int, device_of, fit_seeds, sample_shape
from ..fitstage.conditioning import (
    bind_conditioning,
    fit_metadata,
    probe_model,
    warn_if_other_guidance,
)
from ..samplers.api import MAX_GRID_STEPS, build_sigmas
from ..samplers.core import SamplerError, check_grid
from ..samplers.iia import (
    GreedyFit,
    IIACoefficients,
    coefficients_digest,
    fit_shard,
    get_form,
)
from ..samplers.registry import SamplerSpec, get_sampler
from ..version import library_version
from .files import fingerprint


@dataclass
class FitPlan:
    """A checked fit request: the grid, one sample's shape, the settings, the denoiser the
    fit runs (conditioning bound to the fitting samples) and what it records of that."""

    spec: SamplerSpec
    sigmas: Tensor
    shape: tuple[int, ...]
    settings: dict[str, Any]
    model: Any = None
    fitted_for: dict[str, Any] = field(default_factory=dict)


def plan_fit(
    denoiser: Any,
    sampler: str,
    *,
    steps: int | None = None,
    schedule: str | None = None,
    schedule_options: dict[str, Any] | None = None,
    sigmas: Tensor | None = None,
    calibration: Any = None,
    M: int = 3,
    num_samples: int = 16,
    batch_size: int | None = None,
    r: int = 1,
    seed: int = 0,
    ridge: float = 1e-10,
    form: str = "default",
    spacing: str = "auto",
    shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    warm_start: bool = True,
    guidance_scale: float | None = None,
    devices: int = 1,
    cond: Any = None,
    guidance: Any = None,
    uncond: Any = None,
    guidance_interval: tuple[float, float] | None = None,
) -> FitPlan:
    """Check a fit request (one line for the first bad input) and build its grid."""
    iia_form = get_form(sampler)
    check_int("M", M, 1)
    check_int("num_samples", num_samples, 1)
    check_int("seed", seed, 0)
    if num_samples > 2**20 or seed >= 2**42:
        # Fitting seeds are FIT_SEED_OFFSET + seed * 2**20 + k: disjoint blocks, 63 bits.
        raise ConfigError(
            f"num_samples must be <= 2**20 and seed < 2**42, got {num_samples} and {seed}"
        )
    check_int("r", r, 0)
    check_int("devices", devices, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    if form not in iia_form.variants:
        raise ConfigError(
            f"form '{form}' is not valid for {sampler}; valid: {', '.join(iia_form.variants)}"
        )
    if not ridge >= 0:
        raise ConfigError(f"ridge must be >= 0, got {ridge!r}")
    # (noise, condition) pairs: fitting sample k takes condition row k.
    model, guidance_scale = bind_conditioning(
        denoiser, num_samples, cond=cond, guidance=guidance, uncond=uncond,
        guidance_interval=guidance_interval, guidance_scale=guidance_scale, form=form,
    )  # fmt: skip
    spec = get_sampler(sampler)
    if calibration is not None:
        # A calibrated grid of the base sampler (samplerlab.calibrate), checked for sampler,
        # steps and model.
        from ..calibrate.files import load, resolve

        if sigmas is not None or schedule is not None or steps is None:
            raise ConfigError("calibration= needs steps= and no sigmas= or schedule=")
        what = "calibration"
        if isinstance(calibration, (str, Path)):
            what, calibration = f"calibration {calibration}", load(calibration, denoiser=denoiser)
        sigmas = resolve(calibration, sampler, steps, None, denoiser)
        # A grid calibrated for another guidance than this fit's: say so.
        warn_if_other_guidance(
            getattr(calibration, "metadata", {}), what, denoiser=denoiser, cond=cond,
            guidance=guidance, guidance_interval=guidance_interval, stacklevel=4,
        )  # fmt: skip
    if sigmas is None:
        if steps is None:
            raise ConfigError("give steps or sigmas")
        check_int("steps", steps, 1)
        if steps > MAX_GRID_STEPS:
            raise ConfigError(f"steps={steps} is more than samplerlab plans ({MAX_GRID_STEPS})")
        grid_steps, _ = spec.plan(steps)
        sigmas = build_sigmas(denoiser, spec, grid_steps, schedule, schedule_options)
    host = check_grid(sigmas)
    if not bool(iia_form.fitted_steps(host, form).any()):
        raise ConfigError(
            f"{sampler} on a grid of {host.shape[0] - 1} steps has no step to fit "
            "(EDM forms fit steps 1..N-2); use more steps"
        )
    shape = sample_shape(denoiser, shape)
    shape = check_fit_inputs(probe_model(model), shape, dtype, float(host[0]))
    settings = {
        "M": M, "num_samples": num_samples, "batch_size": batch_size or num_samples, "r": r,
        "seed": seed, "ridge": ridge, "form": form, "spacing": spacing, "dtype": dtype,
        "warm_start": warm_start, "guidance_scale": guidance_scale,
        "calibrated": calibration is not None,
    }  # fmt: skip
    fitted_for = fit_metadata(num_samples, cond, uncond, guidance_interval)
    return FitPlan(spec, host, shape, settings, model, fitted_for)


def greedy_fit(denoiser: Any, sampler: str, plan: FitPlan) -> GreedyFit:
    """The pure fit object of ``plan`` (all ``num_samples`` fitting seeds)."""
    s = plan.settings
    if plan.sigmas.ndim != 1:
        raise SamplerError("IIA fits need one grid shared by all samples ([N+1] sigmas)")
    return GreedyFit(
        denoiser if plan.model is None else plan.model,
        sampler,
        plan.sigmas,
        fit_seeds(s["seed"], range(s["num_samples"])),
        shape=plan.shape,
        M=s["M"],
        r=s["r"],
        ridge=s["ridge"],
        form=s["form"],
        spacing=s["spacing"],
        dtype=s["dtype"],
        warm_start=s["warm_start"],
    )


def finish_fit(
    denoiser: Any,
    sampler: str,
    plan: FitPlan,
    fit: GreedyFit,
    seconds: float,
    world_size: int,
) -> IIACoefficients:
    """The coefficients of a finished fit, with the metadata every fit records."""
    s = plan.settings
    steps = plan.sigmas.shape[0] - 1
    n_fitted = int(fit.fitted.sum())
    metadata = {
        "sampler": sampler,
        "base": fit.iia_form.base,
        "steps": steps,
        "nfe": int(plan.spec.nfe(steps)),  # exact for the IIA samplers
        "M": s["M"],
        "num_samples": s["num_samples"],
        "r": s["r"],
        "form": s["form"],
        "spacing": fit.spacing,
        "ridge": s["ridge"],
        "warm_start": s["warm_start"],
        "seed": s["seed"],
        "fingerprint": fingerprint(denoiser),
        "guidance_scale": s["guidance_scale"],
        "library_version": library_version(),
        "fit_seconds": seconds,
        "fit_extra_nfe_per_sample": n_fitted * fit.iia_form.fine_nfe(s["M"]),
        "world_size": world_size,
        "local_error": fit.local_error.detach().cpu().tolist(),
        "calibrated": s["calibrated"],
        # With cond=: the guidance interval and the digests of the condition rows.
        **plan.fitted_for,
    }
    # What this fit produced: loading checks it (a file edited after the fit is refused).
    metadata["coeffs_digest"] = coefficients_digest(fit.coefficients, fit.fitted, plan.sigmas)
    return fit.result(metadata)


def fit_coefficients(
    denoiser: Any,
    sampler: str,
    *,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    indices: Sequence[int] | None = None,
    world_size: int | None = None,
    **kwargs: Any,
) -> IIACoefficients:
    """Fit IIA coefficients in this process, without Lightning.

    Takes the keyword arguments of :func:`samplerlab.iia.fit` (``steps``, ``sigmas``,
    ``calibration``, ``M``, ``num_samples``, ``batch_size``, ``r``, ``seed``, ``ridge``,
    ``form``, ``spacing``, ``shape``, ``dtype``, ``warm_start``, ``guidance_scale``,
    ``cond``, ``guidance``, ``uncond``, ``guidance_interval``;
    ``devices``, ``strategy``, ``accelerator``, ``progress`` and ``trainer_kwargs`` are
    Lightning's and are ignored) and:

    Args:
        all_reduce: sums a float64 tensor over the processes of a DDP world, in place or
            returning the sum (e.g. ``lambda t: (dist.all_reduce(t), t)[1]``); ``None`` for
            one process. Called once per fitted step, on every process.
        indices: the fitting samples this process holds (default: all of them); the
            processes' ``indices`` must partition ``range(num_samples)``.
        world_size: recorded in the metadata (default: the DDP world's size with
            ``all_reduce``, else 1).
    """
    for key in ("devices", "strategy", "accelerator", "progress", "trainer_kwargs"):
        kwargs.pop(key, None)
    plan = plan_fit(denoiser, sampler, **kwargs)
    fit = greedy_fit(denoiser, sampler, plan)
    n = plan.settings["num_samples"]
    mine = list(range(n)) if indices is None else [int(k) for k in indices]
    if any(not 0 <= k < n for k in mine):
        raise ConfigError(f"indices must lie in [0, {n}) (num_samples), got {mine}")
    if world_size is None:
        dist = torch.distributed
        in_world = all_reduce is not None and dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if in_world else 1
    start = time.perf_counter()
    fit_shard(
        fit,
        mine,
        batch_size=plan.settings["batch_size"],
        device=device_of(denoiser),
        all_reduce=all_reduce,
    )
    return finish_fit(denoiser, sampler, plan, fit, time.perf_counter() - start, world_size)
