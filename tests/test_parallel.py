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
from samplerlab.samplers.parallel import predraw_noise
from samplerlab.samplers.sharding import ShardedDenoiser

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
    # 1 vs 2 devices (CPU replicas on --smoke): both runs and the comparison table.
    out2 = tmp_path / "devices.md"
    argv = ["--smoke", "--steps", "4", "--batch", "2", "--gpus", "1", "2", "--out", str(out2)]
    assert mod.main(argv) == 0
    text = out2.read_text()
    assert "### rows over 2 device(s): cpu, cpu" in text and "rows sharded over" in text
    assert "### wall-clock by device count" in text and "error" not in text
    for label in ("serial", "srds", "srds_pipelined", "paradigms"):
        row = next(r for r in text.splitlines() if r.startswith(f"| eager | 4 | 2 | {label} |"))
        assert row.count("x)") == 2, row  # a time and a speed-up for each device count
    assert mod.main(["--smoke", "--gpus", "0"]) == 2


def _inner_names(need_history: bool) -> list[str]:
    from samplerlab.samplers.registry import SAMPLERS

    return [
        n
        for n, s in SAMPLERS.items()
        if s.can_be_inner() and not (need_history and s.multistep and s.history_step is None)
    ]


@pytest.mark.parametrize("inner", _inner_names(need_history=False))
@pytest.mark.parametrize("pipelined", [False, True])
def test_every_registered_inner_solver_srds_equals_serial(gmm, inner, pipelined):
    # Picked from the registry spec (parallel_inner / multistep / history_step): a newly
    # registered solver is covered automatically.
    from helpers_parallel import sample_srds, serial_blockwise

    spec = ss.get_sampler(inner)
    if pipelined and spec.multistep and spec.history_step is None:
        pytest.skip("multistep without history_step: plain SRDS only")
    x = torch.randn(3, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    sig = ss.get_sigmas("karras", 12, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = x * float(sig[0])
    ref = serial_blockwise(gmm, x, sig, noise=PerSampleNoise([1, 2, 3]), inner=inner, blocks=3)
    if not spec.multistep or spec.history_step is not None:
        # The serial equivalent of a single-step solver, and of a multistep one with a
        # history step (its history carried across blocks), is its plain serial run.
        serial = spec(gmm, x, sig, noise=PerSampleNoise([1, 2, 3]))
        assert torch.allclose(ref, serial, atol=1e-12, rtol=0)
    out = sample_srds(
        gmm,
        x,
        sig,
        noise=PerSampleNoise([1, 2, 3]),
        inner=inner,
        blocks=3,
        tol=0.0,
        pipelined=pipelined,
    )
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("inner", _inner_names(need_history=True))
def test_every_registered_inner_solver_paradigms_equals_serial(gmm, inner):
    from helpers_parallel import sample_paradigms

    spec = ss.get_sampler(inner)
    x = torch.randn(3, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    sig = ss.get_sigmas("karras", 12, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = x * float(sig[0])
    serial = spec(gmm, x, sig, noise=PerSampleNoise([4, 5, 6]))
    out = sample_paradigms(
        gmm, x, sig, noise=PerSampleNoise([4, 5, 6]), inner=inner, tol=0.0, window=5
    )
    assert torch.allclose(out, serial, atol=1e-12, rtol=0)


def _rel(out, ref):
    B = out.shape[0]
    return ((out - ref).reshape(B, -1).norm(dim=1) / ref.reshape(B, -1).norm(dim=1)).max()


@pytest.mark.parametrize(
    "inner", [n for n in _inner_names(True) if ss.get_sampler(n).deterministic()]
)
def test_every_deterministic_inner_solver_within_tolerance(gmm, inner):
    # With tol > 0 both samplers stop early, in fewer rounds than the serial solve, and end
    # near their serial equivalent (the plain serial run: every solver here has a history
    # step or none is needed): per-sample relative error <= 4 tol.
    spec, N = ss.get_sampler(inner), 48
    g = torch.Generator().manual_seed(11)
    sig = ss.get_sigmas("karras", N, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max)
    x = torch.randn(8, gmm.dim, dtype=torch.float64, generator=g) * float(sig[0])
    serial = CountingDenoiser(gmm)
    ref = spec(serial, x, sig)
    for sampler, opts in (("srds", {"blocks": 8}), ("paradigms", {"window": 16})):
        c = CountingDenoiser(gmm)
        out = ss.get_sampler(sampler)(c, x, sig, inner=inner, tol=1e-4, **opts)
        assert _rel(out, ref) <= 4e-4, (sampler, float(_rel(out, ref)))
        assert c.rounds < serial.rounds, (sampler, c.rounds, serial.rounds)


def test_first_call_shares_and_serves_known_rows(gmm):
    from samplerlab.samplers.parallel import FirstCall

    x = torch.randn(6, gmm.dim, dtype=torch.float64)
    x[3:] = x[:3]  # rows 3..5 repeat rows 0..2
    sigma = torch.tensor([1.0, 2.0, 3.0] * 2, dtype=torch.float64)
    c = CountingDenoiser(gmm)
    fc = FirstCall(c, 6, src=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.equal(fc(x, sigma), gmm(x, sigma)) and c.rows == 3
    fc(x, sigma)  # later calls go straight through
    assert c.rows == 9
    known = gmm(x[:2], sigma[:2])
    c2 = CountingDenoiser(gmm)
    fk = FirstCall(c2, 6, known=(torch.tensor([0, 1]), known))
    assert torch.allclose(fk(x, sigma), gmm(x, sigma), atol=0, rtol=0) and c2.rows == 4
    with pytest.raises(sl.SamplerError, match="first call has 2 rows, not 6"):
        FirstCall(gmm, 6)(x[:2], sigma[:2])


def test_heun_no_second_stage_on_rows_ending_at_zero(gmm):
    # A per-row grid whose second row ends at 0 one step earlier: that row's last step is
    # the Euler/denoise step (1 call); its 2nd stage is not evaluated.
    g1 = torch.tensor([10.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    g2 = torch.tensor([10.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(2, gmm.dim, dtype=torch.float64) * 10
    c = CountingDenoiser(gmm)
    both = ss.sample_edm_heun(c, x, torch.stack([g1, g2], 1))
    assert c.rows == 2 * 2 + 2 * 2 + (2 + 1)  # two full Heun steps, then 2 + 1 rows
    a, b = ss.sample_edm_heun(gmm, x[:1], g1), ss.sample_edm_heun(gmm, x[1:], g2)
    assert torch.allclose(both, torch.cat([a, b]), atol=1e-12, rtol=0)


def test_parallel_benchmark_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_parallel", ROOT / "benchmarks" / "bench_parallel.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "par"
    argv = ["--n", "3", "--seed-sets", "2", "--steps", "6", "--models", "holdout-edm-d24-k6"]
    # The holdout targets are checked at N = 100 and 1024 only (none here).
    assert mod.main([*argv, "--out", str(out)]) == 0
    rows = __import__("json").loads((tmp_path / "par.json").read_text())
    assert {(r["sampler"], r["inner"]) for r in rows} == {
        *((s, i) for s in ("srds", "paradigms") for i in ("ddim", "dpmpp_2m", "edm_heun")),
        ("rmm_parallel", ""),
    }
    assert {r["seed_set"] for r in rows} == {0, 1} and all(r["err"] < 1e-6 for r in rows[:1])
    text = (tmp_path / "par.md").read_text()
    assert "holdout targets: all met" in text and "Summary (README)" in text
    assert "MISSED (<= 0.5x, <= 1e-3)" in text  # at N = 6 the rounds are not halved
    assert "| holdout-edm-d24-k6 | 6 | srds | ddim |" in text
