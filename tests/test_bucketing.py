"""samplerlab.samplers.bucketing.Bucketed: padded calls return the rows asked for, exactly."""

from __future__ import annotations

import torch

from samplerlab.samplers.bucketing import Bucketed
from samplerlab.samplers.core import describe, take_rows
from samplerlab.samplers.ddim import sample_euler
from samplerlab.samplers.denoisers import from_eps
from samplerlab.samplers.schedules import betas_for


def test_bucketed_pads_rows_and_returns_the_rows_asked_for():
    seen = []

    def net(x, t):
        seen.append(x.shape[0])
        return x * t[:, None]

    b = Bucketed(net, base=2, cuda_graphs=False)
    x, t = torch.randn(5, 3), torch.rand(5)
    torch.testing.assert_close(b(x, t), x * t[:, None])
    torch.testing.assert_close(b(x[:2], t[:2]), x[:2] * t[:2, None])
    torch.testing.assert_close(b(x[:1], t[:1]), x[:1] * t[:1, None])
    assert seen == [8, 2, 2]


def test_bucketed_denoiser_declares_the_inner_model_and_samples_the_same():
    ac = torch.cumprod(1 - betas_for("linear", 1000), 0).double()
    den = from_eps(lambda x, t: 0.1 * x + 1e-3 * t[:, None], ac)
    b = Bucketed(den, base=4)
    assert describe(b) == describe(den)
    rows = torch.tensor([0, 2])
    assert take_rows(b, rows) is b  # no per-sample state: the same wrapper
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    assert torch.equal(sample_euler(b, x * 5, sigmas), sample_euler(den, x * 5, sigmas))
