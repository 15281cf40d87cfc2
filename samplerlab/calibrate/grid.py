"""Calibrated sigma grids: the parameterisation that is fitted, its starting grids, and the result.

A grid ``sigma_0 > sigma_1 > ... > sigma_{N-1} > sigma_N = 0`` keeps its first point (the
noise level of the initial state) and its final 0 (the denoise step) fixed; the ``N - 1``
points in between are free. They are written through ``N - 1`` unconstrained numbers
``theta = (b, a_1, ..., a_{N-2})`` (the parameterisation of LD3, Tong et al., ICLR 2025,
Sec. 3: a softmax of increments between two endpoints, here with the lower endpoint learned
too):

* the last positive point ``sigma_{N-1} = exp(log lo + (log sigma_0 - log lo) sigmoid(b))``
  lies strictly between the model's smallest noise level ``lo`` and ``sigma_0``;
* the log-sigma increments between ``sigma_0`` and ``sigma_{N-1}`` are the fractions
  ``softmax(a_1, ..., a_{N-2}, 0)`` of ``log sigma_0 - log sigma_{N-1}``.

Every ``theta`` therefore gives a strictly decreasing grid inside the model's range, so an
unconstrained optimiser can move freely (``theta`` is clamped to ``[-LIMIT, LIMIT]`` so that
no increment underflows to a repeated point).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import CalibrationError
from ..samplers.api import model_sigma_range
from ..samplers.core import SamplerError, check_grid, describe
from ..samplers.fingerprint import find_module
from ..samplers.iia import BASES
from ..samplers.registry import SamplerSpec, get_sampler
from ..samplers.schedules import get_sigmas

LIMIT = 15.0  # |theta| bound: softmax fractions >= e^-30 (distinct float64 points)
_EDGE = 1e-4  # initial sigmoid kept inside (EDGE, 1 - EDGE): b stays finite


def base_sampler(name: str) -> str:
    """The sampler whose grid ``name`` runs on: an IIA sampler's base, else ``name``."""
    return BASES.get(name, name)


class GridParam:
    """The map ``theta [N-1] -> sigmas [N+1]`` (see the module docstring) and its inverse."""

    def __init__(self, sigma_0: float, lo: float, steps: int) -> None:
        if steps < 2:
            raise CalibrationError(
                f"a grid of {steps} step has no free point to calibrate (steps must be >= 2)"
            )
        if not 0 < lo < sigma_0:
            raise CalibrationError(f"need 0 < sigma_min < sigma_0, got {lo}, {sigma_0}")
        self.sigma_0, self.lo, self.steps = float(sigma_0), float(lo), int(steps)

    @property
    def size(self) -> int:
        return self.steps - 1

    def sigmas(self, theta: Tensor) -> Tensor:
        """Grids for ``theta`` of shape ``[P]`` -> ``[N+1]`` or ``[P, K]`` -> ``[N+1, K]``."""
        th = torch.as_tensor(theta, dtype=torch.float64)
        cols = th if th.ndim == 2 else th[:, None]
        top, lo = math.log(self.sigma_0), math.log(self.lo)
        # Lower endpoint: a sigmoid between the model's sigma_min and sigma_0.
        u_end = lo + (top - lo) * torch.sigmoid(cols[0])
        # Interior points: cumulative softmax fractions of the log-sigma span.
        logits = torch.cat([cols[1:], cols.new_zeros(1, cols.shape[1])])
        frac = torch.softmax(logits, dim=0).cumsum(0)[:-1]
        u = top - (top - u_end)[None] * frac
        pos = torch.cat([cols.new_full((1, cols.shape[1]), top), u, u_end[None]]).exp()
        out = torch.cat([pos, cols.new_zeros(1, cols.shape[1])])
        out[0] = self.sigma_0  # exactly, not exp(log(.))
        return out if th.ndim == 2 else out[:, 0]

    def theta(self, sigmas: Tensor) -> Tensor:
        """The parameters of a grid with this ``sigma_0``, ``N`` and a final 0 (inverse map)."""
        s = check_grid(sigmas)
        if s.ndim != 1 or s.shape[0] != self.steps + 1 or float(s[-1]) != 0.0:
            raise CalibrationError(
                f"a calibrated grid needs [{self.steps + 1}] sigmas ending in 0, got "
                f"{tuple(s.shape)} ending in {float(s[-1]):g}"
            )
        top, lo = math.log(self.sigma_0), math.log(self.lo)
        u_end = math.log(max(float(s[-2]), self.lo))
        p = min(max((u_end - lo) / (top - lo), _EDGE), 1 - _EDGE)
        b = math.log(p / (1 - p))
        u_end = lo + (top - lo) * p
        u = torch.clamp(s[:-1].log(), min=u_end, max=top)
        u[0], u[-1] = top, u_end
        inc = (u[:-1] - u[1:]).clamp_min(1e-12 * (top - u_end))
        a = inc.log() - inc[-1].log()
        return (
            torch.cat([torch.tensor([b], dtype=torch.float64), a[:-1]])
            .clamp(-LIMIT, LIMIT)
            .to(torch.float64)
        )


def working_dtype(denoiser: Any, dtype: torch.dtype) -> torch.dtype:
    """The least precise of ``dtype`` and the floating weights of the network behind
    ``denoiser`` (analytic models have none)."""
    module = find_module(denoiser)
    dtypes = {dtype} | {
        p.dtype
        for p in (module.parameters() if module is not None else ())
        if p.is_floating_point()
    }
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def candidate_grids(denoiser: Any, spec: SamplerSpec, grid_steps: int, default: Tensor) -> Tensor:
    """``[C, N+1]``: the default grid first, then the library's other schedules (same
    ``sigma_0``, ending in 0) as starting points."""
    vp = describe(denoiser).vp
    lo, hi = model_sigma_range(denoiser)
    names = ["karras", "logsnr"] + (["time_uniform", "time_quadratic"] if vp is not None else [])
    grids = [default]
    for name in names:
        for final in ("append", "replace"):
            try:
                g = get_sigmas(name, grid_steps, sigma_min=lo, sigma_max=hi, vp=vp, final=final)
            except SamplerError:
                continue
            same_top = abs(float(g[0]) - float(default[0])) <= 1e-9 * float(default[0])
            if same_top and float(g[-2]) > 0 and not any(torch.equal(g, h) for h in grids):
                grids.append(g)
    return torch.stack(grids)


@dataclass(frozen=True, eq=False)
class Calibration:
    """A sigma grid fitted for one model, sampler and step count.

    Attributes:
        sampler: the sampler the grid was fitted for (IIA samplers run on their base's grid,
            so a grid fitted for ``dpmpp_2m`` also serves ``iia_dpmpp_2m``).
        steps: the user's ``steps`` (as for ``samplerlab.sample``).
        sigmas: ``[N+1]`` float64 grid (grid steps ``N`` = the sampler's plan for ``steps``).
        options: the sampler options the fit used (sampling must use the same).
        metadata: fit settings and results (losses, fitting cost, model fingerprint, ...).
    """

    sampler: str
    steps: int
    sigmas: Tensor
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", check_grid(self.sigmas))
        if self.sigmas.ndim != 1:
            raise CalibrationError("a calibration holds one [N+1] grid")

    def check(self, name: str, steps: int, options: dict[str, Any] | None = None) -> Tensor:
        """The grid for sampling ``name`` at ``steps``; one clear error if it does not fit."""
        if base_sampler(name) != base_sampler(self.sampler):
            raise CalibrationError(
                f"calibration was fitted for sampler '{self.sampler}' at steps={self.steps}, "
                f"not '{name}'; calibrate with `samplerlab calibrate --sampler {name} "
                f"--steps {steps}`"
            )
        if steps != self.steps:
            raise CalibrationError(
                f"calibration was fitted for '{self.sampler}' at steps={self.steps}, not "
                f"steps={steps}; calibrate with `samplerlab calibrate --sampler {name} "
                f"--steps {steps}`"
            )
        fitted, asked = _effective(name, self.options), _effective(name, options or {})
        for k in sorted(set(fitted) | set(asked)):
            if fitted.get(k) != asked.get(k):
                raise CalibrationError(
                    f"calibration was fitted with {k}={fitted.get(k)!r}, not {k}={asked.get(k)!r}"
                )
        return self.sigmas.clone()

    def grid_for(
        self, name: str, steps: int, options: dict[str, Any] | None, denoiser: Any = None
    ) -> Tensor:
        """The hook ``samplerlab.sample(..., calibration=c)`` calls: :meth:`check` (an
        in-memory calibration was fitted in this process; files check the model on load)."""
        return self.check(name, steps, options)


def _effective(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Sampler options with the sampler's defaults filled in (``coeffs`` excluded): what a
    run with ``options`` actually uses."""
    spec = get_sampler(base_sampler(name))
    params = inspect.signature(spec.fn).parameters
    out = {
        k: p.default
        for k, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("noise", "coeffs")
    }
    out.update({k: v for k, v in {**spec.defaults, **options}.items() if k != "coeffs"})
    return out
