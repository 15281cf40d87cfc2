"""Counter-based random number primitives on int64 tensors (the words of
:class:`~samplerlab.samplers.noise.PerSampleNoise`).

* Philox4x32-R (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as
  1, 2, 3", Sec. 4.2): :func:`philox4x32`, and the per-seed stream keys it makes;
* SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators",
  with Stafford's Mix13 constants): :func:`splitmix64_mix_`, :func:`splitmix64_outputs`;
* the Box-Muller transform (Box & Muller 1958) and uniforms from the top bits of a word.

Integer work is exact on every device (wrapping int64 products, logical shifts emulated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
# Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011, Sec. 4.2).
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _s64(v: int) -> int:
    """The int64 (two's complement) holding the 64-bit pattern of ``v``."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


# SplitMix64: the golden-ratio increment and Stafford's Mix13 multipliers.
_GAMMA = _s64(0x9E3779B97F4A7C15)
_MIX = ((30, _s64(0xBF58476D1CE4E5B9)), (27, _s64(0x94D049BB133111EB)), (31, None))


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a * m`` (``a``: uint32 values in int64; ``m`` a
    constant in ``(2^31, 2^32)``). ``q = a (m - 2^32)`` is exact in int64, and
    ``a m = q + a 2^32``, so ``hi = (q >> 32) + a`` (floor shift), ``lo = q mod 2^32``."""
    q = a * (m - (1 << 32))
    return (q >> 32) + a, q & MASK32


def philox4x32(
    counter: Sequence[Tensor | int], key: Sequence[Tensor | int], rounds: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-R (Salmon et al. 2011, Sec. 4.2) on int64 tensors of 32-bit words.

    ``counter``: four words, ``key``: two (tensors broadcast against each other, or ints).
    Returns the four output words; ``rounds=10`` is Random123's ``philox4x32_10``.
    """
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = (torch.as_tensor(k, dtype=torch.int64) for k in key)
    for r in range(rounds):
        if r:
            # Key schedule: Weyl sequence increments before every round after the first.
            k0, k1 = (k0 + _PHILOX_W[0]) & MASK32, (k1 + _PHILOX_W[1]) & MASK32
        # Round: two 32x32->64 products, their halves xored with the other words and key.
        hi0, lo0 = _mulhilo(c0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def splitmix64_mix_(z: Tensor, work: Tensor | None = None) -> Tensor:
    """SplitMix64's output function on int64 ``z``, in place (``z ^= z >>> 30; z *= C1;
    z ^= z >>> 27; z *= C2; z ^= z >>> 31``, wrapping int64 products, logical shifts).
    ``work``: an int64 buffer of ``z``'s shape for the shifted copies (else allocated)."""
    t = torch.empty_like(z) if work is None else work
    for shift, mult in _MIX:
        torch.bitwise_right_shift(z, shift, out=t)
        t &= (1 << (64 - shift)) - 1  # arithmetic shift -> logical shift
        z ^= t
        if mult is not None:
            z.mul_(mult)
    return z


def splitmix64_outputs(seed: int, index: Tensor) -> Tensor:
    """The ``index``-th outputs (0-based, int64 tensor) of SplitMix64 seeded with ``seed``."""
    return splitmix64_mix_((index + 1) * _GAMMA + _s64(seed))


def split_seed(seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The low and high 32-bit words of each seed (mod ``2^64``), host int64 tensors."""
    lo = torch.tensor([s & MASK32 for s in seeds], dtype=torch.int64)
    hi = torch.tensor([(s >> 32) & MASK32 for s in seeds], dtype=torch.int64)
    return lo, hi


def stream_keys(seeds: Sequence[int]) -> Tensor:
    """The 64-bit stream key of each seed: Philox4x32-10 of counter 0 under key ``seed mod
    2^64`` (two 32-bit words), output words 0 and 1 as one int64. Host tensor ``[n]``."""
    k0, k1 = split_seed(seeds)
    w0, w1, _, _ = philox4x32((0, 0, 0, 0), (k0, k1))
    # w1 * 2^32 + w0 as an int64 bit pattern, without overflowing: w1 as a signed word.
    return (w1 - ((w1 >> 31) << 32)) * (1 << 32) + w0


def box_muller(lo: Tensor, hi: Tensor, out: Tensor, r: Tensor, theta: Tensor) -> Tensor:
    """Normals into ``out [b, 2, h]`` from 32-bit words ``lo`` (uint32 values, for the
    radius) and ``hi`` (any 32-bit words, for the angle), ``[b, h]`` each:
    ``r = sqrt(-2 log u)``, ``u = (lo+1) 2^-32`` in ``(0, 1]``;
    ``(r cos theta, r sin theta)``, ``theta = 2 pi hi 2^-32``. ``r``, ``theta``: float
    buffers ``[b, h]`` of ``out``'s dtype."""
    r.copy_(lo).add_(1.0).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()
    theta.copy_(hi).mul_(2 * math.pi * 2.0**-32)
    torch.cos(theta, out=out[:, 0])
    out[:, 0].mul_(r)
    torch.sin(theta, out=out[:, 1])
    out[:, 1].mul_(r)
    return out


def uniform_bits(z: Tensor, dtype: torch.dtype, bits: int = 64) -> Tensor:
    """Uniform ``[0, 1)`` from the top mantissa-many bits of ``bits``-bit words ``z``."""
    p = min(round(-math.log2(torch.finfo(dtype).eps)) + 1, bits)  # mantissa bits
    top = (z >> (bits - p)) & ((1 << p) - 1)
    work = torch.float64 if p > 24 else torch.float32
    return top.to(work).mul_(2.0**-p).to(dtype)
