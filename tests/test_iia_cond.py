"""IIA and calibration fitted under conditioning: (noise, condition) pairs per fitting sample.

On the class-conditional Gaussian mixture: the fit does not depend on the batch size or on
the shards, each fitting sample is paired with its own condition row, a one-class fit is the
fit on that class's Gaussian, and the files record (and sampling checks) the guidance.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import samplerlab as sl
from samplerlab.analytic import ClassConditionalMixture
from samplerlab.errors import ConfigError
from samplerlab.fitstage.conditioning import digest
from samplerlab.iia.fitting import finish_fit, greedy_fit, plan_fit
from samplerlab.samplers import get_sampler
from samplerlab.samplers.conditioning import condition
from samplerlab.samplers.iia import IIACoefficients, fit_shard

F64 = torch.float64
NULL = torch.tensor([ClassConditionalMixture.NULL])
LABELS = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0])


@pytest.fixture(scope="module")
def cmm() -> ClassConditionalMixture:
    return ClassConditionalMixture.random(dim=3, components=3, spread=1.5, seed=7)


KW = {"steps": 6, "M": 2, "num_samples": 8, "cond": LABELS, "guidance": 2.5, "uncond": NULL}


def _same(a, b):
    assert torch.equal(a.coeffs, b.coeffs) and torch.equal(a.mask, b.mask)
    skip = ("fit_seconds", "world_size", "format_version")
    drop = lambda m: {k: v for k, v in m.items() if k not in skip}
    assert drop(a.metadata) == drop(b.metadata)


def test_guided_fit_is_independent_of_batch_size(cmm):
    a = sl.iia.fit(cmm, "iia_edm", batch_size=3, progress=False, **KW)
    b = sl.iia.fit_coefficients(cmm, "iia_edm", batch_size=8, **KW)
    _same(a, b)
    m = a.metadata
    assert m["guidance_scale"] == 2.5 and m["guidance_interval"] is None
    assert m["cond"] == digest(LABELS, "cond", 8)
    assert m["cond"]["shape"] == [8] and m["cond"]["dtype"] == "int64"
    assert m["uncond"] == digest(NULL.expand(8), "uncond", 8) and m["uncond"]["shape"] == [8]
    # The conditioning reached the fit: another scale, or none, fits other scalars.
    other = sl.iia.fit_coefficients(cmm, "iia_edm", **{**KW, "guidance": 1.5})
    plain = sl.iia.fit_coefficients(cmm, "iia_edm", steps=6, M=2, num_samples=8)
    assert not torch.equal(other.coeffs, a.coeffs) and not torch.equal(plain.coeffs, a.coeffs)
    assert "cond" not in plain.metadata and "guidance_interval" not in plain.metadata


def test_two_threaded_shards_equal_one_fit(cmm):
    one = sl.iia.fit_coefficients(cmm, "iia_dpmpp_2m", batch_size=2, **KW)
    barrier, parts, out = threading.Barrier(2), {}, {}

    def run(rank):
        def all_reduce(t):
            parts[rank] = t.clone()
            barrier.wait()
            total = parts[0] + parts[1]
            barrier.wait()
            return t.copy_(total)

        out[rank] = sl.iia.fit_coefficients(
            cmm, "iia_dpmpp_2m", all_reduce=all_reduce, indices=range(rank, 8, 2),
            world_size=1, batch_size=2, **KW,
        )  # fmt: skip

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _same(out[0], one)
    _same(out[1], one)


def test_each_fitting_sample_keeps_its_condition_row(cmm):
    # The greedy fit's states are the IIA sampler's own: fitting on shuffled batches, then
    # sampling every fitting noise with its label in one batch, lands on the same states.
    plan = plan_fit(cmm, "iia_edm", **KW)
    g = fit_shard(greedy_fit(cmm, "iia_edm", plan), [5, 2, 7, 0, 1, 3, 4, 6], batch_size=3)
    coeffs = finish_fit(cmm, "iia_edm", plan, g, 0.0, 1)
    x0 = g.initial(list(range(8)))
    model = condition(cmm, 8, cond=LABELS, guidance=2.5, uncond=NULL)
    x = get_sampler("iia_edm")(model, x0, plan.sigmas, noise=None, coeffs=coeffs)
    states = torch.stack([g._state[k] for k in range(8)])
    torch.testing.assert_close(x, states, rtol=1e-12, atol=1e-12)


def test_one_class_fit_is_the_fit_on_that_class(cmm):
    # Conditional on class 1 (one row for every sample) the model is that class's Gaussian.
    kw = {"steps": 6, "M": 2, "num_samples": 5}
    ours = sl.iia.fit_coefficients(cmm, "iia_ddim", cond=torch.tensor([1]), **kw)
    ref = sl.iia.fit_coefficients(cmm.component(1), "iia_ddim", **kw)
    assert ours.mask.any() and torch.equal(ours.mask, ref.mask)
    torch.testing.assert_close(ours.coeffs, ref.coeffs, rtol=1e-9, atol=1e-12)
    # guidance=1 is conditional fitting (one row per sample), recorded as scale 1.
    one = sl.iia.fit_coefficients(cmm, "iia_ddim", cond=torch.tensor([1]), guidance=1, **kw)
    assert torch.equal(one.coeffs, ours.coeffs) and one.metadata["guidance_scale"] == 1.0
    assert ours.metadata["cond"] == digest(torch.ones(5, dtype=torch.long), "c", 5)


def test_guided_form_takes_guidance(cmm):
    c = sl.iia.fit_coefficients(cmm, "iia_ddim", form="guided", **KW)
    assert c.form == "guided" and c.mask.all() and c.metadata["guidance_scale"] == 2.5
    same = sl.iia.fit_coefficients(cmm, "iia_ddim", form="guided", guidance_scale=2.5, **KW)
    assert torch.equal(same.coeffs, c.coeffs)


def test_bad_conditioning_is_one_line(cmm):
    base = {"steps": 4, "M": 2, "num_samples": 8}
    cases = [
        ({"guidance": 2.0}, "guidance= needs cond="),
        ({"uncond": NULL}, "uncond= needs cond="),
        ({"guidance_interval": (0.1, 1.0)}, "guidance_interval= needs cond="),
        ({"cond": LABELS[:5]}, r"cond has 5 rows; it needs num_samples=8"),
        ({"cond": LABELS, "guidance": torch.ones(8), "uncond": NULL}, "one number for a fit"),
        ({"cond": LABELS, "guidance": 2.0, "uncond": NULL, "guidance_scale": 3.0},
         "guidance_scale=3.0 with cond="),
        ({"cond": LABELS, "form": "guided"}, "form='guided'"),
        ({"cond": LABELS, "uncond": LABELS[:3], "guidance": 2.0}, "uncond has 3 rows"),
    ]  # fmt: skip
    for extra, match in cases:
        with pytest.raises(ConfigError, match=match):
            sl.iia.fit_coefficients(cmm, "iia_ddim", **{**base, **extra})
    with pytest.raises(sl.SamplerError, match="guidance= needs uncond="):
        sl.iia.fit_coefficients(cmm, "iia_ddim", cond=LABELS, guidance=2.0, **base)
    with pytest.raises(ConfigError, match="guidance= needs cond="):
        sl.calibrate.fit(cmm, "ddim", steps=4, num_samples=8, guidance=2.0, progress=False)


def _no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_file_records_the_conditioning_and_sampling_checks_it(cmm, tmp_path):
    kw = {**KW, "guidance_interval": (0.2, 5.0)}
    c = sl.iia.fit_coefficients(cmm, "iia_dpmpp_2m", **kw)
    path = sl.iia.save(c, tmp_path / "c.safetensors")
    loaded = sl.iia.load(path, denoiser=cmm)
    _same(loaded, c)
    assert loaded.metadata["guidance_interval"] == [0.2, 5.0]
    s = {"steps": 6, "shape": (8, 3), "cond": LABELS, "uncond": NULL, "dtype": F64}
    run = lambda **k: sl.sample(cmm, "iia_dpmpp_2m", coeffs=str(path), **{**s, **k})
    _no_warning(lambda: run(guidance=2.5, guidance_interval=(0.2, 5.0)))
    with pytest.warns(UserWarning, match=r"c\.safetensors: fitted for guidance 2\.5 on sigma"):
        run(guidance=1.5, guidance_interval=(0.2, 5.0))
    with pytest.warns(UserWarning, match=r"samples with guidance 2\.5 on sigma in \(0\.1, 5\]"):
        run(guidance=2.5, guidance_interval=(0.1, 5.0))
    with pytest.warns(UserWarning, match="samples with no guidance"):
        sl.sample(cmm, "iia_dpmpp_2m", steps=6, shape=(8, 3), coeffs=loaded)


def test_old_files_are_unconditional(cmm, tmp_path):
    # A file without the conditioning fields (an unconditional fit) loads and samples as
    # before; only a guided call says that it was not fitted for guidance.
    plain = sl.iia.fit_coefficients(cmm, "iia_ddim", steps=5, M=2, num_samples=4)
    path = sl.iia.save(plain, tmp_path / "old.safetensors")
    loaded = sl.iia.load(path, denoiser=cmm)
    assert "cond" not in loaded.metadata and loaded.metadata["guidance_scale"] is None
    _no_warning(lambda: sl.sample(cmm, "iia_ddim", steps=5, shape=(4, 3), coeffs=loaded))
    with pytest.warns(UserWarning, match="fitted for no guidance .* samples with guidance 3"):
        sl.sample(cmm, "iia_ddim", steps=5, shape=(4, 3), coeffs=loaded, cond=LABELS[:4],
                  guidance=3.0, uncond=NULL)  # fmt: skip
    # Coefficients built by hand carry no metadata: nothing to compare for conditional use.
    hand = IIACoefficients.defaults("iia_ddim", plain.sigmas)
    _no_warning(lambda: sl.sample(cmm, "iia_ddim", steps=5, shape=(4, 3), coeffs=hand,
                                  cond=LABELS[:4]))  # fmt: skip


def test_calibration_under_guidance(cmm, tmp_path):
    kw = {"steps": 4, "num_samples": 6, "iterations": 2, "teacher_steps": 20, "progress": False,
          "cond": LABELS[:6], "guidance": 2.0, "uncond": NULL}  # fmt: skip
    a = sl.calibrate.fit(cmm, "dpmpp_2m", batch_size=2, **kw)
    b = sl.calibrate.fit(cmm, "dpmpp_2m", batch_size=6, **kw)
    assert torch.equal(a.sigmas, b.sigmas) and a.metadata["loss"] == b.metadata["loss"]
    assert a.metadata["trial_loss"] == b.metadata["trial_loss"]
    plain = {k: v for k, v in kw.items() if k not in ("cond", "guidance", "uncond")}
    u = sl.calibrate.fit(cmm, "dpmpp_2m", batch_size=6, **plain)
    assert u.metadata["loss"] != a.metadata["loss"] and "cond" not in u.metadata
    path = sl.calibrate.save(a, tmp_path / "cal.safetensors")
    m = sl.calibrate.load(path, denoiser=cmm).metadata
    assert m["guidance_scale"] == 2.0 and m["cond"] == digest(LABELS[:6], "c", 6)
    s = {"steps": 4, "shape": (6, 3), "cond": LABELS[:6], "uncond": NULL}
    _no_warning(lambda: sl.sample(cmm, "dpmpp_2m", calibration=str(path), guidance=2.0, **s))
    with pytest.warns(UserWarning, match=r"cal\.safetensors: fitted for guidance 2, .* 4"):
        sl.sample(cmm, "dpmpp_2m", calibration=str(path), guidance=4.0, **s)
    # IIA fitted on the grid: at the grid's guidance quietly, at another one with a warning.
    iia_kw = {"steps": 4, "M": 2, "num_samples": 6, "cond": LABELS[:6], "uncond": NULL}
    _no_warning(
        lambda: sl.iia.fit_coefficients(cmm, "iia_dpmpp_2m", calibration=a, guidance=2.0, **iia_kw)
    )
    with pytest.warns(UserWarning, match=r"cal\.safetensors: fitted for guidance 2, .* 3"):
        sl.iia.fit_coefficients(cmm, "iia_dpmpp_2m", calibration=str(path), guidance=3.0, **iia_kw)


def _fake_checkpoint(path):
    """A stand-in for ``load_checkpoint``: a class-conditional module and its config."""
    import types

    m = ClassConditionalMixture.random(dim=3, components=3, spread=1.5, seed=7)
    return types.SimpleNamespace(denoiser=m, num_classes=3, null_label=NULL), {}


def test_cli_fits_class_labels_and_guidance(tmp_path, capsys, monkeypatch, cmm):
    from samplerlab.analytic import ClassConditionalMixture as CMM
    from samplerlab.cli import main
    from samplerlab.commands import iia_fit

    base = ["iia-fit", "--sampler", "iia_ddim", "--steps", "4", "--M", "2", "--samples", "6"]
    out = tmp_path / "c.safetensors"
    cmd = [
        *base,
        "--model",
        "gmm-cond",
        "--classes",
        "balanced",
        "--guidance",
        "2",
        "--no-progress",
    ]
    assert main([*cmd, "--out", str(out)]) == 0
    assert "conditional, guidance 2" in capsys.readouterr().out
    model = CMM.default()
    c = sl.iia.load(out, denoiser=model)
    labels = torch.arange(6) % 6  # the default mixture has 6 classes
    assert c.metadata["guidance_scale"] == 2.0 and c.metadata["cond"] == digest(labels, "c", 6)
    ref = sl.iia.fit(model, "iia_ddim", steps=4, M=2, num_samples=6, cond=labels, guidance=2.0,
                     uncond=NULL, progress=False)  # fmt: skip
    assert torch.equal(c.coeffs, ref.coeffs)
    # --labels FILE: the same labels give the same file contents.
    (tmp_path / "labels.txt").write_text("0 1 2\n3,4,5\n")
    out2 = tmp_path / "c2.safetensors"
    cmd2 = [
        *base,
        "--model",
        "gmm-cond",
        "--labels",
        str(tmp_path / "labels.txt"),
        "--guidance",
        "2",
    ]
    assert main([*cmd2, "--no-progress", "--out", str(out2)]) == 0
    assert torch.equal(sl.iia.load(out2).coeffs, c.coeffs)
    # A training checkpoint: its number of classes and null label.
    monkeypatch.setattr(iia_fit, "CHECKPOINT_MODULE_LOADER", "test_iia_cond:_fake_checkpoint")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    out3 = tmp_path / "c3.safetensors"
    cmd3 = [*base, "--model", str(tmp_path / "model.ckpt"), "--classes", "balanced"]
    assert main([*cmd3, "--guidance", "2.5", "--no-progress", "--out", str(out3)]) == 0
    m3 = sl.iia.load(out3).metadata
    assert m3["cond"] == digest(torch.arange(6) % 3, "c", 6) and m3["guidance_scale"] == 2.5
    capsys.readouterr()
    bad = [
        ["--model", "gmm-cond", "--guidance", "2"],
        ["--model", "gmm-cond", "--classes", "nope"],
        ["--model", "gmm", "--classes", "balanced"],
        ["--model", "gmm-cond", "--labels", str(tmp_path / "missing.txt")],
        ["--model", "gmm-cond", "--classes", "9", "--samples", "12"],
    ]
    for extra in bad:
        assert main([*base, *extra, "--no-progress", "--out", str(tmp_path / "bad")]) == 2
        assert not (tmp_path / "bad").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(bad) and all(
        line.startswith("samplerlab iia-fit: error:") for line in err
    )


def test_calibrate_cli_takes_class_labels(tmp_path, capsys):
    from samplerlab.analytic import ClassConditionalMixture as CMM
    from samplerlab.cli import main

    out = tmp_path / "cal.safetensors"
    cmd = ["calibrate", "--model", "gmm-cond", "--sampler", "dpmpp_2m", "--steps", "4",
           "--samples", "4", "--iterations", "1", "--teacher-steps", "10", "--classes", "balanced",
           "--guidance", "3", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(cmd) == 0
    assert "conditional, guidance 3" in capsys.readouterr().out
    m = sl.calibrate.load(out, denoiser=CMM.default()).metadata
    assert m["guidance_scale"] == 3.0 and m["cond"] == digest(torch.arange(4), "c", 4)
    assert m["uncond"] == digest(NULL, "u", 4)
