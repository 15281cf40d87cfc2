"""IIA fitting on two DDP processes (CPU, gloo) gives the coefficients of one process."""

from __future__ import annotations

import pytest
import torch

from samplerlab.analytic import GaussianMixture
from samplerlab.iia import IIACoefficients, fit


def _fit_spawned(*args, **kwargs):
    """``fit`` on spawned gloo processes. A spawned child that aborts while it exits
    ("terminate called without an active exception", seen once in ~10 suite runs) is a
    teardown race in the spawn/gloo stack, not a fitting result: one retry, then fail."""
    from torch.multiprocessing.spawn import ProcessExitedException

    try:
        return fit(*args, **kwargs)
    except ProcessExitedException as e:
        if "SIGABRT" not in str(e):
            raise
        return fit(*args, **kwargs)


@pytest.mark.parametrize("name", ["iia_edm"])
def test_two_processes_match_one(name):
    gmm = GaussianMixture.default(dim=4, components=3, seed=1)
    kw = {"steps": 6, "M": 2, "num_samples": 7, "batch_size": 2, "progress": False}
    one = fit(gmm, name, **kw)
    two = _fit_spawned(gmm, name, devices=2, strategy="ddp_spawn", **kw)
    assert two.metadata["world_size"] == 2 and one.metadata["world_size"] == 1
    assert two.mask.any()
    torch.testing.assert_close(two.coeffs, one.coeffs, rtol=1e-8, atol=1e-12)
    # Not the defaults: something was actually fitted.
    base = IIACoefficients.defaults(name, one.sigmas, one.form, one.r)
    assert not torch.allclose(one.coeffs[one.mask], base.coeffs[one.mask])
