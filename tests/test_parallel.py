from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest
import torch

import samplerlab as sl
import samplerlab.samplers as ss
from samplerlab.samplers.denoisers import CountingDenoiser
from samplerlab.samplers.noise import PerSampleNoise
from samplerlab.samplers.parallel import ShardedDenoiser, predraw_noise

ROOT = Path(__file__).resolve().parents[1]


class _Recorder:
    """A denoiser replica that records the rows and threads it was called with."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, torch.device(device)
        self.rows: list[int] = []
        self.threads: set[int] = set()
        self.sigma_min = inner.sigma_min

    def __call__(self, x, sigma):
        assert x.device == self.device
        self.rows.append(x.shape[0])
        self.threads.add(threading.get_ident())
        return self.inner(x, sigma)


def test_sharded_equals_unsharded(gmm):
    reps = [_Recorder(gmm, "cpu"), _Recorder(gmm, "cpu")]
    den = ShardedDenoiser(reps, ["cpu", "cpu"])
    x = torch.randn(7, gmm.dim, dtype=torch.float64)
    sigma = torch.linspace(0.1, 5, 7, dtype=torch.float64)
    assert torch.equal(den(x, sigma), gmm(x, sigma))
    assert [r.rows for r in reps] == [[4], [3]]
    assert den.sigma_min == gmm.sigma_min  # attributes of the first replica
    # One row: no split.
    assert torch.equal(den(x[:1], sigma[:1]), gmm(x[:1], sigma[:1]))
    den.close()


def test_sharded_factory_and_samplers(gmm):
    made = []

    def factory(device):
        made.append(device)
        return gmm

    den = ShardedDenoiser(factory, ["cpu", "cpu", "cpu"])
    assert made == [torch.device("cpu")] * 3
    x = torch.randn(2, gmm.dim, dtype=torch.float64) * 14
    sig = ss.get_sigmas("karras", 16, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    for name, opts in (("srds", {"blocks": 4, "tol": 1e-4, "pipelined": True}), ("paradigms", {})):
        fn = ss.get_sampler(name)
        assert torch.allclose(fn(den, x, sig, **opts), fn(gmm, x, sig, **opts), atol=1e-12, rtol=0)
    den.close()


def test_sharded_bad_input(gmm):
    with pytest.raises(sl.SamplerError, match="2 replicas for 3 devices"):
        ShardedDenoiser([gmm, gmm], ["cpu"] * 3)
    with pytest.raises(sl.SamplerError, match="non-empty list"):
        ShardedDenoiser([gmm], "cpu")
    with pytest.raises(sl.SamplerError, match="callable denoiser"):
        ShardedDenoiser([gmm, 3], ["cpu", "cpu"])


def test_predraw_matches_serial_draw_order():
    x = torch.zeros(2, 3)
    a = predraw_noise(PerSampleNoise([1, 2]), x, 4)
    src = PerSampleNoise([1, 2])
    b = torch.stack([src.randn((2, 3), device="cpu", dtype=torch.float32) for _ in range(4)])
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["srds", "paradigms"])
def test_max_rows_caps_calls_results_unchanged(gmm, name):
    x = torch.randn(3, gmm.dim, dtype=torch.float64) * 14
    sig = ss.get_sigmas("karras", 16, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)

    class Max(CountingDenoiser):
        biggest = 0

        def __call__(self, x, sigma):
            Max.biggest = max(Max.biggest, x.shape[0])
            return super().__call__(x, sigma)

    fn = ss.get_sampler(name)
    ref = fn(gmm, x, sig)
    out = fn(Max(gmm), x, sig, max_rows=5)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert Max.biggest <= 5


@pytest.mark.parametrize("name", ["srds", "paradigms"])
def test_sample_api_batch_equals_row_by_row(gmm, name):
    kw = dict(steps=16, dtype=torch.float64, inner="ddpm")
    full = sl.sample(gmm, name, shape=(3, gmm.dim), seeds=[4, 5, 6], **kw)
    rows = [sl.sample(gmm, name, shape=(1, gmm.dim), seeds=[s], **kw).x for s in (4, 5, 6)]
    assert torch.allclose(full.x, torch.cat(rows), atol=1e-12, rtol=0)
    serial = sl.sample(
        gmm, "ddpm", shape=(3, gmm.dim), seeds=[4, 5, 6], steps=16, dtype=torch.float64
    )
    assert (full.x - serial.x).abs().max() < 0.05


def test_gpu_benchmark_smoke(tmp_path):
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location(
        "bench_parallel_gpu", ROOT / "benchmarks" / "bench_parallel_gpu.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "smoke.md"
    assert mod.main(["--smoke", "--steps", "4", "--batch", "2", "--out", str(out)]) == 0
    text = out.read_text()
    for label in ("serial", "srds", "srds_pipelined", "paradigms"):
        assert f"| 4 | 2 | eager | {label} |" in text
    assert "error" not in text
