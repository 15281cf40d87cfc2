"""IIA: distil fine-grained solves into per-step coefficients (Zhang, Niwa & Kleijn, 2024).

``fit`` runs the Lightning fit stage (:class:`samplerlab.iia.module.IIAFitModule`, imported
lazily so that loading coefficients does not import Lightning); ``fit_coefficients`` runs
the same fit in this process without Lightning (on an existing DDP world through its
``all_reduce``); ``save``/``load`` handle coefficient files. The samplers, their forms and
the pure-torch fit live in :mod:`samplerlab.samplers.iia`.
"""

from __future__ import annotations

from typing import Any

from ..samplers.iia import IIACoefficients
from .files import IIAFileError, fingerprint, load, save
from .fitting import fit_coefficients


def fit(denoiser: Any, sampler: str, **kwargs: Any) -> IIACoefficients:
    """Fit IIA coefficients (see :func:`samplerlab.iia.module.fit` for the options)."""
    from .module import fit as _fit

    return _fit(denoiser, sampler, **kwargs)


__all__ = [
    "IIACoefficients",
    "IIAFileError",
    "fingerprint",
    "fit",
    "fit_coefficients",
    "load",
    "save",
]
