"""Test-only views of the parallel samplers: the registry entries called with ``inner=`` a
name, SRDS's serial equivalent and its iterates (Selvam et al. 2024, Alg. 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from samplerlab.samplers.noise import NoiseSource
from samplerlab.samplers.registry import get_sampler
from samplerlab.samplers.srds import SRDS
from samplerlab.samplers.srds_parareal import Parareal, Stopper, run_plain


def sample_srds(denoiser: Any, x: Tensor, sigmas: Tensor, **options: Any) -> Tensor:
    """SRDS as the registry runs it (``inner``: a solver's name)."""
    return get_sampler("srds")(denoiser, x, sigmas, **options)


def sample_paradigms(denoiser: Any, x: Tensor, sigmas: Tensor, **options: Any) -> Tensor:
    """ParaDiGMS as the registry runs it (``inner``: a solver's name)."""
    return get_sampler("paradigms")(denoiser, x, sigmas, **options)


def _plain(
    denoiser: Any,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    inner: str = "ddim",
    inner_options: dict | None = None,
    blocks: int | None = None,
    max_iters: int | None = None,
) -> tuple[Parareal, Stopper]:
    """The parareal state of a non-pipelined SRDS run without early stop."""
    resolve = get_sampler("srds").resolve_inner
    assert resolve is not None
    plain = {"inner": inner, "inner_options": inner_options, "pipelined": False}
    config = SRDS(resolve(plain), blocks, 0.0, max_iters, False, None)
    return config.prepare(denoiser, x, sigmas, noise)


@torch.no_grad()
def srds_iterates(denoiser: Any, x: Tensor, sigmas: Tensor, **options: Any) -> list[Tensor]:
    """The boundary states ``[B+1, batch, ...]`` of every iteration 0..p (non-pipelined, no
    early stop; options as :func:`_plain`). At iteration p the states ``i <= p`` are exact."""
    pr, stopper = _plain(denoiser, x, sigmas, **options)
    record: list[Tensor] = []
    run_plain(pr, stopper, record)
    return record


def serial_blockwise(denoiser: Any, x: Tensor, sigmas: Tensor, **options: Any) -> Tensor:
    """The serial solve SRDS converges to (``samplerlab.samplers.srds``): the plain serial
    N-step run for single-step inner solvers and for multistep ones with a
    ``history_step``; for other multistep solvers the solver run block after block, its
    history restarted at every block start (options as :func:`_plain`, no ``max_iters``)."""
    pr, _ = _plain(denoiser, x, sigmas, **options)
    if pr.carry:
        # The history runs on across the blocks: the plain serial solve.
        return pr.inner.run(pr.den, x, pr.S)
    for i in range(pr.B):
        x = pr.inner.run(pr.den, x, pr.S[i * pr.L : (i + 1) * pr.L + 1], pr.fine_draws(i))
    return x
