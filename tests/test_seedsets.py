"""Benchmarks draw every random quantity from its own seed (benchmarks/seedsets.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_streams_and_seed_sets_never_share_a_seed():
    ss = _load("seedsets")
    seeds = [ss.stream_seed(s, st, 0, k) for s in range(4) for st in ss.STREAMS for k in range(50)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= x < 2**63 for x in seeds)
    assert ss.stream_seed(1, "init") == ss.stream_seed(1, "init")  # reproducible
    assert ss.stream_seed(1, "init", base=1) != ss.stream_seed(1, "init")


def test_spread_and_its_format():
    ss = _load("seedsets")
    s = ss.spread([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["std"] == pytest.approx(1.2909944, rel=1e-6)
    assert ss.fmt_spread([1.0, 2.0, 3.0, 4.0]) == "2.5 ± 1.3 (1–4)"
    assert ss.fmt_spread([1.0, float("nan")]) == "diverges"


def test_bench_midpoint_gives_samplers_their_own_noise(monkeypatch):
    """Before: every sampler's noise generator was seeded with the initial noise's seed,
    so DDPM's first-step noise was the initial noise."""
    mid = _load_midpoint()
    seen: dict[str, list[int]] = {"sampler": []}

    def spy_run(gmm, z, name, steps, sampler_seed, schedule=None, **kw):
        seen["sampler"].append(sampler_seed)
        return {"x": z, "nfe": 1.0, "rounds": 1}

    monkeypatch.setattr(mid, "run", spy_run)
    monkeypatch.setattr(mid, "sliced_wasserstein", lambda a, b: 0.0)
    out = mid.one_seed_set(mid.GaussianMixture.default(), 16, 0, 0)
    init = mid.stream_seed(0, "init", 0)
    assert init not in seen["sampler"]
    assert len(set(seen["sampler"])) == len(seen["sampler"])  # one stream per configuration
    assert "floor" in out and len(out["floor"]) == 3


def _load_midpoint():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return _load("bench_midpoint")
    finally:
        sys.path.remove(str(BENCH))
