from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiny tensors: intra-op threads only add contention on small shared CI machines.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test, restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def gaussian():
    from samplerlab.analytic import Gaussian

    mu = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    s = torch.tensor([0.2, 1.0, 0.5, 0.05], dtype=torch.float64)
    return Gaussian(mu, s)


@pytest.fixture
def gmm():
    from samplerlab.analytic import GaussianMixture

    return GaussianMixture.default(dim=4, components=3, seed=1)
