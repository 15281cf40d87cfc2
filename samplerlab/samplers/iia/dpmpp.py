"""IIA-DPM-Solver++(2M) (Zhang, Niwa & Kleijn, ICLR 2024, eq. 23).

The quantities are the raw state and the raw data prediction; in EDM coordinates
(``z_i = alpha_i x_i``)::

    x_{i+1} = DPM++2M(x_i) + c_0 x_i + c_1 D_i                           (eq. 23, i >= 1)

with ``c_0 = varphi_0 alpha_i / alpha_{i+1}`` and ``c_1 = varphi_1 / alpha_{i+1}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core import Denoiser, Grid
from ..dpm_solver import step_dpmpp_2m
from .form import IIAForm, StepTerms, host


class IIADPMpp2M(IIAForm):
    name, base = "iia_dpmpp_2m", "dpmpp_2m"
    # DPM-Solver++ steps in the model's time t; without a VP table it integrates in
    # lambda = -log sigma.
    spacing_with_vp, spacing_without_vp = "time", "logsnr"

    def num_coefficients(self, form: str = "default", r: int = 1) -> int:
        return 2

    def fitted_steps(self, sigmas: Tensor, form: str = "default") -> Tensor:
        return torch.arange(host(sigmas).shape[0] - 1) >= 1

    def available_columns(self, i: int, form: str = "default", r: int = 1) -> list[bool]:
        return [True] * self.num_coefficients(form, r)

    def step(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigma: Tensor,
        sigma_next: Tensor,
        history: Any,
        *,
        final: bool,
        form: str = "default",
        r: int = 1,
    ) -> StepTerms:
        D = denoiser(x, sigma)
        # DPM-Solver++(2M) step (first order without history: DPM-Solver++-1).
        base, h = step_dpmpp_2m(x, sigma, sigma_next, D, *(history or (None, None)))
        # Raw state and data prediction (eq. 23).
        return StepTerms(base, base, [x, D], (D, h))

    def fine_reference(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sub_grid: Tensor,
        history: Any = None,
        *,
        warm_start: bool = False,
    ) -> Tensor:
        """DPM-Solver++(2M) uses its own fine-step history inside the sub-interval; its
        first sub-step is first order, or, with ``warm_start``, second order using the coarse
        step's previous data prediction ``history`` (the only history outside the interval).
        A step to sigma = 0 always starts cold: its coarse step is first order (no history
        to match), and the coarse previous data prediction, extrapolated over the first fine
        sub-step, makes the reference less accurate than the coarse denoise step itself.
        """
        grid = Grid(sub_grid, x)
        to_zero = bool((grid.host[-1] == 0).all())
        hist = history if warm_start and not to_zero else None
        for i, sigma, sigma_next in grid:
            terms = self.step(denoiser, x, sigma, sigma_next, hist, final=grid.all_final(i))
            x, hist = terms.base, terms.history
        return x

    def vp_coefficients(self, coeffs: Tensor, alpha: Tensor) -> Tensor:
        c = coeffs.clone()
        c[:, 0] = c[:, 0] * alpha[1:] / alpha[:-1]
        c[:, 1] = c[:, 1] * alpha[1:]
        return c


IIA_DPMPP_2M = IIADPMpp2M()
