"""Every error type of samplerlab, in one place; import them from here.

The CLI prints the types in :data:`USER_ERRORS` as one line, without a traceback. The
torch-only sampling layer's errors (:class:`SamplerError`, :class:`NonFiniteError`) are
defined in :mod:`samplerlab.samplers.errors` (that package imports nothing of samplerlab
outside itself) and re-exported here.
"""

from __future__ import annotations

from .samplers.errors import NonFiniteError, SamplerError

__all__ = [
    "USER_ERRORS",
    "CalibrationError",
    "CalibrationFileError",
    "ConfigError",
    "IIAFileError",
    "NonFiniteError",
    "SamplerError",
    "TrainingError",
]


class ConfigError(ValueError):
    """A bad configuration key, value or file (the message names the key's path)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the message names the step."""


class IIAFileError(SamplerError):
    """A coefficient file that is missing, corrupt or fitted for another grid or model."""


class CalibrationError(SamplerError):
    """A calibration that does not fit the sampler, step count, model or file asked for."""


class CalibrationFileError(CalibrationError):
    """A calibration file that is missing, corrupt or fitted for another model or sampler."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    SamplerError,
    ConfigError,
    TrainingError,
    NonFiniteError,
    FileNotFoundError,
)
