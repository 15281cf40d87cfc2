"""Absurd inputs to ``sample()`` end in one clear line, before any work; API defects fixed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers import SamplerError
from samplerlab.samplers.ddim import ancestral_sigmas, step_ddim

F64 = torch.float64


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


BAD = [
    ({"steps": 10**12}, r"steps=1000000000000 is more than samplerlab plans \(100000\)"),
    ({"seeds": [1e20, 0]}, r"seeds must be integers, got 1e\+20"),
    ({"seeds": [2**70, 0]}, r"seed 1180591620717411303424 is out of range"),
    ({"seeds": [-1, 0]}, r"seed -1 is out of range"),
    ({"seeds": [0.5, 1]}, r"seeds must be integers, got 0.5"),
    ({"seeds": 5}, r"seeds must be a sequence of 2 integers"),
    ({"seeds": "ab"}, r"seeds must be a sequence of 2 integers"),
    ({"device": "gpu"}, r"device 'gpu' is not a device"),
    ({"dtype": torch.int64}, r"dtype must be a floating torch.dtype"),
    ({"dtype": "float32"}, r"dtype must be a floating torch.dtype"),
    ({"noise": [[0.0] * 4] * 2}, r"noise must be a tensor of shape \(2, 4\), got list"),
    ({"shape": 5}, r"shape must be a sequence of integers"),
    ({"shape": (2.5, 4)}, r"shape must be a sequence of integers"),
    ({"schedule_options": 5}, r"schedule_options must be a mapping"),
    ({"schedule": "karras", "schedule_options": {"rho": 0}}, r"schedule option rho must be"),
    ({"schedule_options": {"sigma_min": "abc"}}, r"schedule option sigma_min must be a number"),
    ({"eta": "abc"}, r"ddim option eta must be a finite number >= 0, got 'abc'"),
    ({"eta": float("nan")}, r"ddim option eta must be a finite number >= 0, got nan"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD, ids=[repr(k) for k, _ in BAD])
def test_absurd_inputs_are_one_line(gaussian, kwargs, match):
    call = {"steps": 3, "shape": (2, 4), **kwargs}
    with pytest.raises(SamplerError, match=match) as e:
        sl.sample(gaussian, "ddim", **call)
    _one_line(e)


def test_planned_grid_too_long_is_refused(gaussian):
    # pmm plans steps * K fine sub-steps: refused from the plan, before the grid is built.
    with pytest.raises(SamplerError, match=r"plans 1000000 grid steps") as e:
        sl.sample(gaussian, "pmm", steps=1000, K=1000, shape=(2, 4))
    _one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", ["device", "noise_device"])
def test_cuda_without_cuda_is_one_line(gaussian, key):
    with pytest.raises(SamplerError, match=rf"{key} 'cuda': CUDA is not available") as e:
        sl.sample(gaussian, "ddim", steps=3, shape=(2, 4), **{key: "cuda"})
    _one_line(e)


def test_denoiser_that_is_not_callable():
    with pytest.raises(SamplerError, match="the denoiser must be a callable") as e:
        sl.sample(5, "ddim", steps=3, shape=(2, 4))
    _one_line(e)


@pytest.mark.parametrize("bad", ["rows", "dims", "not a tensor"])
def test_wrong_shape_denoiser_output_is_an_error(gaussian, bad):
    """A denoiser returning another shape is refused, not broadcast into the samples."""

    def den(x, sigma):
        out = gaussian(x, sigma)
        if bad == "rows":
            return out[:1]  # [1, 4] broadcasts against [2, 4]
        if bad == "dims":
            return out[:, :1]  # [2, 1] broadcasts against [2, 4]
        return out.tolist()

    den.sigma_min, den.sigma_max = gaussian.sigma_min, gaussian.sigma_max
    with pytest.raises(
        SamplerError, match=r"the denoiser returned .* for an input of shape \(2, 4\)"
    ) as e:
        sl.sample(den, "ddim", steps=3, shape=(2, 4))
    _one_line(e)


def test_iia_is_an_attribute_of_a_fresh_import():
    code = "import samplerlab; assert callable(samplerlab.iia.fit); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("eta", [1.0, 1.5, 3.0, 100.0])
def test_ddim_eta_above_one_never_adds_more_noise_than_the_grid_allows(eta):
    """sigma_up <= sigma_next (k-diffusion's get_ancestral_step); eta >= the saturation
    point is x0_hat + sigma_next z exactly, and eta = 1 is unchanged (the DDPM posterior)."""
    sigma = torch.tensor([10.0, 2.0, 0.5], dtype=F64)
    sigma_next = torch.tensor([5.0, 1.0, 0.1], dtype=F64)
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    assert bool((up <= sigma_next).all())
    torch.testing.assert_close(down**2 + up**2, sigma_next**2)
    # k-diffusion's formula (sampling.get_ancestral_step), written out as the oracle.
    k_up = torch.minimum(
        sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()
    )
    torch.testing.assert_close(up, k_up)
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    den = lambda x, s: 0.5 * x
    out = step_ddim(den, x, sigma, sigma_next, eta=eta, z=z)
    if eta >= 100:
        torch.testing.assert_close(out, 0.5 * x + sigma_next[:, None] * z)


def test_first_ddpm_step_noise_is_not_the_initial_noise():
    """sample() draws the sampler's noise after the initial noise from each sample's stream:
    the first DDPM step's fresh noise is independent of the initial noise."""
    seen = []

    def den(x, sigma):
        seen.append(x.clone())
        return torch.zeros_like(x)  # D = 0: the first step is affine in x_0 and w

    den.sigma_min, den.sigma_max = 0.01, 10.0
    n, d = 512, 8
    res = sl.sample(den, "ddpm", steps=3, shape=(n, d), dtype=F64, schedule="karras",
                    seeds=range(100, 100 + n))  # fmt: skip
    from samplerlab.samplers.ddpm import ddpm_coefficients

    s = res.sigmas
    A, G, gamma = (float(c) for c in ddpm_coefficients(s[:1], s[1:2], "posterior"))
    z0 = seen[0] / float(s[0])  # the initial noise
    # x_1 = A x_0 + G eps_hat + Gamma w with eps_hat = x_0 / sigma_0 (D = 0): solve for w.
    w = (seen[1] - (A + G / float(s[0])) * seen[0]) / gamma  # the first step's fresh noise
    assert abs(float(w.std()) - 1) < 0.05  # w is a fresh standard normal draw ...
    assert not torch.allclose(w, z0)  # ... and not the initial noise
    corr = float((w * z0).sum() / (w.norm() * z0.norm()))
    assert abs(corr) < 0.05, corr


FIT_BAD = [
    ({"steps": 10**12}, r"steps=1000000000000 is more than samplerlab plans"),
    ({"seed": 1e20}, r"seed must be an integer >= 0, got 1e\+20"),
    ({"seed": 2**50}, r"seed < 2\*\*42"),
    ({"shape": 5}, r"shape must be one sample's shape \(integers\), got 5"),
    ({"shape": (2.5,)}, r"shape must be one sample's shape \(integers\)"),
    ({"shape": (3,)}, r"shape \(3,\) is not the model's sample shape \(4,\)"),
    ({"dtype": torch.int64}, r"dtype must be a floating torch.dtype"),
]


@pytest.mark.parametrize(("kwargs", "match"), FIT_BAD, ids=[repr(k) for k, _ in FIT_BAD])
def test_iia_fit_absurd_inputs_are_one_line(gmm, kwargs, match):
    from samplerlab.errors import ConfigError

    with pytest.raises(ConfigError, match=match) as e:
        sl.iia.fit(gmm, "iia_ddim", **{"steps": 4, "progress": False, **kwargs})
    _one_line(e)


def test_iia_fit_refuses_a_wrong_shape_denoiser_and_a_non_callable():
    from samplerlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"returned \(1, 1\) for an input of shape \(1, 8\)"):
        sl.iia.fit(lambda x, s: x[:, :1], "iia_ddim", steps=4, shape=(8,), progress=False)
    with pytest.raises(ConfigError, match="the denoiser must be a callable"):
        sl.iia.fit(5, "iia_ddim", steps=4, shape=(8,), progress=False)


def test_iia_save_and_load_bad_paths(tmp_path, gmm):
    c = sl.iia.IIACoefficients.defaults("iia_ddim", torch.linspace(1, 0, 4, dtype=F64))
    with pytest.raises(sl.iia.IIAFileError, match="save\\(\\) takes IIACoefficients, got int"):
        sl.iia.save(5, tmp_path / "x.safetensors")
    with pytest.raises(sl.iia.IIAFileError, match="is a folder; give a file name") as e:
        sl.iia.save(c, tmp_path)
    _one_line(e)
    with pytest.raises(sl.iia.IIAFileError, match="is a folder, not a coefficient file"):
        sl.iia.load(tmp_path)
    path = sl.iia.save(c, tmp_path / "c.safetensors")
    with pytest.raises(sl.iia.IIAFileError, match="fitted for another model"):
        sl.iia.load(path, denoiser=5)  # an object without attributes: still one line
