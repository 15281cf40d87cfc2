"""Checks before any work: every evaluation job dry-runs on an analytic stand-in of the
model (one sample, no network call), so unknown options, bad option values, bad schedule
options and missing, corrupt or mismatched coefficient files fail at once, each as one line
naming its key; the output folder must be writable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..samplers import NonFiniteError, sample
from ..samplers.core import append_dims
from ..samplers.denoisers import _Wrapper
from .fits import load_coeffs
from .guidance import guided_kwargs
from .plan import Job, one_line

# Files an evaluation writes into its out_dir (checked to be writable before any work).
OUTPUTS = ("report.md", "report.json", "fid_vs_nfe.png", "samples.safetensors", "rows.jsonl")


def check_writable(out_dir: Path, names: tuple[str, ...] = OUTPUTS) -> None:
    """Fail now, in one line naming the path, if the evaluation could not write its outputs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir: {out_dir} exists and is not a folder")
    for name in names:
        p = out_dir / name
        if p.is_dir():
            raise ConfigError(
                f"out_dir: {p} is a folder where the evaluation writes a file; "
                "remove it or choose another out_dir"
            )
    for folder in (out_dir, out_dir / "grids"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise ConfigError(
                f"out_dir: cannot write into {folder} ({e.strerror or one_line(e)})"
            ) from None


class ProbeDenoiser(_Wrapper):
    """An analytic stand-in with the model's grid attributes (``vp``, ``sigma_min``,
    ``sigma_max``, ``prior_std``, ``data_shape``): the exact denoiser of ``N(0, s^2 I)``,
    ``D(x, sigma) = x s^2 / (s^2 + sigma^2)``. A dry run of a sampler on it goes through the
    sampler's own checks of its options, schedule and coefficients without a network call."""

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s2 = float(getattr(self.inner, "sigma_data", None) or 1.0) ** 2
        sig = append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)
        if sig.shape[0] != x.shape[0]:
            sig = sig.expand(x.shape[0], *sig.shape[1:])
        return x * (s2 / (s2 + sig**2))


class ConditionalProbe(ProbeDenoiser):
    """The stand-in of a class-conditional model ``D(x, sigma, cond)`` (guided jobs): the
    same Gaussian denoiser for every label."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        return super().__call__(x, sigma)


def check_jobs(
    jobs: list[Job],
    denoiser: Any,
    ev: Any,
    shape: tuple[int, ...],
    *,
    stage: str = "validate",
    model_id: str | None = None,
    classes: tuple[int, Tensor | None] = (0, None),
) -> None:
    """Run every job once on an analytic stand-in of ``denoiser``; raise one
    :class:`ConfigError` listing every problem (one line each).

    ``ev``: the ``eval`` config. ``stage="fit"``: the model is about to be trained, so a
    coefficient file (bound to the weights it was fitted on) cannot match it.
    ``model_id``: the evaluated weights' fingerprint (coefficient files must match it).
    ``classes``: a class-conditional model's number of classes and null label (guided
    jobs sample balanced labels with guidance against it).
    """
    probe = ProbeDenoiser(denoiser)
    problems: list[str] = []
    if any(j.guidance is not None for j in jobs) and classes[0] < 1:
        problems.append(
            "eval.guidance: the evaluated model is unconditional (no class labels); "
            "guidance needs a class-conditional model"
        )
        jobs = [j for j in jobs if j.guidance is None]
    c = ev.iia
    if any(j.coeffs == "fit" for j in jobs):
        for key in ("M", "num_samples"):
            if int(c[key]) < 1:
                problems.append(f"eval.iia.{key}: must be >= 1, got {c[key]}")
    for job in jobs:
        try:
            _dry_run(job, probe, ev, shape, stage, model_id, classes)
        except NonFiniteError:
            pass  # a result (the real model may not diverge), not a configuration error
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if not msg.startswith("eval."):
                given = [f"{k}={v!r}" for k, v in {**job.schedule_options, **job.options}.items()]
                where = f" ({', '.join(given)})" if given else ""
                msg = f"eval.samplers.{job.label}{where}: {one_line(e)}"
            if msg not in problems:
                problems.append(msg)
    if problems:
        head = "" if len(problems) == 1 else f"{len(problems)} evaluation problems:\n  "
        raise ConfigError(head + "\n  ".join(problems))


def _dry_run(
    job: Job,
    probe: ProbeDenoiser,
    ev: Any,
    shape: tuple[int, ...],
    stage: str,
    model_id: str | None,
    classes: tuple[int, Tensor | None] = (0, None),
) -> None:
    options = dict(job.options)
    if job.guidance is not None:  # one sample of label 0, guided against the null label
        probe = ConditionalProbe(probe.inner)
        options.update(
            guided_kwargs([0], classes[0], job.guidance, classes[1], job.guidance_interval)
        )
    if job.coeffs not in (None, "default", "fit"):
        if not Path(job.coeffs).is_file():
            raise ConfigError(f"eval.samplers.{job.label}.coeffs: file {job.coeffs} not found")
        if stage == "fit" and ev.iia.check_model:
            raise ConfigError(
                f"eval.samplers.{job.label}.coeffs: {job.coeffs} is bound to the model it "
                "was fitted on and this run trains a new one; use coeffs=fit or default, "
                "evaluate the checkpoint later with `samplerlab evaluate --ckpt`, or set "
                "eval.iia.check_model=false"
            )
        options["coeffs"] = load_coeffs(job, probe, ev, model_id)
        # The stand-in is not the model: load_coeffs checked the file against the model.
        options["allow_fingerprint_mismatch"] = True
    sample(
        probe,
        job.sampler,
        steps=job.steps,
        shape=(1, *shape),
        seeds=[0],
        schedule=job.schedule,
        schedule_options=job.schedule_options or None,
        dtype=torch.float64,
        **options,
    )
