"""Calibration on two DDP processes (CPU, gloo) gives the grid of one process."""

from __future__ import annotations

import torch

from samplerlab import calibrate
from samplerlab.analytic import GaussianMixture


def test_two_processes_match_one():
    gmm = GaussianMixture.default(dim=4, components=3, seed=1)
    kw = {"steps": 5, "num_samples": 7, "batch_size": 2, "iterations": 3, "teacher_steps": 30,
          "progress": False}  # fmt: skip
    one = calibrate.fit(gmm, "dpmpp_2m", **kw)
    two = calibrate.fit(gmm, "dpmpp_2m", devices=2, strategy="ddp_spawn", **kw)
    assert two.metadata["world_size"] == 2 and one.metadata["world_size"] == 1
    torch.testing.assert_close(two.sigmas, one.sigmas, rtol=1e-10, atol=0)
    assert (
        two.metadata["loss"] == one.metadata["loss"]
        or abs(two.metadata["loss"] - one.metadata["loss"]) <= 1e-12 * one.metadata["loss"]
    )
    assert one.metadata["loss"] < one.metadata["default_loss"]
