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

from . import calibrate, denoisers, iia
from .sample import sample
from .samplers import SAMPLERS, SamplerError, SampleResult, get_sampler, list_samplers
from .version import __version__

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
