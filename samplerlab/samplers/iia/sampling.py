"""The IIA samplers: the base solver's loop, with fitted scalars on the fitted steps."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Denoiser, Grid
from ..noise import NoiseSource
from .coefficients import IIACoefficients, resolve_coefficients
from .forms import get_form


def sample_form(
    name: str,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    coeffs: IIACoefficients | None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """Sample with IIA sampler ``name``: its form's step terms on every step, combined with
    the fitted scalars where the coefficients' mask says so, else the plain base step."""
    iia_form = get_form(name)
    grid = Grid(sigmas, x)
    table = resolve_coefficients(coeffs, name, grid, denoiser, allow_fingerprint_mismatch)
    form = table.form if table is not None else "default"
    r = table.r if table is not None else 0
    history = None
    for i, sigma, sigma_next in grid:
        terms = iia_form.step(
            denoiser, x, sigma, sigma_next, history, final=grid.all_final(i), form=form, r=r
        )
        if table is not None and bool(table.mask[i]):
            # Fitted step: anchor + sum_k c_ik Q_k (host scalars, no device sync).
            x = terms.combine(table.coeffs[i].tolist())
        else:
            # Plain base step.
            x = terms.base
        history = terms.history
    return x


@torch.no_grad()
def sample_iia_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """IIA-DDIM (Zhang et al. 2024, eq. 6; eq. 8 for the ``guided`` form).

    Without ``coeffs`` this is DDIM (eta = 0) exactly. Coefficients are checked against
    the grid and, when their fit stored one, the model's fingerprint: another model's
    coefficients are refused unless ``allow_fingerprint_mismatch=True`` (all IIA samplers).
    """
    return sample_form("iia_ddim", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


@torch.no_grad()
def sample_iia_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """IIA-DPM-Solver++(2M) (Zhang et al. 2024, eq. 23); without ``coeffs`` DPM-Solver++(2M)."""
    return sample_form("iia_dpmpp_2m", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


@torch.no_grad()
def sample_iia_edm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """IIA-EDM (Zhang et al. 2024, eqs. 17-19, Alg. 1); without ``coeffs`` EDM Heun."""
    return sample_form("iia_edm", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)


@torch.no_grad()
def sample_biia_edm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: NoiseSource | None = None,
    coeffs: IIACoefficients | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> Tensor:
    """BIIA-EDM (Zhang et al. 2024, eqs. 13-16, Alg. 2); without ``coeffs`` EDM Heun."""
    return sample_form("biia_edm", denoiser, x, sigmas, coeffs, allow_fingerprint_mismatch)
