"""IIA-EDM and BIIA-EDM: IIA for EDM's Heun solver (Zhang, Niwa & Kleijn, ICLR 2024).

Lemma 1 (eq. 17): EDM's Heun step from ``t_i`` to ``t_{i+1}`` (``t = sigma``) is exactly
``x_{i+1} = x_i + (t_{i+1}-t_i)/t_i (x_i - D_i) + (t_{i+1}-t_i)/(2 t_{i+1}) (D_i - D~_{i+1})``,
``D~_{i+1} = D(x~_{i+1}; t_{i+1})`` at the Euler predictor ``x~_{i+1}``.

IIA-EDM, Algorithm 1 (eqs. 18-19), ``2 (r + 1)`` scalars per step::

    x_{i+1} = x_i + sum_{k=0..r} b^eps_ik (x_{i-k} - D_{i-k}) + b^D_ik (D_{i-k} - D~_{i-k+1})

BIIA-EDM, Algorithm 2 (eq. 13), ``r + 1`` scalars per step, with the Heun average slope
``Delta_j = (d_j + d'_{j+1}) / 2`` of step ``j``::

    x_{i+1} = x_i + sum_{k=0..r} gamma_ik (t_{i+1} - t_i) Delta_{i-k}

Both fit steps ``1 .. N-2``: step 0 is plain Heun (no history), the last step to sigma = 0
plain Euler (no D at sigma = 0). The defaults ``b^eps_i0 = (t_{i+1}-t_i)/t_i``,
``b^D_i0 = (t_{i+1}-t_i)/(2 t_{i+1})`` (Lemma 1) and ``gamma_i0 = 1`` (Algorithm 2, with the
step size inside ``Delta``) reproduce the Heun step. The fine reference is ``M`` Heun
sub-steps uniform in sigma (eq. 14).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core import Denoiser, append_dims
from ..ddim import step_euler
from ..edm import heun_parts, sample_edm_heun
from .form import IIAForm, StepTerms, host


class _EDMForm(IIAForm):
    base = "edm_heun"
    per_term = 1  # scalars per past term

    def num_coefficients(self, form: str = "default", r: int = 1) -> int:
        return self.per_term * (r + 1)

    def fitted_steps(self, sigmas: Tensor, form: str = "default") -> Tensor:
        s = host(sigmas)
        # Not step 0 (plain Heun), not a step to sigma = 0 (plain Euler).
        return (torch.arange(s.shape[0] - 1) >= 1) & (s[1:] > 0)

    def available_columns(self, i: int, form: str = "default", r: int = 1) -> list[bool]:
        # Past term k exists from step k on.
        return [k // self.per_term <= i for k in range(self.num_coefficients(form, r))]

    def fine_reference(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sub_grid: Tensor,
        history: Any = None,
        *,
        warm_start: bool = False,
    ) -> Tensor:
        return sample_edm_heun(denoiser, x, sub_grid)

    def fine_nfe(self, M: int) -> int:
        return 2 * M - 1

    def _final(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sigma: Tensor,
        sigma_next: Tensor,
        history: Any,
        form: str,
        r: int,
    ) -> StepTerms:
        # Last step to sigma = 0: plain Euler (no D at sigma = 0).
        x_euler = step_euler(denoiser, x, sigma, sigma_next)
        past = [] if history is None else list(history)
        return StepTerms(x_euler, x, [None] * self.num_coefficients(form, r), past)


class IIAEDM(_EDMForm):
    """IIA-EDM, Algorithm 1 (eqs. 18-19)."""

    name, per_term = "iia_edm", 2

    def default_coefficients(self, sigmas: Tensor, form: str = "default", r: int = 1) -> Tensor:
        c = super().default_coefficients(sigmas, form, r)
        s = host(sigmas)
        t, t_next = s[:-1], s[1:]
        # Lemma 1: b^eps_0 = (t_{i+1} - t_i)/t_i, b^D_0 = (t_{i+1} - t_i)/(2 t_{i+1}).
        c[:, 0] = (t_next - t) / t
        c[:, 1] = torch.where(t_next > 0, (t_next - t) / (2 * t_next.clamp_min(1e-300)), 0.0)
        return c

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
        """Step ``i`` of Algorithm 1 (eqs. 18-19); the sampler then takes ``terms.base`` on
        an unfitted step and ``terms.combine(b_i)`` on a fitted one::

            Q^eps_{i-k} = x_{i-k} - D_{i-k},  Q^D_{i-k} = D_{i-k} - D~_{i-k+1},  k = 0..r
            x_{i+1} = x_i + sum_k b^eps_ik Q^eps_{i-k} + b^D_ik Q^D_{i-k}

        ``history`` holds the pairs of the ``r`` previous steps (none at step 0: plain Heun).
        """
        if final:
            return self._final(denoiser, x, sigma, sigma_next, history, form, r)
        past = [] if history is None else list(history)
        # Heun step with its intermediate values: D_i, D~_{i+1} at the Euler predictor
        # (rows that end at 0 keep the Euler step).
        D, _, _, D_tilde, _, base = heun_parts(denoiser, x, sigma, sigma_next)
        # Current pair (x_i - D_i, D_i - D~_{i+1}), then the r previous pairs (eqs. 18-19).
        pairs = [(x - D, D - D_tilde), *past][: r + 1]
        q: list[Tensor | None] = [t for pair in pairs for t in pair]
        q += [None] * (2 * (r + 1) - len(q))
        # x_{i+1} = x_i + sum_k b^eps_ik Q^eps_{i-k} + b^D_ik Q^D_{i-k} (StepTerms.combine).
        return StepTerms(base, x, q, pairs[:r])


class BIIAEDM(_EDMForm):
    """BIIA-EDM, Algorithm 2 (eq. 13)."""

    name = "biia_edm"

    def default_coefficients(self, sigmas: Tensor, form: str = "default", r: int = 1) -> Tensor:
        c = super().default_coefficients(sigmas, form, r)
        c[:, 0] = 1.0  # gamma_0 = 1: the Heun step
        return c

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
        if final:
            return self._final(denoiser, x, sigma, sigma_next, history, form, r)
        past = [] if history is None else list(history)
        h_i = append_dims(sigma_next - sigma, x.ndim)
        _, d, _, _, d_prime, base = heun_parts(denoiser, x, sigma, sigma_next)
        # Heun average slopes of steps i, i-1, ..., times the current step size (eq. 13).
        slopes = [(d + d_prime) / 2, *past][: r + 1]
        q = [h_i * s for s in slopes] + [None] * (r + 1 - len(slopes))
        return StepTerms(base, x, q, slopes[:r])


IIA_EDM = IIAEDM()
BIIA_EDM = BIIAEDM()
