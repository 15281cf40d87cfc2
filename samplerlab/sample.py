"""``samplerlab.sample``: the torch-only ``samplerlab.samplers.sample`` plus the files it
cannot read.

``samplerlab/samplers`` imports nothing of samplerlab outside itself, so a calibration
file's path (``calibration=``) and an IIA coefficient file's path (``coeffs=``) are loaded
here (``samplerlab.calibrate.load``, checked against the denoiser's fingerprint;
``samplerlab.iia.load``) before the torch-only layer runs; it checks loaded coefficients
against the sampler, the grid and the model.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from . import calibrate, iia
from .samplers import SampleResult
from .samplers import sample as _sample


@functools.wraps(_sample)
def sample(
    denoiser: Any, name: str, *args: Any, calibration: Any = None, **kwargs: Any
) -> SampleResult:
    if isinstance(calibration, (str, os.PathLike)):
        calibration = calibrate.load(calibration, denoiser=denoiser)
    if isinstance(kwargs.get("coeffs"), (str, os.PathLike)):
        # Errors found by the sampler's checks (model, grid) name the file.
        path = str(kwargs["coeffs"])
        kwargs["coeffs"] = dataclasses.replace(iia.load(path), source=path)
    return _sample(denoiser, name, *args, calibration=calibration, **kwargs)
