"""Error types of the torch-only sampling layer (re-exported by :mod:`samplerlab.errors`).

They live here, not in :mod:`samplerlab.errors`, because ``samplerlab.samplers`` imports
nothing of samplerlab outside itself; users import every error from ``samplerlab.errors``.
"""

from __future__ import annotations


class SamplerError(ValueError):
    """Bad input to a sampler, a schedule or the sampling API (one clear line)."""


class NonFiniteError(FloatingPointError):
    """NaN or Inf met while sampling; the message names the sampler, round and sigma."""
