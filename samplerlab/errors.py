"""Error types shown to users as one line (the CLI prints them without a traceback)."""

from __future__ import annotations

from .samplers.core import SamplerError
from .samplers.denoisers import NonFiniteError


class ConfigError(ValueError):
    """A bad configuration key, value or file (the message names the key's path)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient); the message names the step."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    SamplerError,
    ConfigError,
    TrainingError,
    NonFiniteError,
    FileNotFoundError,
)
