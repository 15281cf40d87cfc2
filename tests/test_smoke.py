import torch

import samplerlab as sl


def test_every_sampler_runs(gmm):
    for name in sl.list_samplers():
        res = sl.sample(gmm, name, steps=4, shape=(3, gmm.dim), dtype=torch.float64)
        assert res.x.shape == (3, gmm.dim)
        assert torch.isfinite(res.x).all()
