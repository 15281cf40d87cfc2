"""What the fit stages (IIA coefficients, calibrated grids) share, without Lightning.

Fitting noises seeded per sample (disjoint from sampling seeds), sample indices sharded
over processes, input checks made before anything runs, the device of a model, the
safetensors files with JSON metadata both stages write, and the CLI checks of their
commands. The Lightning part (the DDP strategy and the ``Trainer``) is
:mod:`samplerlab.fitstage.stage`.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fileio import atomic_write
from ..samplers.core import SamplerError, describe
from ..samplers.denoisers import CountingDenoiser
from ..samplers.fingerprint import device_of, model_fingerprint
from ..version import library_version

# Fitting sample k draws its initial noise from seed FIT_SEED_OFFSET + seed * 2**20 + k:
# disjoint from the seeds 0, 1, ... that `samplerlab.sample` uses by default, so default
# evaluations are on held-out noise.
FIT_SEED_OFFSET = 2**40


def fit_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """The seeds of fitting samples ``indices`` (shared by IIA and calibration: a grid and
    IIA coefficients fitted on it with the same ``seed`` have seen the same noises)."""
    return [FIT_SEED_OFFSET + seed * 2**20 + int(k) for k in indices]


def shard(num_samples: int, rank: int, world: int, batch_size: int) -> list[list[int]]:
    """Rank ``rank``'s sample indices in batches; every rank gets the same number of
    batches (empty ones where it runs out) so that all ranks run the same loop."""
    mine = list(range(num_samples))[rank::world]
    n_batches = max(1, math.ceil(math.ceil(num_samples / world) / batch_size))
    return [mine[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]


def check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def sample_shape(denoiser: Any, shape: Sequence[int] | None) -> Sequence[int]:
    """``shape``, else the denoiser's declared ``data_shape`` (one line if it has none)."""
    if shape is None:
        shape = describe(denoiser).data_shape
        if shape is None:
            raise ConfigError("pass shape= (one sample's shape): the denoiser has no data_shape")
    return shape


def check_fit_inputs(
    denoiser: Any, shape: Any, dtype: torch.dtype, sigma: float
) -> tuple[int, ...]:
    """One line for a denoiser, sample shape or dtype that cannot be fitted, before Lightning
    starts: the shape must be the model's, and one call on one row must return that shape."""
    if not callable(denoiser):
        raise ConfigError(f"the denoiser must be a callable D(x, sigma), got {type(denoiser)}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ConfigError(f"shape must be one sample's shape (integers), got {shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"shape must be one sample's shape (positive sizes), got {shape}")
    want = describe(denoiser).data_shape
    if want is not None and tuple(want) != shape:
        raise ConfigError(f"shape {shape} is not the model's sample shape {tuple(want)}")
    # One probe call (one row) finds a model that does not take or return this shape.
    x = torch.zeros((1, *shape), device=device_of(denoiser), dtype=dtype)
    try:
        with torch.no_grad():
            out = CountingDenoiser(denoiser)(
                x, torch.full((1,), sigma, device=x.device, dtype=dtype)
            )
    except SamplerError as e:
        raise ConfigError(str(e)) from None
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(
            f"the denoiser does not take samples of shape {shape} ({first})"
        ) from None
    del out
    return shape


def write_file(
    path: str | Path, tensors: dict[str, Tensor], meta_key: str, meta: dict[str, Any]
) -> Path:
    """Write ``tensors`` and the JSON ``meta`` (under safetensors metadata ``meta_key``) to
    ``path``, atomically."""
    from safetensors.torch import save_file

    text = {meta_key: json.dumps(meta, sort_keys=True)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=text))


def read_file(
    path: Path, meta_key: str, required: Iterable[str], what: str
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(metadata, tensors)`` of a samplerlab safetensors file; ``ValueError`` when the
    metadata under ``meta_key`` or a ``required`` tensor is missing (any failure while
    reading means a corrupt file: callers turn it into one line naming the file)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(meta_key)
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = json.loads(raw) if raw is not None else None
    if not isinstance(meta, dict) or not set(required) <= set(tensors):
        raise ValueError(f"missing samplerlab {what} metadata or tensors")
    return meta, tensors


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def check_minimums(values: Iterable[tuple[str, int, int]]) -> None:
    """CLI checks: each ``(option, value, lowest)``, one line for the first too small."""
    for name, value, lo in values:
        if value < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {value}")


def stage_options(args: Any) -> dict[str, Any]:
    """The Lightning options of a fit command (``--devices``, ``--accelerator``,
    ``--no-progress``): DDP processes launched by the command itself when ``devices > 1``."""
    return {
        "devices": args.devices,
        "strategy": "ddp" if args.devices > 1 else "auto",
        "accelerator": args.accelerator,
        "progress": not args.no_progress,
    }


__all__ = [
    "FIT_SEED_OFFSET",
    "check_fit_inputs",
    "check_int",
    "check_minimums",
    "device_of",
    "first_line",
    "fit_seeds",
    "library_version",
    "model_fingerprint",
    "read_file",
    "sample_shape",
    "shard",
    "stage_options",
    "write_file",
]
