"""IIA coefficients are bound to their model and to what their fit produced."""

from __future__ import annotations

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import GaussianMixture
from samplerlab.iia import IIAFileError, fingerprint, fit, load, save
from samplerlab.samplers import SamplerError, build_sigmas, get_sampler
from samplerlab.samplers import iia as siia
from samplerlab.samplers.denoisers import EDMDenoiser

F64 = torch.float64


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.fixture(scope="module")
def fitted():
    gmm = GaussianMixture.default()
    c = fit(gmm, "iia_ddim", steps=6, M=3, num_samples=16, progress=False)
    return gmm, c


def test_fit_stores_fingerprint_and_digest(fitted):
    gmm, c = fitted
    assert c.metadata["fingerprint"] == fingerprint(gmm)
    assert c.metadata["coeffs_digest"] == siia.coefficients_digest(c.coeffs, c.mask, c.sigmas)


@pytest.mark.parametrize("as_file", [True, False])
def test_another_models_coefficients_are_refused_naming_both(fitted, tmp_path, as_file):
    gmm, c = fitted
    other = GaussianMixture.default(components=3, seed=2)  # same VP table: same grid
    coeffs = save(c, tmp_path / "c.safetensors") if as_file else c
    kw = {"steps": 6, "shape": (4, gmm.dim), "dtype": F64}
    with pytest.raises(SamplerError, match="fitted for another model") as e:
        sl.sample(other, "iia_ddim", coeffs=coeffs, **kw)
    msg = _one_line(e)
    assert fingerprint(gmm) in msg and fingerprint(other) in msg
    assert "allow_fingerprint_mismatch=True" in msg
    if as_file:
        assert str(coeffs) in msg
    # The explicit override uses them (same result as the same scalars on this model).
    x = sl.sample(other, "iia_ddim", coeffs=coeffs, allow_fingerprint_mismatch=True, **kw).x
    plain = siia.IIACoefficients(c.sampler, c.sigmas, c.coeffs, c.mask, c.form, c.r)
    torch.testing.assert_close(x, sl.sample(other, "iia_ddim", coeffs=plain, **kw).x)
    # The right model samples without the override.
    sl.sample(gmm, "iia_ddim", coeffs=coeffs, **kw)


def test_override_must_be_a_bool(fitted):
    gmm, c = fitted
    with pytest.raises(SamplerError, match="allow_fingerprint_mismatch must be True or False"):
        sl.sample(gmm, "iia_ddim", steps=6, shape=(2, gmm.dim), coeffs=c,
                  allow_fingerprint_mismatch="yes")  # fmt: skip


def test_load_with_another_denoiser_and_override(fitted, tmp_path):
    _, c = fitted
    path = save(c, tmp_path / "c.safetensors")
    other = GaussianMixture.default(components=3, seed=2)
    with pytest.raises(IIAFileError, match="another model") as e:
        load(path, denoiser=other)
    assert "allow_fingerprint_mismatch=True" in _one_line(e)
    assert load(path, denoiser=other, allow_fingerprint_mismatch=True).sampler == "iia_ddim"


def test_the_fingerprint_follows_weight_changes():
    net = torch.nn.Linear(4, 4)
    den = EDMDenoiser(net, preconditioned=False)
    a = fingerprint(den)
    assert fingerprint(den) == a  # cached, unchanged
    with torch.no_grad():
        net.bias.mul_(2)
    assert fingerprint(den) != a
    net.load_state_dict({"weight": net.weight.detach().clone(), "bias": net.bias / 2})
    assert fingerprint(den) == a


@pytest.mark.parametrize("edit", ["scaled by 1e6", "one value changed"])
def test_coefficients_edited_after_the_fit_are_refused(fitted, tmp_path, edit):
    gmm, c = fitted
    coeffs = c.coeffs * 1e6 if edit == "scaled by 1e6" else c.coeffs.clone()
    if edit != "scaled by 1e6":
        coeffs[c.mask.nonzero()[0, 0], 0] += 0.5
    bad = siia.IIACoefficients(c.sampler, c.sigmas, coeffs, c.mask, c.form, c.r, c.metadata)
    path = save(bad, tmp_path / "bad.safetensors")
    with pytest.raises(IIAFileError, match="not the ones their fit produced") as e:
        load(path)
    assert str(path) in _one_line(e)
    kw = {"steps": 6, "shape": (2, gmm.dim), "dtype": F64}
    for coeffs in (path, bad):
        with pytest.raises(SamplerError, match="not the ones their fit produced"):
            sl.sample(gmm, "iia_ddim", coeffs=coeffs, **kw)


def test_non_finite_coefficients_are_refused(tmp_path):
    gmm = GaussianMixture.default()
    s = build_sigmas(gmm, get_sampler("iia_ddim"), 6)
    d = siia.IIACoefficients.defaults("iia_ddim", s)
    coeffs = d.coeffs.clone()
    coeffs[2, 0] = float("nan")
    path = save(siia.IIACoefficients("iia_ddim", s, coeffs, d.mask), tmp_path / "nan.safetensors")
    with pytest.raises(IIAFileError, match="contain NaN or Inf") as e:
        load(path)
    _one_line(e)


def test_sharded_replicas_have_their_models_fingerprint(fitted):
    from samplerlab.samplers.sharding import ShardedDenoiser

    gmm, c = fitted
    sharded = ShardedDenoiser([gmm, gmm], ["cpu", "cpu"])
    try:
        assert fingerprint(sharded) == fingerprint(gmm)
        x = sl.sample(sharded, "iia_ddim", steps=6, shape=(4, gmm.dim), dtype=F64, coeffs=c).x
        ref = sl.sample(gmm, "iia_ddim", steps=6, shape=(4, gmm.dim), dtype=F64, coeffs=c).x
        torch.testing.assert_close(x, ref)
    finally:
        sharded.close()
