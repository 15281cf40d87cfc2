"""The noise benchmarks' CPU smoke modes: bench_scaling (every sampler beside its floor, the
target ratios, saved results) and bench_parallel_gpu's --latency / --noise sections."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from samplerlab.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_scaling_smoke(tmp_path):
    bench = _load("bench_scaling")
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "scaling.json").read_text())
    md = (tmp_path / "scaling.md").read_text()
    assert data["threads"] == 1
    ratios = data["targets"]["ratios"]
    assert set(ratios) == set(bench.TARGETS)
    assert all(math.isfinite(v) for v in ratios.values())
    assert ratios["pmm"] > 0 and ratios["ddim"] > 0 and ratios["ddim_batch1"] > 0
    # Every registered sampler at every (n, steps) cell, with a positive time and floor.
    cells = {(r["n"], r["steps"]) for r in data["scaling"]}
    assert cells == {(32, 4), (64, 4), (32, 3)}
    for name in SAMPLERS:
        rows = [r for r in data["scaling"] if r["sampler"] == name]
        assert len(rows) == len(cells), name
        for r in rows:
            assert r["seconds"] > 0 and r["floor_seconds"] > 0 and r["nfe"] >= 1
            assert r["floor"] == ("ddim" if SAMPLERS[name].deterministic() else "ddpm")
        assert f"| {name} | " in md
    assert "ddpm noise cost / batched randn" in md


def test_floors_do_the_samplers_arithmetic():
    """The hand-written floors compute what ddim and ddpm (posterior) compute."""
    import torch

    import samplerlab as sl

    bench = _load("bench_scaling")
    den = bench.make_denoiser(bench.trivial_eps)
    grid = sl.samplers.build_sigmas(den, SAMPLERS["ddim"], 12)
    z = torch.randn(5, bench.DIM, dtype=torch.float64)
    x = z * (grid[0] ** 2 + 1).sqrt()
    ref = sl.sample(den, "ddim", steps=12, shape=(5, bench.DIM), noise=z, dtype=torch.float64)
    got = bench.floor_ddim(bench.trivial_eps, den, grid, x)
    assert float((got - ref.x).abs().max()) < 1e-4 * float(ref.x.abs().max())
    # ddpm: the floor with the sampler's own noise draws replayed.
    draws = [torch.randn(5, bench.DIM, dtype=torch.float64) for _ in range(12)]
    it = iter(draws)
    real_randn = torch.randn
    try:
        torch.randn = lambda *a, **k: next(it)
        got = bench.floor_ddpm(bench.trivial_eps, den, grid, x)
    finally:
        torch.randn = real_randn
    want = SAMPLERS["ddpm"](den, x, grid, noise=sl.samplers.ReplayNoise(draws))
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_bench_parallel_gpu_latency_and_noise_smoke(tmp_path):
    pytest.importorskip("diffusers")
    bench = _load("bench_parallel_gpu")
    out = tmp_path / "gpu.md"
    argv = ["--smoke", "--steps", "3", "--batch", "1", "--latency", "--noise", "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert "| 3 | eager | " in text and "serial / (forward x NFE)" in text
    row = next(line for line in text.splitlines() if line.startswith("| 3 | eager | "))
    assert float(row.split("|")[-2].strip().rstrip("x")) > 0
    assert "| 1 | " in text.split("Per-sample noise")[1]
    for kind in ("splitmix", "philox", "generator"):
        assert f"{kind} ms (x randn)" in text
    assert "error" not in text
