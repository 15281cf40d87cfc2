"""Calibrated grids (samplerlab.calibrate): the fit, the grid, files, sampling and IIA on it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import samplerlab as sl
from samplerlab import calibrate, iia
from samplerlab.analytic import GaussianMixture
from samplerlab.bench import reference_endpoint
from samplerlab.calibrate import Calibration, CalibrationError, CalibrationFileError, GridParam
from samplerlab.calibrate.grid import LIMIT
from samplerlab.calibrate.module import calibration_seeds
from samplerlab.errors import ConfigError
from samplerlab.samplers.registry import SAMPLERS

FAST = {"num_samples": 12, "iterations": 4, "teacher_steps": 40, "progress": False}


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.default(dim=4, components=3, seed=1)


@pytest.fixture(scope="module")
def cal(gmm):
    return calibrate.fit(gmm, "dpmpp_2m", steps=5, **FAST)


def _rms_to_ode(model, seeds, sigmas, name="dpmpp_2m", steps=5, **kw):
    n = len(seeds)
    res = sl.sample(model, name, steps=steps, shape=(n, model.dim), seeds=seeds,
                    dtype=torch.float64, sigmas=sigmas, **kw)  # fmt: skip
    z = sl.samplers.PerSampleNoise(seeds).randn((n, model.dim), device="cpu", dtype=torch.float64)
    s0 = float(res.sigmas[0])
    ref, _ = reference_endpoint(model, z * math.sqrt(s0**2 + model.prior_std**2), s0, 200)
    return float((res.x - ref).pow(2).mean().sqrt())


def test_grid_param_round_trip_and_validity():
    p = GridParam(80.0, 0.002, 7)
    g = torch.Generator().manual_seed(0)
    thetas = torch.cat(
        [torch.randn(50, p.size, generator=g, dtype=torch.float64) * 5,
         torch.full((1, p.size), LIMIT), torch.full((1, p.size), -LIMIT)]
    )  # fmt: skip
    grids = p.sigmas(thetas.T)  # [N+1, K]
    assert grids.shape == (8, 52)
    assert bool((grids[1:] < grids[:-1]).all()), "every theta gives a strictly decreasing grid"
    assert bool((grids[0] == 80.0).all()) and bool((grids[-1] == 0).all())
    assert bool((grids[-2] > 0.002).all())
    for k in range(50):
        th = (thetas[k] / 3).clamp(-8, 8)  # inside the inverse's range (sigmoid kept off 0 and 1)
        torch.testing.assert_close(p.theta(p.sigmas(th)), th, rtol=0, atol=1e-8)
    s = sl.samplers.schedules.karras(7, 0.01, 80.0)
    torch.testing.assert_close(p.sigmas(p.theta(s)), s, rtol=1e-12, atol=0)
    with pytest.raises(CalibrationError, match="no free point"):
        GridParam(80.0, 0.002, 1)


def test_calibration_lowers_the_fitting_loss(gmm, cal):
    m = cal.metadata
    assert m["loss"] < 0.5 * m["default_loss"], m
    # Independently: the calibrated grid beats the default grid against the exact ODE endpoint
    # on the fitting noises and on held-out noises.
    fit = calibration_seeds(0, range(FAST["num_samples"]))
    held = list(range(100, 164))
    default = torch.tensor(m["default_sigmas"], dtype=torch.float64)
    assert _rms_to_ode(gmm, fit, cal.sigmas) < 0.8 * _rms_to_ode(gmm, fit, default)
    assert _rms_to_ode(gmm, held, cal.sigmas) < _rms_to_ode(gmm, held, default)
    assert m["fit_nfe_per_sample"] > 0 and m["fit_seconds"] > 0


def test_calibrated_grid_is_valid_and_inside_the_model_range(gmm, cal):
    s = cal.sigmas
    assert s.dtype == torch.float64 and s.shape == (6,)
    assert bool((s[1:] < s[:-1]).all())
    assert float(s[0]) == pytest.approx(gmm.sigma_max, rel=1e-12)
    assert float(s[-1]) == 0.0 and float(s[-2]) >= gmm.sigma_min
    assert not torch.allclose(s, torch.tensor(cal.metadata["default_sigmas"], dtype=torch.float64))


def test_batch_size_does_not_change_the_grid(gmm, cal):
    other = calibrate.fit(gmm, "dpmpp_2m", steps=5, batch_size=5, **FAST)
    torch.testing.assert_close(other.sigmas, cal.sigmas, rtol=1e-10, atol=0)


def test_sample_uses_the_calibration(gmm, cal, tmp_path):
    kw = {"steps": 5, "shape": (8, 4), "dtype": torch.float64}
    a = sl.sample(gmm, "dpmpp_2m", calibration=cal, **kw)
    b = sl.sample(gmm, "dpmpp_2m", sigmas=cal.sigmas, **kw)
    c = sl.sample(gmm, "dpmpp_2m", **kw)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    torch.testing.assert_close(a.sigmas, cal.sigmas)
    assert not torch.allclose(a.x, c.x)
    path = calibrate.save(cal, tmp_path / "c.safetensors")
    torch.testing.assert_close(sl.sample(gmm, "dpmpp_2m", calibration=str(path), **kw).x, a.x)
    # The torch-only layer takes Calibration objects; files are read by samplerlab.sample.
    from samplerlab.samplers import sample as pure_sample

    torch.testing.assert_close(pure_sample(gmm, "dpmpp_2m", calibration=cal, **kw).x, a.x)
    with pytest.raises(sl.SamplerError, match=r"calibration must be .*samplerlab\.calibrate\.load"):
        pure_sample(gmm, "dpmpp_2m", calibration=str(path), **kw)
    with pytest.raises(CalibrationError, match=r"steps=5, not steps=6"):
        sl.sample(gmm, "dpmpp_2m", calibration=cal, **{**kw, "steps": 6})
    with pytest.raises(CalibrationError, match=r"fitted for sampler 'dpmpp_2m'.*not 'ddim'"):
        sl.sample(gmm, "ddim", calibration=cal, **kw)
    with pytest.raises(sl.SamplerError, match="not both"):
        sl.sample(gmm, "dpmpp_2m", calibration=cal, schedule="karras", **kw)
    # An option the fit did not use, at its default value, is the same run.
    sl.sample(gmm, "dpmpp_2m", calibration=cal, lower_order_final=False, **kw)
    with pytest.raises(
        CalibrationError, match="lower_order_final=False, not lower_order_final=True"
    ):
        sl.sample(gmm, "dpmpp_2m", calibration=cal, lower_order_final=True, **kw)
    with pytest.raises(CalibrationError, match="lower_order_final=False, not"):
        sl.sample(gmm, "dpmpp_2m", calibration=Calibration("dpmpp_2m", 5, cal.sigmas,
                  {"lower_order_final": False}), lower_order_final=True, **kw)  # fmt: skip


def test_file_round_trip_and_mismatches(gmm, cal, tmp_path):
    path = calibrate.save(cal, tmp_path / "sub" / "c.safetensors")
    back = calibrate.load(path, denoiser=gmm, sampler="iia_dpmpp_2m", steps=5)
    torch.testing.assert_close(back.sigmas, cal.sigmas, rtol=0, atol=0)
    assert back.sampler == "dpmpp_2m" and back.steps == 5
    assert back.metadata["fingerprint"] == cal.metadata["fingerprint"]
    assert not list(path.parent.glob(".*.tmp")), "atomic write leaves no temporary file"
    other = GaussianMixture.default(dim=4, components=3, seed=2)
    with pytest.raises(CalibrationFileError, match=r"another model .*fingerprint .*this model"):
        calibrate.load(path, denoiser=other)
    with pytest.raises(CalibrationFileError, match="another model"):
        sl.sample(other, "dpmpp_2m", steps=5, shape=(2, 4), calibration=str(path))
    with pytest.warns(UserWarning, match="strict=False"):
        calibrate.load(path, denoiser=other, strict=False)
    with pytest.raises(CalibrationFileError, match=r"c\.safetensors.*'dpmpp_2m'.*not 'ddim'"):
        calibrate.load(path, sampler="ddim")
    with pytest.raises(CalibrationFileError, match="steps=5, not steps=7"):
        calibrate.load(path, steps=7)
    with pytest.raises(CalibrationFileError, match="does not exist"):
        calibrate.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CalibrationFileError, match="corrupt"):
        calibrate.load(bad)
    coeffs = iia.IIACoefficients.defaults("iia_ddim", cal.sigmas)
    iia_file = iia.save(coeffs, tmp_path / "iia.safetensors")
    with pytest.raises(CalibrationFileError, match="not a samplerlab calibration file"):
        calibrate.load(iia_file)


def test_iia_on_the_calibrated_grid(gmm):
    c = calibrate.fit(gmm, "ddim", steps=6, **FAST)
    co = iia.fit(gmm, "iia_ddim", steps=6, M=3, num_samples=12, calibration=c, progress=False)
    torch.testing.assert_close(co.sigmas, c.sigmas, rtol=0, atol=0)
    assert co.metadata["calibrated"] is True
    kw = {"steps": 6, "shape": (64, 4), "seeds": range(300, 364), "dtype": torch.float64}
    both = sl.sample(gmm, "iia_ddim", calibration=c, coeffs=co, **kw)
    grid_only = sl.sample(gmm, "iia_ddim", calibration=c, **kw)
    torch.testing.assert_close(grid_only.x, sl.sample(gmm, "ddim", calibration=c, **kw).x)
    assert not torch.allclose(both.x, grid_only.x)
    seeds = list(kw["seeds"])
    assert _rms_to_ode(gmm, seeds, c.sigmas, "iia_ddim", 6, coeffs=co) < _rms_to_ode(
        gmm, seeds, c.sigmas, "ddim", 6
    )
    # Coefficients fitted on the default grid do not run on the calibrated one.
    plain = iia.fit(gmm, "iia_ddim", steps=6, M=2, num_samples=4, progress=False)
    with pytest.raises(sl.SamplerError, match="different grid"):
        sl.sample(gmm, "iia_ddim", calibration=c, coeffs=plain, **kw)
    with pytest.raises(CalibrationError, match="not 'iia_dpmpp_2m'"):
        iia.fit(gmm, "iia_dpmpp_2m", steps=6, calibration=c, progress=False)


def test_bad_input_is_one_clear_line(gmm):
    with pytest.raises(ConfigError, match="stochastic"):
        calibrate.fit(gmm, "ddpm", steps=5, **FAST)
    with pytest.raises(ConfigError, match="stochastic"):
        calibrate.fit(gmm, "ddim", steps=5, options={"eta": 1.0}, **FAST)
    with pytest.raises(sl.SamplerError, match="unknown sampler"):
        calibrate.fit(gmm, "nope", steps=5, **FAST)
    with pytest.raises(ConfigError, match="num_samples"):
        calibrate.fit(gmm, "ddim", steps=5, **{**FAST, "num_samples": 0})
    with pytest.raises(CalibrationError, match="no free point"):
        calibrate.fit(gmm, "ddim", steps=1, **FAST)


DETERMINISTIC = sorted(n for n, s in SAMPLERS.items() if s.deterministic() and not s.needs_coeffs)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_every_deterministic_sampler_calibrates(gmm, name):
    spec = SAMPLERS[name]
    steps = spec.steps_for_nfe(8) or 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = calibrate.fit(gmm, name, steps=steps, num_samples=4, iterations=2,
                          teacher_steps=20, progress=False)  # fmt: skip
    assert c.metadata["loss"] <= c.metadata["start_loss"] <= c.metadata["default_loss"]
    assert bool((c.sigmas[1:] < c.sigmas[:-1]).all()) and float(c.sigmas[-2]) >= gmm.sigma_min
    res = sl.sample(gmm, name, steps=steps, shape=(3, 4), calibration=c, dtype=torch.float64)
    assert bool(torch.isfinite(res.x).all())


def test_cli_calibrate_writes_a_file_and_refuses_bad_input(tmp_path, capsys):
    from samplerlab.cli import main

    out = tmp_path / "cal.safetensors"
    iia_out = tmp_path / "iia.safetensors"
    argv = ["calibrate", "--model", "gmm", "--sampler", "ddim", "--steps", "4", "--samples", "6",
            "--iterations", "2", "--teacher-steps", "20", "--no-progress", "--out", str(out),
            "--iia", "iia_ddim", "--M", "2", "--iia-out", str(iia_out)]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    gmm8 = GaussianMixture.default()
    c = calibrate.load(out, denoiser=gmm8, sampler="ddim", steps=4)
    co = iia.load(iia_out, denoiser=gmm8, sigmas=c.sigmas)
    assert co.metadata["calibrated"] is True
    res = sl.sample(gmm8, "iia_ddim", steps=4, shape=(2, 8), calibration=str(out), coeffs=co)
    assert bool(torch.isfinite(res.x).all())
    for bad, msg in (
        (["--sampler", "ddpm"], "stochastic"),
        (["--sampler", "nope"], "unknown sampler"),
        (["--iia", "iia_dpmpp_2m"], "runs on the grid of dpmpp_2m, not ddim"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--option", "bogus=1"], "unknown option 'bogus'"),
    ):
        rc = main(["calibrate", "--sampler", "ddim", "--out", str(tmp_path / "x"), *bad])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x").exists()
