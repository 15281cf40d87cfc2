"""What every IIA form declares: its step terms and how fitted scalars enter its step.

An IIA form (Zhang, Niwa & Kleijn, ICLR 2024, Sec. 3-4) keeps its base solver's coarse
step and adds ``p`` scalars per step in front of quantities ``Q_k`` the step already
computes: ``x_{i+1} = anchor_i + sum_k c_ik Q_ik``. The scalars are fitted so that the
coarse step matches ``M`` fine steps of the same solver (eq. 7; :mod:`.fit`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import Denoiser


@dataclass
class StepTerms:
    """What one coarse step computed.

    ``base`` is the plain base step; on a step with coefficients ``c`` the IIA update is
    ``anchor + sum_k c_k Q_k`` over the available quantities (``None`` = no history yet,
    coefficient fixed at 0). ``history`` is carried to the next step.
    """

    base: Tensor
    anchor: Tensor
    quantities: list[Tensor | None]
    history: Any

    def combine(self, c: Sequence[float] | Tensor) -> Tensor:
        """The IIA update ``anchor + sum_k c_k Q_k`` with host scalars ``c``."""
        x = self.anchor
        for c_k, q in zip(c, self.quantities, strict=True):
            if q is not None:
                x = x + float(c_k) * q
        return x


def host(sigmas: Tensor) -> Tensor:
    """The grid as float64 on the CPU (coefficient tables are host tensors)."""
    return torch.as_tensor(sigmas, dtype=torch.float64).cpu()


class IIAForm(ABC):
    """One IIA sampler: its base solver, step terms, default and fitted coefficients.

    Subclasses set ``name`` (the registry name), ``base`` (the base sampler's name),
    ``variants`` (valid values of ``form``: ``default``, and ``guided`` for IIA-DDIM's
    eq. 8) and implement :meth:`step`, :meth:`fine_reference` and the coefficient layout.
    """

    name: str = ""
    base: str = ""
    variants: tuple[str, ...] = ("default",)
    # The fine grid's time variable: "sigma" (EDM), or the model's time / log-SNR.
    spacing_with_vp: str = "sigma"
    spacing_without_vp: str = "sigma"

    def __repr__(self) -> str:
        return f"<IIA form {self.name} on {self.base}>"

    @abstractmethod
    def num_coefficients(self, form: str = "default", r: int = 1) -> int:
        """Scalars per step ``p``."""

    @abstractmethod
    def fitted_steps(self, sigmas: Tensor, form: str = "default") -> Tensor:
        """Host bool mask ``[N]``: which coarse steps carry coefficients."""

    @abstractmethod
    def available_columns(self, i: int, form: str = "default", r: int = 1) -> list[bool]:
        """Which of the ``p`` quantities exist at step ``i`` (history needs earlier steps)."""

    def default_coefficients(self, sigmas: Tensor, form: str = "default", r: int = 1) -> Tensor:
        """``[N, p]`` float64 coefficients that reproduce the base sampler exactly."""
        s = host(sigmas)
        return torch.zeros(s.shape[0] - 1, self.num_coefficients(form, r), dtype=torch.float64)

    @abstractmethod
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
        """Run coarse step ``sigma -> sigma_next`` of the base and collect its quantities.

        ``final`` (host) says that every row ends at sigma = 0 (EDM's plain Euler step).
        """

    @abstractmethod
    def fine_reference(
        self,
        denoiser: Denoiser,
        x: Tensor,
        sub_grid: Tensor,
        history: Any = None,
        *,
        warm_start: bool = False,
    ) -> Tensor:
        """``M`` steps of the SAME base solver from ``x`` over ``sub_grid`` (eq. 7, 14, 24)."""

    def fine_nfe(self, M: int) -> int:
        """Extra network evaluations per fitting sample and fitted step."""
        return M

    def auto_spacing(self, vp: Any) -> str:
        """The base solver's own time variable (the fine grid is uniform in it)."""
        return self.spacing_with_vp if vp is not None else self.spacing_without_vp

    def vp_coefficients(self, coeffs: Tensor, alpha: Tensor) -> Tensor:
        """The scalars in the paper's VP coordinates (``alpha [N+1]`` of the grid)."""
        return coeffs.clone()
