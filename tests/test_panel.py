"""The analytic panel: reproducible models in both parameterisations, holdout kept apart."""

import pytest
import torch

from samplerlab.analytic import HOLDOUT, PANEL, panel
from samplerlab.samplers.core import SamplerError


def test_panel_and_holdout_are_disjoint_and_reproducible():
    assert not set(PANEL) & set(HOLDOUT)
    a, b = panel("all"), panel("all")
    for k in a:
        assert torch.equal(a[k].means, b[k].means) and torch.equal(a[k].stds, b[k].stds)


@pytest.mark.parametrize("name", list(PANEL) + list(HOLDOUT))
def test_panel_model_parameterisation(name):
    m = panel(name)[name]
    assert (m.vp is None) == name.startswith(("edm", "holdout-edm"))
    assert m.prior_std == (0.0 if m.vp is None else 1.0)
    x = torch.randn(5, m.dim, dtype=torch.float64)
    # D(x, sigma -> 0) -> x at a point of positive density; D(x, large sigma) -> the mean.
    assert torch.allclose(m(x, torch.full((5,), 1e-9, dtype=torch.float64)), x, atol=1e-6)
    mean = (m.weights[:, None] * m.means).sum(0)
    far = m(x, torch.full((5,), 1e6, dtype=torch.float64))
    assert torch.allclose(far, mean.expand_as(far), atol=1e-4)


def test_unknown_panel_model_is_one_line():
    with pytest.raises(SamplerError, match="unknown panel model"):
        panel("nope")
