"""``samplerlab.sample``: the torch-only ``samplerlab.samplers.sample`` plus the files it
cannot read.

``samplerlab/samplers`` imports nothing of samplerlab outside itself, so a calibration
file's path (``calibration=``) and an IIA coefficient file's path (``coeffs=``) are loaded
here (``samplerlab.calibrate.load``, checked against the denoiser's fingerprint;
``samplerlab.iia.load``) before the torch-only layer runs; it checks loaded coefficients
against the sampler, the grid and the model. Coefficients or a grid fitted for another
classifier-free guidance than the call's warn (one line naming both scales;
:func:`samplerlab.fitstage.conditioning.warn_if_other_guidance`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from . import calibrate, iia
from .fitstage.conditioning import warn_if_other_guidance
from .samplers import SampleResult
from .samplers import sample as _sample


@functools.wraps(_sample)
def sample(
    denoiser: Any, name: str, *args: Any, calibration: Any = None, **kwargs: Any
) -> SampleResult:
    cal_source = "calibration"
    if isinstance(calibration, (str, os.PathLike)):
        cal_source = f"calibration {calibration}"
        calibration = calibrate.load(calibration, denoiser=denoiser)
    if isinstance(kwargs.get("coeffs"), (str, os.PathLike)):
        # Errors found by the sampler's checks (model, grid) name the file.
        path = str(kwargs["coeffs"])
        kwargs["coeffs"] = dataclasses.replace(iia.load(path), source=path)
    # Fitted for this guidance? (Fitted files record it; old ones are unconditional.)
    guided = {k: kwargs.get(k) for k in ("cond", "guidance", "guidance_interval")}
    coeffs = kwargs.get("coeffs")
    if isinstance(coeffs, iia.IIACoefficients):
        what = f"IIA coefficients {coeffs.source}"
        warn_if_other_guidance(coeffs.metadata, what, denoiser=denoiser, **guided)
    if isinstance(calibration, calibrate.Calibration):
        warn_if_other_guidance(calibration.metadata, cal_source, denoiser=denoiser, **guided)
    return _sample(denoiser, name, *args, calibration=calibration, **kwargs)
