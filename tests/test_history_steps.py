"""Every multistep solver with a ``history_step``: a loop of history steps (the step
convention of samplerlab.samplers.spec) is its serial sampler, exactly (float64)."""

from __future__ import annotations

import pytest
import torch

import samplerlab.samplers as ss
from samplerlab.samplers.registry import SAMPLERS

WITH_HISTORY = [n for n, s in SAMPLERS.items() if s.multistep and s.history_step is not None]


def test_every_multistep_contender_has_a_history_step():
    # The deterministic multistep contenders can all serve ParaDiGMS / pipelined SRDS.
    assert {"dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm", "lms"} <= set(WITH_HISTORY)


def _loop(spec, den, x, sig):
    """The solver driven step by step: D once per state, the history cut by history_len."""
    inner = get_inner(spec.name)
    N = len(sig) - 1
    hist: list = []
    for j in range(N):
        s = sig[j].expand(x.shape[0])
        sn = sig[j + 1].expand(x.shape[0])
        D = den(x, s)
        n = int(inner.history_len(torch.tensor([j]), N))
        x_next = inner.step(x, s, sn, D, hist[:n])
        hist = [(x, D, s), *hist][: inner.history]
        x = x_next
    return x


def get_inner(name):
    resolve = SAMPLERS["paradigms"].resolve_inner
    return resolve({"inner": name})


@pytest.mark.parametrize("name", WITH_HISTORY)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 16])
def test_history_step_loop_is_the_serial_sampler(gmm, name, steps):
    spec = SAMPLERS[name]
    g = torch.Generator().manual_seed(steps)
    for sig in (
        ss.get_sigmas("karras", steps, sigma_min=gmm.sigma_min, sigma_max=gmm.sigma_max),
        torch.linspace(gmm.sigma_max, 0.05, steps + 1, dtype=torch.float64),  # ends above 0
    ):
        x = torch.randn(5, gmm.dim, generator=g, dtype=torch.float64) * float(sig[0])
        ref = spec(gmm, x.clone(), sig)
        out = _loop(spec, gmm, x.clone(), sig)
        assert torch.allclose(out, ref, atol=1e-12, rtol=1e-12), (name, steps)
    # The history matters: DDIM on the same grid is measurably different (can fail).
    if steps >= 7:
        assert (ss.sample_ddim(gmm, x, sig) - ref).abs().max() > 1e-6


def test_lower_order_final_is_the_serial_default(gmm):
    # dpmpp_3m and deis lower the order at the grid's end by default: their history steps
    # follow (history_len), and a run without that cap differs from the serial sampler.
    inner = get_inner("dpmpp_3m")
    assert inner.lowers_final_order and not get_inner("unipc").lowers_final_order
    assert inner.history_len(torch.arange(6), 6).tolist() == [0, 1, 2, 2, 1, 0]
    assert get_inner("lms").history_len(torch.arange(6), 6).tolist() == [0, 1, 2, 3, 3, 3]
