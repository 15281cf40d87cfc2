"""What a job needs fitted before it samples, and the report fields of what it cost.

- IIA coefficients (improved integration approximation, Zhang, Niwa & Kleijn, ICLR 2024):
  a file checked against the job's grid and the model, or fitted now;
- calibrated sigma grids: a file, or fitted now by :mod:`samplerlab.calibrate`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..samplers import get_sampler
from ..samplers.api import build_sigmas
from .dist import Dist
from .plan import Job, one_line


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """No banners or warnings from the nested Lightning trainers of the fits."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class Fitted:
    """What :func:`fit_job` fitted or loaded for a job: its calibrated grid and IIA
    coefficients (None: the schedule, the default coefficients), or the error that stopped
    it (the job's error row; a calibration fitted before the error is kept for its cost)."""

    calibration: Any = None
    coeffs: Any = None
    error: Exception | None = None


def fit_job(
    job: Job,
    denoiser: Any,
    ev: Any,
    shape: Sequence[int],
    device: torch.device,
    *,
    model_id: str | None = None,
    dist: Dist | None = None,
) -> Fitted:
    """The calibration of ``job``, then its IIA coefficients on the grid it samples on
    (``dist``: the world the IIA fit is sharded over)."""
    out = Fitted()
    try:
        out.calibration = job_calibration(ev, job, denoiser, shape, device)
        out.coeffs = job_coeffs(
            job,
            denoiser,
            ev,
            device=device,
            model_id=model_id,
            calibration=out.calibration,
            dist=dist,
        )
    except Exception as e:  # of any type: the job's error row
        out.error = e
    return out


# --- IIA coefficients ------------------------------------------------------------------------


def load_coeffs(job: Job, denoiser: Any, ev: Any, model_id: str | None = None) -> Any:
    """A coefficient file, checked against the job's grid and (when ``model_id`` is known and
    ``eval.iia.check_model``) the model's fingerprint."""
    from .. import iia

    path = Path(str(job.coeffs))
    if not path.is_file():
        raise ConfigError(f"eval.samplers.{job.label}.coeffs: file {path} not found")
    spec = get_sampler(job.sampler)
    grid_steps, _ = spec.plan(job.steps, job.options)
    sigmas = build_sigmas(
        denoiser, spec, grid_steps, job.schedule, job.schedule_options or None, job.options
    )
    try:
        coeffs = iia.load(path, sigmas=sigmas)
    except Exception as e:
        raise ConfigError(f"eval.samplers.{job.label}.coeffs: {one_line(e)}") from None
    want = coeffs.metadata.get("fingerprint")
    if ev.iia.check_model and model_id is not None and want != model_id:
        raise ConfigError(
            f"eval.samplers.{job.label}.coeffs: {path} was fitted for another model "
            f"(fingerprint {want}, this model {model_id}); refit it with "
            "`samplerlab iia-fit --ckpt ...`, or set eval.iia.check_model=false"
        )
    return coeffs


def job_coeffs(
    job: Job,
    denoiser: Any,
    ev: Any,
    *,
    device: torch.device,
    model_id: str | None = None,
    calibration: Any = None,
    dist: Dist | None = None,
) -> Any:
    """IIA coefficients for ``job``: a file, fitted now (``eval.iia``: M, num_samples, seed;
    on the grid the job samples on: its schedule or ``calibration``), or None (defaults).

    The fit is :func:`samplerlab.iia.fit_coefficients` in this process (no Lightning
    trainer): its fitting noises are sharded over ``dist``'s ranks and the least-squares
    sums all-reduced, so every rank gets the same coefficients (a collective call)."""
    if job.coeffs in (None, "default"):
        return None
    if job.coeffs != "fit":
        return load_coeffs(job, denoiser, ev, model_id)  # once per job, not once per batch
    from ..iia import fit_coefficients

    c, d = ev.iia, dist or Dist()
    return fit_coefficients(
        denoiser,
        job.sampler,
        # This rank's fitting noises; the sums of all ranks' (one process: all of them).
        all_reduce=d.sum if d.world > 1 else None,
        indices=range(d.rank, int(c.num_samples), d.world) if d.world > 1 else None,
        world_size=d.world,
        steps=job.steps,
        # The grid the job samples on: the schedule, or a calibrated grid.
        schedule=job.schedule if calibration is None else None,
        schedule_options=(job.schedule_options or None) if calibration is None else None,
        calibration=calibration,
        M=c.M,
        num_samples=c.num_samples,
        seed=c.seed,
    )


# --- calibrated grids ------------------------------------------------------------------------


def job_calibration(
    ev: Any, job: Job, denoiser: Any, shape: Sequence[int], device: torch.device
) -> Any:
    """The calibration of ``job``: none, a file (checked against the model), or fitted now
    (``eval.calibrate``; every rank fits the same grid from the same seeds)."""
    if job.calibration is None:
        return None
    from .. import calibrate

    if job.calibration != "fit":
        if not Path(job.calibration).is_file():
            raise ConfigError(
                f"eval.samplers.{job.label}.calibration: file {job.calibration} not found"
            )
        return calibrate.load(
            job.calibration, denoiser=denoiser, sampler=job.sampler, steps=job.steps
        )
    c = ev.calibrate
    # The pure-torch fit in this process (no Lightning Trainer inside the running one);
    # equal to calibrate.fit on one device.
    return calibrate.fit_calibration(
        denoiser,
        job.sampler,
        steps=job.steps,
        schedule=job.schedule,
        schedule_options=job.schedule_options or None,
        options={k: v for k, v in job.options.items() if k != "coeffs"},
        num_samples=c.num_samples,
        iterations=c.iterations,
        teacher_steps=c.teacher_steps,
        seed=c.seed,
        shape=tuple(shape),
    )


def cost_fields(calibration: Any) -> dict[str, Any]:
    """Report fields: the calibration's fitting cost (NFE per fitting sample, seconds)."""
    if calibration is None:
        return {}
    m = calibration.metadata
    return {
        "calibration_fit_nfe": m.get("fit_nfe"),
        "calibration_fit_seconds": m.get("fit_seconds"),
        "calibration_samples": m.get("num_samples"),
    }


def cost_note(job: Job, calibration: Any) -> str:
    """One report line: what the calibration of ``job`` cost and what it changed."""
    m = calibration.metadata
    if "fit_nfe" not in m:
        return f"{job.label} at {job.budget} NFE: calibrated grid from a file"
    return (
        f"{job.label} at {job.budget} NFE: grid calibrated on {m['num_samples']} noises, "
        f"{m['fit_nfe']:.0f} NFE in all ({m['fit_nfe_per_sample']:.0f} per noise), "
        f"{m['fit_seconds']:.1f} s; RMS to the teacher {m['default_loss'] ** 0.5:.4g} -> "
        f"{m['loss'] ** 0.5:.4g}"
    )
