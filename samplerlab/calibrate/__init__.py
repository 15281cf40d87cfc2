"""Calibration: distil fine reference solves of a model into a sampler's sigma grid.

What IIA (:mod:`samplerlab.iia`) does for per-step coefficients, done for the time steps:
``fit`` runs a Lightning fit stage (:mod:`samplerlab.calibrate.module`, imported lazily so
that loading a calibration does not import Lightning) that learns the grid of one sampler at
one step count for one model (``fit_calibration``: the same fit in this process, without
Lightning, on an existing DDP world through its ``all_reduce``);
``samplerlab.sample(..., calibration=c)`` samples on it and ``samplerlab.iia.fit(...,
calibration=c)`` fits IIA coefficients on it; ``save`` / ``load`` handle calibration files
bound to the model's fingerprint and the sampler.
"""

from __future__ import annotations

from typing import Any

from .files import CalibrationFileError, load, save
from .fitting import fit_calibration
from .grid import Calibration, CalibrationError, GridParam


def fit(denoiser: Any, sampler: str, **kwargs: Any) -> Calibration:
    """Calibrate ``sampler``'s grid (see :func:`samplerlab.calibrate.module.fit`)."""
    from .module import fit as _fit

    return _fit(denoiser, sampler, **kwargs)


__all__ = [
    "Calibration",
    "CalibrationError",
    "CalibrationFileError",
    "GridParam",
    "fit",
    "fit_calibration",
    "load",
    "save",
]
