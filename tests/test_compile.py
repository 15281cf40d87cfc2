"""Denoiser wrappers can compile the network call; samplers give the same samples."""

from __future__ import annotations

import pytest
import torch

import samplerlab as sl
from samplerlab.samplers.denoisers import EDMDenoiser, VPDenoiser, maybe_compile
from samplerlab.samplers.schedules import DiscreteVP, betas_for

F64 = torch.float64
# Dynamo tracing with the eager backend: checks the plumbing without a C++ toolchain.
EAGER = {"backend": "eager", "fullgraph": True}


def _net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * (1 + 0.001 * t.to(x.dtype)[:, None])


def test_maybe_compile_passes_through_when_off():
    assert maybe_compile(_net, False) is _net


@pytest.mark.parametrize("kind", ["vp", "edm"])
def test_compiled_denoiser_gives_the_same_samples(kind):
    torch._dynamo.reset()
    if kind == "vp":
        vp = DiscreteVP.from_betas(betas_for("linear", 1000))
        plain = VPDenoiser(_net, vp, data_shape=(3,))
        compiled = VPDenoiser(_net, vp, data_shape=(3,), compile=EAGER)
    else:
        plain = EDMDenoiser(_net, data_shape=(3,))
        compiled = EDMDenoiser(_net, data_shape=(3,), compile=EAGER)
    for name in ("dpmpp_2m", "ddpm", "edm_heun"):
        a = sl.sample(plain, name, steps=6, shape=(4, 3), dtype=F64).x
        b = sl.sample(compiled, name, steps=6, shape=(4, 3), dtype=F64).x
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_trained_module_denoiser_can_be_compiled():
    """``DiffusionModule.denoiser_for(compile=...)`` (``eval.compile``) gives the same samples."""
    from samplerlab.trainer.config import load_config
    from samplerlab.trainer.module import build_module

    torch._dynamo.reset()
    module = build_module(load_config("test"), (2,), 0)
    plain = module.denoiser_for()
    compiled = module.denoiser_for(compile=EAGER)
    for name in ("ddim", "dpm_solver_2"):
        a = sl.sample(plain, name, steps=4, shape=(3, 2)).x
        b = sl.sample(compiled, name, steps=4, shape=(3, 2)).x
        torch.testing.assert_close(a, b)
