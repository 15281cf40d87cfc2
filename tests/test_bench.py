"""The benchmark: equal-NFE step inversion, paired scoring, reference endpoints, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import sliced_wasserstein
from samplerlab.bench import fine_solve, make_model, reference_endpoint, run_bench
from samplerlab.bench_report import format_table
from samplerlab.cli import main
from samplerlab.errors import ConfigError
from samplerlab.samplers import SamplerError, SamplerSpec, get_sampler, get_sigmas
from samplerlab.samplers.ddim import sample_euler
from samplerlab.samplers.edm import sample_edm_heun
from samplerlab.samplers.noise import PerSampleNoise


def _spec(nfe) -> SamplerSpec:
    return SamplerSpec("toy", sample_euler, "toy", nfe_rule=lambda steps, options: nfe(steps))


def test_steps_for_nfe_inverts_the_registry_nfe():
    assert get_sampler("euler").steps_for_nfe(10) == 10
    assert get_sampler("dpm_solver_3").steps_for_nfe(50) == 50  # steps = NFE
    heun = get_sampler("edm_heun")  # NFE = 2 steps - 1
    assert [heun.steps_for_nfe(b) for b in (1, 2, 10, 20, 100)] == [1, 1, 5, 10, 50]
    assert _spec(lambda n: 3 * n).steps_for_nfe(10) == 3
    assert _spec(lambda n: 3 * n).steps_for_nfe(2) is None  # cannot reach the budget
    assert _spec(lambda n: 2 * n + 0.5).steps_for_nfe(10) == 4  # expected (float) NFE

    def even_only(n: int) -> int:
        if n % 2:
            raise SamplerError("steps must be even")
        return n

    assert _spec(even_only).steps_for_nfe(9) == 8
    with pytest.raises(SamplerError, match="budgets"):
        heun.steps_for_nfe(0)


def test_run_bench_rows_equal_nfe_and_paired_scores(gaussian):
    n, seed = 48, 5
    rows = run_bench(
        gaussian,
        ["euler", "edm_heun", "ddpm"],
        (4, 9),
        n_samples=n,
        seed=seed,
        ddpm_budgets=(15,),
        progress=False,
    )
    got = {(r["sampler"], r["budget"]): r for r in rows}
    assert set(got) == {
        ("euler", 4),
        ("euler", 9),
        ("edm_heun", 4),
        ("edm_heun", 9),
        ("ddpm", 4),
        ("ddpm", 9),
        ("ddpm", 15),  # the extra budget only for the stochastic sampler
    }
    for r in rows:
        assert "error" not in r
        assert r["nfe"] <= r["budget"]
        assert r["rounds"] >= 1 and r["seconds"] >= 0
        assert r["sw"] > 0 and r["sw_floor"] > 0
    assert got[("edm_heun", 9)]["steps"] == 5 and got[("edm_heun", 9)]["nfe"] == 9
    assert got[("edm_heun", 4)]["steps"] == 2 and got[("edm_heun", 4)]["nfe"] == 3
    assert got[("ddpm", 15)]["rms"] is None and not got[("ddpm", 15)]["deterministic"]

    # The RMS is to the exact ODE endpoint of the same seeds' initial noise.
    res = sl.sample(
        gaussian, "euler", steps=9, shape=(n, 4), seeds=range(seed, seed + n), dtype=torch.float64
    )
    sigma0 = float(res.sigmas[0])
    z = PerSampleNoise(range(seed, seed + n)).randn((n, 4), device="cpu", dtype=torch.float64)
    exact = gaussian.ode_solution(z * math.sqrt(sigma0**2 + 1), sigma0, 0.0)
    rms = float((res.x - exact).pow(2).mean().sqrt())
    assert got[("euler", 9)]["rms"] == pytest.approx(rms, rel=1e-9)
    assert got[("euler", 9)]["ref_residual"] == 0.0
    # More NFE, smaller error; the distance is to an exact sample of the same size.
    assert got[("edm_heun", 9)]["rms"] < got[("edm_heun", 4)]["rms"]
    exact_sample = gaussian.sample(n, torch.Generator().manual_seed(seed + 1_000_003))
    assert got[("euler", 9)]["sw"] == pytest.approx(sliced_wasserstein(res.x, exact_sample))


def test_stochastic_options_change_the_budgets_and_scores(gaussian):
    rows = run_bench(
        gaussian,
        ["ddim"],
        (5,),
        n_samples=16,
        ddpm_budgets=(7,),
        sampler_options={"ddim": {"eta": 1.0}},
        progress=False,
    )
    assert [(r["budget"], r["rms"], r["options"]) for r in rows] == [
        (5, None, {"eta": 1.0}),
        (7, None, {"eta": 1.0}),
    ]


def test_per_sampler_schedule_replaces_the_default_grid(gaussian):
    n = 24
    rows = run_bench(
        gaussian, ["dpmpp_2m"], (6,), n_samples=n, schedules={"dpmpp_2m": "time_quadratic"},
        progress=False,
    )  # fmt: skip
    res = sl.sample(gaussian, "dpmpp_2m", steps=6, shape=(n, 4), dtype=torch.float64,
                    schedule="time_quadratic")  # fmt: skip
    z = PerSampleNoise(range(n)).randn((n, 4), device="cpu", dtype=torch.float64)
    s0 = float(res.sigmas[0])
    exact = gaussian.ode_solution(z * math.sqrt(s0**2 + 1), s0, 0.0)
    assert rows[0]["schedule"] == "time_quadratic"
    assert rows[0]["rms"] == pytest.approx(float((res.x - exact).pow(2).mean().sqrt()), rel=1e-9)
    assert "| dpmpp_2m (time_quadratic) | 6 |" in format_table(rows)
    assert rows[0]["sw_floor_std"] > 0
    with pytest.raises(SamplerError, match="unknown schedule 'nope' for sampler 'dpmpp_2m'"):
        run_bench(gaussian, ["dpmpp_2m"], (6,), n_samples=8, schedules={"dpmpp_2m": "nope"})


def test_reference_endpoint_matches_closed_form_and_an_independent_solver(gaussian, gmm):
    g = torch.Generator().manual_seed(0)
    sigma0 = gaussian.sigma_max
    x = torch.randn(32, 4, generator=g, dtype=torch.float64) * math.sqrt(sigma0**2 + 1)
    exact = gaussian.ode_solution(x, sigma0, 0.0)
    err = [float((fine_solve(gaussian, x, sigma0, k) - exact).abs().max()) for k in (50, 100)]
    assert err[1] < 5e-5 and err[1] < err[0] / 4  # converging at (about) third order

    ref, residual = reference_endpoint(gmm, x, sigma0, steps=100)
    assert 0 < residual < 1e-3
    # EDM Heun (a different step function and grid) converges to the same endpoint.
    grid = get_sigmas("karras", 200, sigma_min=1e-4, sigma_max=sigma0)
    heun = sample_edm_heun(gmm, x, grid)
    assert float((heun - ref).pow(2).mean().sqrt()) < 1e-3


def test_bad_input_is_one_clear_error(gaussian):
    with pytest.raises(SamplerError, match=r"unknown sampler 'nope'; valid: euler, ddim"):
        run_bench(gaussian, ["euler", "nope"], (4,), n_samples=8, progress=False)
    with pytest.raises(SamplerError, match="unknown option 'etaa' for sampler 'ddim'"):
        run_bench(gaussian, ["ddim"], (4,), n_samples=8, sampler_options={"ddim": {"etaa": 1}})
    with pytest.raises(SamplerError, match="not benchmarked"):
        run_bench(gaussian, ["euler"], (4,), n_samples=8, sampler_options={"ddim": {"eta": 1}})
    with pytest.raises(SamplerError, match="budgets"):
        run_bench(gaussian, ["euler"], (0,), n_samples=8)
    with pytest.raises(ConfigError, match="unknown --model 'cifar'; valid: gmm, gaussian"):
        make_model("cifar")


def test_sampler_refusing_a_step_count_gives_an_error_row(gaussian):
    rows = run_bench(
        gaussian, ["ddim"], (3,), n_samples=8, sampler_options={"ddim": {"eta": -1.0}},
        ddpm_budgets=(), progress=False,
    )  # fmt: skip
    assert rows[0]["error"].startswith("eta must be >= 0")
    assert "error: eta must be >= 0" in format_table(rows)


def test_cli_writes_table_and_reports(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--model", "gmm", "--dim", "3", "--samplers", "euler,edm_heun,dpm_solver_3"]
    argv += ["--nfe", "4,8", "--ddpm-nfe", "", "--n", "24", "--out", str(out), "--no-progress"]
    argv += ["--reference-steps", "60"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for name in ("euler", "edm_heun", "dpm_solver_3"):
        assert f"| {name} | 4 |" in table and f"| {name} | 8 |" in table
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["model"] == "gmm" and data["meta"]["ref_residual"] > 0
    assert len(data["rows"]) == 6
    assert all(r["nfe"] <= r["budget"] and r["rms"] > 0 for r in data["rows"])
    md = (out / "bench.md").read_text()
    assert md.startswith("| sampler | NFE budget |") and "SW2 floor" in md
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samplers", "euler,bogus"], "unknown sampler 'bogus'; valid:"),
        (["--model", "cifar10"], "unknown --model 'cifar10'; valid: gmm, gaussian"),
        (["--nfe", "10,x"], "--nfe must be comma-separated integers"),
        (["--option", "ddim-eta=1"], "--option must look like SAMPLER.KEY=VALUE"),
        (["--option", "ddim.etaa=1", "--samplers", "ddim"], "unknown option 'etaa'"),
        (["--schedule", "dpmpp_2m"], "--schedule must look like SAMPLER=SCHEDULE"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    argv = ["bench", "--n", "4", "--nfe", "2", "--out", str(tmp_path), "--no-progress", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samplerlab bench: error:") and message in err
    assert "\n" not in err


def test_cli_rejects_a_checkpoint_path_for_now(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    assert main(["bench", "--model", str(ckpt), "--out", str(tmp_path)]) == 2
    assert "samplerlab evaluate --ckpt" in capsys.readouterr().err


def test_diffusers_oracle_wrapper_matches_our_dpmpp_2m_on_the_same_grid():
    """bench_gmm's eps wrapper + diffusers' loop == our dpmpp_2m on diffusers' grid."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gmm.py"
    spec = importlib.util.spec_from_file_location("bench_gmm", path)
    bench_gmm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_gmm)

    model = make_model("gmm", dim=3)
    n = 16
    z = PerSampleNoise(range(n)).randn((n, 3), device="cpu", dtype=torch.float64)
    sched = bench_gmm.make_scheduler("multistep", model)
    x, calls, _, timesteps = bench_gmm.run_diffusers(sched, bench_gmm.eps_model(model), z, 8)
    grid = bench_gmm.diffusers_grid(model, timesteps)
    ours = sl.sample(model, "dpmpp_2m", steps=8, shape=(n, 3), noise=z, sigmas=grid,
                     dtype=torch.float64)  # fmt: skip
    assert calls == 8 and ours.nfe == 8
    assert float((ours.x - x.double()).abs().max()) < 1e-4  # diffusers computes in float32


def test_pathwise_errors_carry_their_spread_over_independent_seed_sets(gaussian):
    """Each seed set is a disjoint block of seeds; its error is that of sampling it alone."""
    n, seed = 40, 3
    (row,) = run_bench(gaussian, ["euler"], (6,), n_samples=n, seed=seed, progress=False)
    assert row["seed_sets"] == 4 and len(row["rms_sets"]) == 4
    for k, block in enumerate(torch.tensor_split(torch.arange(seed, seed + n), 4)):
        seeds = block.tolist()
        res = sl.sample(
            gaussian, "euler", steps=6, shape=(len(seeds), 4), seeds=seeds, dtype=torch.float64
        )
        sigma0 = float(res.sigmas[0])
        z = PerSampleNoise(seeds).randn((len(seeds), 4), device="cpu", dtype=torch.float64)
        exact = gaussian.ode_solution(z * math.sqrt(sigma0**2 + 1), sigma0, 0.0)
        assert row["rms_sets"][k] == pytest.approx(
            float((res.x - exact).pow(2).mean().sqrt()), rel=1e-9
        )
    sets = torch.tensor(row["rms_sets"], dtype=torch.float64)
    assert row["rms_std"] == pytest.approx(float(sets.std()), rel=1e-12) and row["rms_std"] > 0
    # The all-n RMS is the root of the mean of the blocks' mean squares (equal blocks).
    assert row["rms"] == pytest.approx(float(sets.pow(2).mean().sqrt()), rel=1e-9)
    assert row["err_median_std"] > 0 and len(row["err_median_sets"]) == 4
    assert f"{row['rms']:.2e} ± {row['rms_std']:.1e}" in format_table([row])
    rows8 = run_bench(
        gaussian, ["euler"], (6,), n_samples=n, seed=seed, seed_sets=8, progress=False
    )
    assert len(rows8[0]["rms_sets"]) == 8
    with pytest.raises(SamplerError, match="too few for 4 seed sets"):
        run_bench(gaussian, ["euler"], (6,), n_samples=6, progress=False)


def test_cli_reports_the_seed_set_spread(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--model", "gaussian", "--dim", "2", "--samplers", "euler", "--nfe", "4"]
    argv += ["--ddpm-nfe", "", "--n", "16", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["seed_sets"] == 4 and data["rows"][0]["rms_std"] > 0
    assert (
        "standard deviation over 4 independent seed sets of 4 samples"
        in (out / "bench.md").read_text()
    )
    assert main([*argv, "--seed-sets", "8", "--out", str(tmp_path / "b8")]) == 0
    assert len(json.loads((tmp_path / "b8" / "bench.json").read_text())["rows"][0]["rms_sets"]) == 8


def test_unreachable_budget_runs_one_step_as_in_the_evaluation(gaussian):
    """One planner for bench and evaluation: a budget below one step's NFE runs one step."""
    from samplerlab.evaluation.plan import steps_for_budget

    rows = run_bench(gaussian, ["pmm"], (1,), n_samples=8, ddpm_budgets=(), progress=False)
    assert [(r["budget"], r["steps"]) for r in rows] == [
        (1, steps_for_budget(get_sampler("pmm"), 1))
    ]
    assert rows[0]["steps"] == 1 and rows[0]["expected_nfe"] > 1 and "error" not in rows[0]
    assert "(over budget)" in format_table(rows)
