"""Independent seed streams for benchmarks, and the spread of a metric over seed sets.

A seed set ``s`` gives each random quantity of a benchmark its own seed (numpy's
``SeedSequence`` with spawn key ``(s, stream)``): the initial noise, the samplers' own noise,
the exact reference sample and the floor's exact samples never share a generator, so no
sampler's noise can be another quantity's numbers (e.g. DDPM's first-step noise the
initial noise). Claims are made only where a difference exceeds the spread over seed sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

STREAMS = ("init", "sampler", "exact", "floor", "fit", "eval")


def stream_seed(seed_set: int, stream: str, base: int = 0, index: int = 0) -> int:
    """A 63-bit seed for ``stream`` (one of :data:`STREAMS`) of seed set ``seed_set``."""
    key = (int(seed_set), STREAMS.index(stream), int(index))
    state = np.random.SeedSequence(entropy=int(base), spawn_key=key).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def stream_seeds(seed_set: int, stream: str, n: int, base: int = 0) -> list[int]:
    """``n`` per-sample seeds for ``stream`` of ``seed_set`` (for ``samplerlab.sample``)."""
    return [stream_seed(seed_set, stream, base, k) for k in range(n)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std, min and max of a metric over seed sets."""
    v = [float(x) for x in values]
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(v), "max": max(v), "n": len(v)}


def fmt_spread(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std (min–max)``; ``diverges`` when any seed set is not finite or > 1e3."""
    if any(not math.isfinite(x) or abs(x) > 1e3 for x in values):
        return "diverges"
    s = spread(values)
    g = lambda x, d=digits: f"{x:.{d}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.{d - 1}e}"
    return f"{g(s['mean'])} ± {g(s['std'], 2)} ({g(s['min'])}–{g(s['max'])})"
