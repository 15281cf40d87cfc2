"""The calibration fit without Lightning (``samplerlab.calibrate.fit_calibration``) is the
fit stage's math: the same grid and metadata, on one process or on threaded shards."""

from __future__ import annotations

import threading

import pytest
import torch

from samplerlab import calibrate
from samplerlab.analytic import ClassConditionalMixture, GaussianMixture
from samplerlab.errors import ConfigError

FAST = {"steps": 4, "num_samples": 5, "iterations": 2, "teacher_steps": 20}
NULL = torch.tensor([ClassConditionalMixture.NULL])


def _same(a, b):
    assert torch.equal(a.sigmas, b.sigmas) and a.options == b.options
    skip = ("fit_seconds", "world_size")
    drop = lambda m: {k: v for k, v in m.items() if k not in skip}
    assert drop(a.metadata) == drop(b.metadata)


@pytest.mark.parametrize("cond", [False, True])
def test_fit_calibration_equals_fit(cond):
    if cond:
        model = ClassConditionalMixture.random(dim=3, components=3, spread=1.5, seed=7)
        kw = {**FAST, "cond": torch.tensor([0, 1, 2, 1, 0]), "guidance": 2.0, "uncond": NULL}
    else:
        model, kw = GaussianMixture.default(dim=4, components=3, seed=1), FAST
    one = calibrate.fit(model, "dpmpp_2m", batch_size=2, progress=False, **kw)
    pure = calibrate.fit_calibration(model, "dpmpp_2m", batch_size=5, **kw)
    _same(pure, one)
    assert pure.metadata["world_size"] == 1
    barrier, parts, out = threading.Barrier(2), {}, {}

    def run(rank):
        def all_reduce(t):
            parts[rank] = t.clone()
            barrier.wait()
            total = parts[0] + parts[1]
            barrier.wait()
            return total

        out[rank] = calibrate.fit_calibration(
            model, "dpmpp_2m", all_reduce=all_reduce, indices=range(rank, 5, 2), world_size=2,
            batch_size=2, **kw,
        )  # fmt: skip

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _same(out[0], one)
    _same(out[1], one)
    assert out[0].metadata["world_size"] == 2


def test_fit_calibration_checks_indices():
    gmm = GaussianMixture.default(dim=4, components=3, seed=1)
    with pytest.raises(ConfigError, match=r"indices must lie in \[0, 5\)"):
        calibrate.fit_calibration(gmm, "dpmpp_2m", indices=[0, 7], **FAST)


def test_fit_calibration_needs_no_lightning():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['lightning'] = None\n"
        "from samplerlab.analytic import GaussianMixture\nfrom samplerlab import calibrate\n"
        "c = calibrate.fit_calibration(GaussianMixture.default(), 'ddim', steps=3,"
        " num_samples=2, iterations=1, teacher_steps=5)\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
