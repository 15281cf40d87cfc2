"""Noise sources. A sample depends only on its own seed.

Samplers draw every random quantity through a :class:`NoiseSource`, always with the
sample index as the leading dimension. :class:`PerSampleNoise` makes row ``k`` of every
draw a function of ``seeds[k]``, the draw's index and the element's index only: not of the
batch size, of which rows share a batch, of the chunk, the DDP rank or the device.

Its default generator (``kind="splitmix"``) is counter-based, as JAX's and cuRAND's are
(Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"), and
computes a whole batch's draw in a few vectorised integer kernels on the sampling device
(the primitives are in :mod:`.counters`):

* each seed is keyed once by Philox4x32-10 (Salmon et al. 2011, Sec. 4.2; the counter 0 under
  the seed's two 32-bit words as key): a 64-bit stream key ``K_k``;
* draw ``j`` of sample ``k`` has the row value ``R_kj = mix(K_k + D_j)`` and element pair
  ``p`` the 64 bits ``mix(R_kj + C_p)``, where ``mix`` is SplitMix64's output function
  (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", with
  Stafford's Mix13 constants) and ``D_j``, ``C_p`` are the ``j``-th and ``p``-th SplitMix64
  outputs of two fixed seeds (random offsets: no two streams can overlap as shifted copies);
* normals by the Box–Muller transform (Box & Muller 1958) of the pair's two 32-bit words
  (a row of ``m`` normals holds the cosines of pairs ``0..ceil(m/2)-1``, then their sines);
  uniforms from the top bits of one 64-bit output per element.

Integer work is exact on every device; only ``log``, ``sqrt``, ``cos`` and ``sin`` round
differently on a GPU and a CPU, by a few ulp: the same seed gives the same noise on both
within ``DEVICE_TOL`` (absolute, per dtype). A draw in float32 is the float64 draw
rounded (to 1e-6 relative for normals; uniforms are truncated to the dtype's mantissa).

``kind="philox"`` runs Philox4x32-10 itself for every four 32-bit words (counter
``(block, draw, 0, 0)``, key the seed): the reference generator, several times slower.
``kind="generator"`` keeps one ``torch.Generator`` per sample (EDM's
``StackedRandomGenerator``): the stream of samplerlab before the counter-based default,
and EDM's own seeds; it loops over the samples in Python on every draw.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from .counters import (
    MASK32,
    box_muller,
    philox4x32,
    split_seed,
    splitmix64_mix_,
    splitmix64_outputs,
    stream_keys,
    uniform_bits,
)
from .errors import SamplerError

NOISE_KINDS = ("splitmix", "philox", "generator")
# Largest difference between the same draw made on a CUDA device and on the CPU.
DEVICE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

_DRAW_SEED, _ELEMENT_SEED = 0x243F6A8885A308D3, 0x13198A2E03707344  # digits of pi
_ROW_BLOCK = 32  # row values computed per call, for this many consecutive draws
_CPU_BLOCK = 1 << 16  # element pairs per block of rows on a CPU (a cache-sized working set)


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
    """Per-sample noise: row ``k`` of every draw depends only on ``seeds[k]``.

    Args:
        seeds: one integer per sample (any Python ints; counter kinds use them mod 2^64).
        device: where draws are computed (then copied to the caller's device without
            blocking the host). ``None``: on the caller's device for the counter kinds, the
            CPU for ``kind="generator"`` (so its seeds give the same numbers everywhere).
        kind: ``"splitmix"`` (default), ``"philox"`` or ``"generator"`` (module docstring).

    Draw ``j`` is the ``j``-th call of :meth:`randn` or :meth:`rand` that includes the row;
    the counter kinds count draws per row, so :meth:`subset` sources continue each row's
    own stream, as the generator kind shares its generators.
    """

    def __init__(
        self,
        seeds: Iterable[int],
        device: torch.device | str | None = None,
        *,
        kind: str = "splitmix",
    ) -> None:
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise SamplerError("seeds must not be empty")
        if kind not in NOISE_KINDS:
            raise SamplerError(f"unknown noise kind {kind!r}; valid: {', '.join(NOISE_KINDS)}")
        self.kind = kind
        if kind == "generator":
            self.device = torch.device("cpu" if device is None else device)
            self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]
            return
        self.device = None if device is None else torch.device(device)
        n = len(self.seeds)
        self._counts = torch.zeros(n, dtype=torch.int64)  # draws made per row (host)
        self._rows: Tensor | None = None  # rows of self._counts this source draws for
        self._keys = stream_keys(self.seeds) if kind == "splitmix" else None
        self._words = split_seed(self.seeds) if kind == "philox" else None
        self._cache: dict[tuple, Tensor] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def _check(self, shape: Sequence[int]) -> tuple[int, ...]:
        if len(shape) == 0 or shape[0] != len(self.seeds):
            raise SamplerError(
                f"noise for {shape[0] if shape else 0} rows requested from {len(self.seeds)} seeds"
            )
        return tuple(int(s) for s in shape[1:])

    # -- counter-based kinds ------------------------------------------------------------

    def _next_draw(self) -> int | Tensor:
        """This draw's index: an int when every row is at the same draw, else ``[B]``."""
        counts = (self._counts if self._rows is None else self._counts[self._rows]).clone()
        j = int(counts[0])
        same = bool((counts == j).all())
        if self._rows is None:
            self._counts += 1
        else:
            self._counts[self._rows] += 1
        return j if same else counts

    def _host(self, key: str, dev: torch.device, make: Callable[[], Tensor]) -> Tensor:
        if (key, dev) not in self._cache:
            self._cache[(key, dev)] = make().to(dev, non_blocking=True)
        return self._cache[(key, dev)]

    def _row_values(self, j: int | Tensor, dev: torch.device) -> Tensor:
        """``R [B, 1]`` (int64 on ``dev``): each row's SplitMix64 value of draw ``j``."""
        keys = self._host("keys", dev, lambda: self._keys[:, None])
        if isinstance(j, Tensor):  # rows at different draws (subsets drew separately)
            d = splitmix64_outputs(_DRAW_SEED, j)[:, None].to(dev, non_blocking=True)
            return splitmix64_mix_(keys + d)
        block, col = divmod(j, _ROW_BLOCK)
        cached = self._cache.get(("rows", dev))
        if cached is None or cached[0] != block:
            # Row values of the next _ROW_BLOCK draws in one call (not one per draw).
            idx = torch.arange(block * _ROW_BLOCK, (block + 1) * _ROW_BLOCK, dtype=torch.int64)
            d = splitmix64_outputs(_DRAW_SEED, idx)[None].to(dev, non_blocking=True)
            cached = self._cache[("rows", dev)] = (block, splitmix64_mix_(keys + d))
        return cached[1][:, col : col + 1]

    def _element_bits(self, count: int, dev: torch.device) -> tuple[Tensor, Tensor]:
        """``(R [B, 1], C [1, count])``: this draw's row values and the element offsets;
        the draw's 64-bit words are ``mix(R + C)``."""
        c = self._host(
            f"elements{count}",
            dev,
            lambda: splitmix64_outputs(_ELEMENT_SEED, torch.arange(count))[None],
        )
        return self._row_values(self._next_draw(), dev), c

    def _philox_words(self, blocks: int, dev: torch.device) -> tuple[Tensor, ...]:
        """Philox4x32-10 of counters ``(b, draw, 0, 0)``, ``b < blocks``, under each seed."""
        j = self._next_draw()
        k0 = self._host("k0", dev, lambda: self._words[0][:, None])
        k1 = self._host("k1", dev, lambda: self._words[1][:, None])
        c1 = j[:, None].to(dev) if isinstance(j, Tensor) else torch.tensor([[j]], device=dev)
        b = torch.arange(blocks, dtype=torch.int64, device=dev)[None]
        zero = torch.zeros((1, 1), dtype=torch.int64, device=dev)
        return philox4x32((b, c1 & MASK32, zero, (c1 >> 32) & MASK32), (k0, k1))

    def _workspace(self, shape: tuple[int, int], dev: torch.device, dtype: torch.dtype):
        """Reused buffers (two int64, two float) of one block of a draw: no fresh memory,
        and no page faults, for the temporaries of every draw."""
        key = ("work", shape, dev, dtype)
        if key not in self._cache:
            ints = torch.empty((2, *shape), dtype=torch.int64, device=dev)
            floats = torch.empty((2, *shape), dtype=dtype, device=dev)
            self._cache[key] = (*ints, *floats)
        return self._cache[key]

    def _counter_randn(self, row: tuple[int, ...], dev: torch.device, dtype: torch.dtype):
        B, m = len(self.seeds), math.prod(row)
        work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        if self.kind == "splitmix":
            h = (m + 1) // 2
            R, c = self._element_bits(h, dev)
            out = torch.empty((B, 2, h), dtype=work, device=dev)
            # On a CPU, blocks of rows small enough to stay in cache (the same numbers).
            step = max(1, _CPU_BLOCK // h) if dev.type == "cpu" and h < _CPU_BLOCK else B
            step = min(step, B)
            z_buf, t_buf, r_buf, th_buf = self._workspace((step, h), dev, work)
            for r0 in range(0, B, step):
                k = min(step, B - r0)
                z, t = z_buf[:k], t_buf[:k]
                splitmix64_mix_(torch.add(R[r0 : r0 + k], c, out=z), t)
                # The high words: an int32 view on little-endian machines (no shift kernel).
                little = sys.byteorder == "little"
                hi = z.view(torch.int32).view(k, h, 2)[..., 1] if little else z >> 32
                lo = torch.bitwise_and(z, MASK32, out=t)
                box_muller(lo, hi, out[r0 : r0 + k], r_buf[:k], th_buf[:k])
        else:
            w0, w1, w2, w3 = self._philox_words((m + 3) // 4, dev)
            h = 2 * w0.shape[1]
            out = torch.empty((B, 2, h), dtype=work, device=dev)
            lo, hi = torch.cat([w0, w2], 1), torch.cat([w1, w3], 1)
            box_muller(
                lo, hi, out, torch.empty_like(lo, dtype=work), torch.empty_like(lo, dtype=work)
            )
        flat = out.view(B, -1)
        flat = flat if flat.shape[1] == m else flat[:, :m].contiguous()
        return flat.to(dtype).view(B, *row)

    def _counter_rand(self, row: tuple[int, ...], dev: torch.device, dtype: torch.dtype):
        B, m = len(self.seeds), math.prod(row)
        if self.kind == "splitmix":
            R, c = self._element_bits(m, dev)
            u = uniform_bits(splitmix64_mix_(R + c), dtype)
        else:
            w = torch.stack(self._philox_words((m + 3) // 4, dev), -1).view(B, -1)[:, :m]
            u = uniform_bits(w, dtype, bits=32)
        return u.reshape(B, *row)

    # -- draws ----------------------------------------------------------------------

    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        row = self._check(shape)
        if self.kind == "generator":
            out = torch.stack(
                [
                    torch.randn(row, generator=g, dtype=dtype, device=self.device)
                    for g in self.generators
                ]
            )
        else:
            dev = torch.device(device) if self.device is None else self.device
            out = self._counter_randn(row, dev, dtype)
        return out.to(device, non_blocking=True)  # no host sync per draw

    def rand(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        row = self._check(shape)
        if self.kind == "generator":
            out = torch.stack(
                [
                    torch.rand(row, generator=g, dtype=dtype, device=self.device)
                    for g in self.generators
                ]
            )
        else:
            dev = torch.device(device) if self.device is None else self.device
            out = self._counter_rand(row, dev, dtype)
        return out.to(device, non_blocking=True)  # no host sync per draw

    def subset(self, rows: Sequence[int]) -> PerSampleNoise:
        """A source for a subset of the samples, continuing (and advancing) their streams."""
        rows = [int(r) for r in rows]
        sub = PerSampleNoise.__new__(PerSampleNoise)
        sub.seeds = [self.seeds[r] for r in rows]
        sub.kind, sub.device = self.kind, self.device
        if self.kind == "generator":
            sub.generators = [self.generators[r] for r in rows]
            return sub
        idx = torch.tensor(rows, dtype=torch.int64)
        sub._counts = self._counts
        sub._rows = idx if self._rows is None else self._rows[idx]
        sub._keys = None if self._keys is None else self._keys[idx]
        sub._words = None if self._words is None else (self._words[0][idx], self._words[1][idx])
        sub._cache = {}
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
