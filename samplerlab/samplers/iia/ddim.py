"""IIA-DDIM (Zhang, Niwa & Kleijn, ICLR 2024, eq. 6; eq. 8 for classifier-free guidance).

In EDM coordinates (``x = z / alpha``) the DDIM step is ``x_{i+1} = D_i + sigma_{i+1} e_i``
and dividing eq. 6 by ``alpha_{i+1}`` gives::

    x_{i+1} = DDIM(x_i) + c_0 (D_i - D_{i-1}) + c_1 (e_i - e_{i-1})     (eq. 6, i >= 1)
    x_{i+1} = DDIM(x_i) + c_0 e_i                                        (eq. 8, guided, i >= 0)

with ``c = phi / alpha_{i+1}`` (``phi`` the paper's VP scalars; defaults 0 = DDIM).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core import Denoiser, append_dims, to_d
from ..ddim import sample_ddim
from .form import IIAForm, StepTerms, host


class IIADDIM(IIAForm):
    name, base, variants = "iia_ddim", "ddim", ("default", "guided")
    # DDIM steps in the model's time t (a continuous-time wrapper of the VP table); without
    # one, DDIM in EDM coordinates is Euler in sigma.
    spacing_with_vp, spacing_without_vp = "time", "sigma"

    def num_coefficients(self, form: str = "default", r: int = 1) -> int:
        return 1 if form == "guided" else 2

    def fitted_steps(self, sigmas: Tensor, form: str = "default") -> Tensor:
        n = host(sigmas).shape[0] - 1
        if form == "guided":
            return torch.ones(n, dtype=torch.bool)
        return torch.arange(n) >= 1

    def available_columns(self, i: int, form: str = "default", r: int = 1) -> list[bool]:
        return [form == "guided" or i >= 1] * self.num_coefficients(form, r)

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
        # DDIM step in EDM coordinates: x_{i+1} = D_i + sigma_{i+1} e_i (as sample_ddim
        # computes it: one interpolation between D_i and x_i).
        D = denoiser(x, sigma)
        e = to_d(x, sigma, D)
        base = torch.lerp(D, x, append_dims(sigma_next / sigma, x.ndim))
        if form == "guided":
            # The guided eps prediction itself (eq. 8).
            q: list[Tensor | None] = [e]
        elif history is None:
            q = [None, None]
        else:
            # Differences of the x0 and eps predictions with the previous step (eq. 6).
            q = [D - history[0], e - history[1]]
        return StepTerms(base, base, q, (D, e))

    def fine_reference(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sub_grid: Tensor,
        history: Any = None,
        *,
        warm_start: bool = False,
    ) -> Tensor:
        return sample_ddim(denoiser, x, sub_grid)

    def vp_coefficients(self, coeffs: Tensor, alpha: Tensor) -> Tensor:
        # phi = c alpha_{i+1}.
        return coeffs.clone() * alpha[1:, None]


IIA_DDIM = IIADDIM()
