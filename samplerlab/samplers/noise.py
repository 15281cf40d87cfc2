"""Noise sources. A sample depends only on its own seed (EDM's stacked generators).

Samplers draw every random quantity through a :class:`NoiseSource`, always with the
sample index as the leading dimension. ``PerSampleNoise`` keeps one generator per
sample, so row ``k`` of every draw depends only on ``seeds[k]``: not on batch size, on
which rows share a batch, on the device or on the DDP rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from .core import SamplerError


class NoiseSource(Protocol):
    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Standard normal draws of ``shape``; ``shape[0]`` is the number of samples."""
        ...

    def rand(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Uniform ``[0, 1)`` draws of ``shape``; ``shape[0]`` is the number of samples."""
        ...


def randn_like(noise: NoiseSource | None, x: Tensor) -> Tensor:
    return default_noise(noise).randn(x.shape, device=x.device, dtype=x.dtype)


def rand_like(noise: NoiseSource | None, x: Tensor) -> Tensor:
    return default_noise(noise).rand(x.shape, device=x.device, dtype=x.dtype)


class GlobalNoise:
    """Batch-wide draws from one generator (or torch's global RNG): k-diffusion's default."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def _device(self, device: torch.device) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device(device)

    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        out = torch.randn(
            tuple(shape), generator=self.generator, dtype=dtype, device=self._device(device)
        )
        return out.to(device, non_blocking=True)  # no host sync per draw

    def rand(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        out = torch.rand(
            tuple(shape), generator=self.generator, dtype=dtype, device=self._device(device)
        )
        return out.to(device, non_blocking=True)  # no host sync per draw


class PerSampleNoise:
    """One ``torch.Generator`` per sample (EDM's ``StackedRandomGenerator``).

    Generators live on ``device`` (the CPU by default, so a seed gives the same numbers
    on every machine); draws are moved to the caller's device in one copy, without blocking
    the host (the copy is ordered on the stream before any kernel that reads it).
    """

    def __init__(self, seeds: Iterable[int], device: torch.device | str = "cpu") -> None:
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise SamplerError("seeds must not be empty")
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def _check(self, shape: Sequence[int]) -> tuple[int, ...]:
        if len(shape) == 0 or shape[0] != len(self.seeds):
            raise SamplerError(
                f"noise for {shape[0] if shape else 0} rows requested from {len(self.seeds)} seeds"
            )
        return tuple(shape[1:])

    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        row = self._check(shape)
        out = torch.stack(
            [
                torch.randn(row, generator=g, dtype=dtype, device=self.device)
                for g in self.generators
            ]
        )
        return out.to(device, non_blocking=True)  # no host sync per draw

    def rand(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        row = self._check(shape)
        out = torch.stack(
            [torch.rand(row, generator=g, dtype=dtype, device=self.device) for g in self.generators]
        )
        return out.to(device, non_blocking=True)  # no host sync per draw

    def subset(self, rows: Sequence[int]) -> PerSampleNoise:
        """A source for a subset of the samples, sharing their generators' state."""
        sub = PerSampleNoise.__new__(PerSampleNoise)
        sub.seeds = [self.seeds[r] for r in rows]
        sub.device = self.device
        sub.generators = [self.generators[r] for r in rows]
        return sub


class ReplayNoise:
    """Serves pre-drawn standard-normal tensors in order (tests, pre-drawn parallel noise)."""

    def __init__(self, draws: Iterable[Tensor]) -> None:
        self._draws = list(draws)
        self._next = 0

    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        if self._next >= len(self._draws):
            raise SamplerError("ReplayNoise ran out of pre-drawn noise")
        z = self._draws[self._next]
        self._next += 1
        if tuple(z.shape) != tuple(shape):
            raise SamplerError(f"ReplayNoise draw has shape {tuple(z.shape)}, not {tuple(shape)}")
        return z.to(device, dtype)

    def rand(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        raise SamplerError("ReplayNoise only replays normal draws")


def default_noise(noise: NoiseSource | None) -> NoiseSource:
    return GlobalNoise() if noise is None else noise
