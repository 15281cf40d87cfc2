"""Error types shown to users as one line (the CLI prints them without a traceback)."""

from __future__ import annotations

from .samplers.core import SamplerError
from .samplers.denoisers import NonFiniteError


class ConfigError(ValueError):
    """A bad configuration key, value or file (the message names the key's path)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    SamplerError,
    ConfigError,
    NonFiniteError,
    FileNotFoundError,
)
