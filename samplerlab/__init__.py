"""samplerlab: train diffusion models, distil IIA coefficients, and race every sampler.

Python API::

    import samplerlab as sl
    from samplerlab.samplers.denoisers import from_eps  # torch-only wrappers
    den = from_eps(eps_fn, alphas_cumprod)  # or sl.denoisers.from_diffusers(folder)
    res = sl.sample(den, "dpmpp_2m", steps=10, shape=(16, 3, 32, 32), seeds=range(16))
    res.x, res.nfe, res.rounds, res.seconds
    sl.list_samplers()
    c = sl.iia.fit(den, "iia_ddim", steps=10, shape=(3, 32, 32))  # IIA: fit, save, load
"""

import functools
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import calibrate, denoisers, iia
from .samplers import SAMPLERS, SamplerError, SampleResult, get_sampler, list_samplers
from .samplers import sample as _sample


@functools.wraps(_sample)
def sample(denoiser: Any, name: str, *args: Any, calibration: Any = None, **kwargs: Any):
    # samplerlab.samplers.sample, which also takes a calibration file's path (loaded here,
    # checked against the denoiser's fingerprint), so samplers/ imports nothing outside it.
    if isinstance(calibration, (str, os.PathLike)):
        calibration = calibrate.load(calibration, denoiser=denoiser)
    return _sample(denoiser, name, *args, calibration=calibration, **kwargs)


try:
    __version__ = version("samplerlab")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "SamplerError",
    "__version__",
    "calibrate",
    "denoisers",
    "get_sampler",
    "iia",
    "list_samplers",
    "sample",
]
