"""The evaluation sweep's calibration hook: calibrated variants raced beside the defaults.

``eval.calibrate.samplers`` lists evaluated samplers (labels or registry names); each of
their jobs gets a twin labelled ``<label>+cal`` that samples on a grid calibrated for the
model at that job's steps (``calibration: fit``); ``eval.samplers.<label>.calibration`` may
also name a calibration file. Each row reports what its calibration cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .grid import Calibration


def calibrated_jobs(ev: Any, jobs: list[Any]) -> list[Any]:
    """``jobs`` plus a ``+cal`` twin of every job of a sampler in ``eval.calibrate.samplers``."""
    names = list(ev.calibrate.samplers)
    known = {j.label for j in jobs} | {j.sampler for j in jobs}
    for name in names:
        if name not in known:
            raise ConfigError(
                f"eval.calibrate.samplers: '{name}' is not evaluated; evaluated: "
                f"{', '.join(sorted(known))}"
            )
    twins = [
        replace(j, label=f"{j.label}+cal", calibration="fit")
        for j in jobs
        if j.calibration is None and (j.label in names or j.sampler in names)
    ]
    return jobs + twins


def job_calibration(
    ev: Any, job: Any, denoiser: Any, shape: Sequence[int], device: torch.device
) -> Calibration | None:
    """The calibration of ``job``: none, a file (checked against the model), or fitted now
    (every rank fits the same grid from the same seeds, no communication)."""
    if job.calibration is None:
        return None
    from . import fit, load

    if job.calibration != "fit":
        if not Path(job.calibration).is_file():
            raise ConfigError(
                f"eval.samplers.{job.label}.calibration: file {job.calibration} not found"
            )
        return load(job.calibration, denoiser=denoiser, sampler=job.sampler, steps=job.steps)
    c = ev.calibrate
    return fit(
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
        # On this rank's device, quietly.
        trainer_kwargs={
            "accelerator": "gpu" if device.type == "cuda" else "cpu",
            "devices": [device.index or 0] if device.type == "cuda" else 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
        },
    )


def cost_fields(calibration: Calibration | None) -> dict[str, Any]:
    """Report fields: the calibration's fitting cost (NFE per fitting sample, seconds)."""
    if calibration is None:
        return {}
    m = calibration.metadata
    return {
        "calibration_fit_nfe": m.get("fit_nfe"),
        "calibration_fit_seconds": m.get("fit_seconds"),
        "calibration_samples": m.get("num_samples"),
    }


def cost_note(job: Any, calibration: Calibration) -> str:
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
