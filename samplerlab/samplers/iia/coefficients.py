"""Fitted IIA scalars and the checks that bind them to their sampler, grid and model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core import Grid, SamplerError
from ..fingerprint import hash_tensor, model_fingerprint
from .form import IIAForm
from .forms import check_variant, get_form


@dataclass(frozen=True, eq=False)
class IIACoefficients:
    """Fitted IIA scalars for one sampler, grid and model.

    Attributes:
        sampler: the IIA sampler name (``iia_ddim``, ``iia_dpmpp_2m``, ``iia_edm``, ``biia_edm``).
        sigmas: ``[N+1]`` float64 grid the fit was done on (sampling must use the same grid).
        coeffs: ``[N, p]`` float64 scalars in EDM coordinates (see :mod:`samplerlab.samplers.iia`).
        mask: ``[N]`` bool, the steps that use ``coeffs`` (the others run the plain base step).
        form: ``default`` or ``guided`` (iia_ddim, eq. 8).
        r: number of past terms of the EDM forms.
        metadata: fit settings (M, fitting samples, model fingerprint, ...), JSON-serialisable.
        source: where they came from (a file's path, or in memory), named in errors.
    """

    sampler: str
    sigmas: Tensor
    coeffs: Tensor
    mask: Tensor
    form: str = "default"
    r: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="(in memory)", repr=False)

    def __post_init__(self) -> None:
        # Host tensors: samplers read one row of scalars per step without a device sync.
        object.__setattr__(self, "sigmas", self.sigmas.detach().to("cpu", torch.float64))
        object.__setattr__(self, "coeffs", self.coeffs.detach().to("cpu", torch.float64))
        object.__setattr__(self, "mask", self.mask.detach().to("cpu", torch.bool))
        check_variant(self.sampler, self.form)
        n = self.sigmas.shape[0] - 1
        p = self.iia_form.num_coefficients(self.form, self.r)
        if tuple(self.coeffs.shape) != (n, p) or tuple(self.mask.shape) != (n,):
            raise SamplerError(
                f"{self.sampler} coefficients must be [{n}, {p}] with a [{n}] mask for a grid "
                f"of {n} steps; got {tuple(self.coeffs.shape)} and {tuple(self.mask.shape)}"
            )

    @property
    def iia_form(self) -> IIAForm:
        return get_form(self.sampler)

    @property
    def base(self) -> str:
        return self.iia_form.base

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @classmethod
    def defaults(
        cls, sampler: str, sigmas: Tensor, form: str = "default", r: int = 1
    ) -> IIACoefficients:
        """Coefficients that reproduce the base sampler (on every fittable step)."""
        s = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
        f = get_form(sampler)
        return cls(
            sampler,
            s,
            f.default_coefficients(s, form, r),
            f.fitted_steps(s, form),
            form,
            r,
        )

    def vp_coefficients(self) -> Tensor:
        """The scalars in the paper's VP coordinates (``phi``, ``varphi``, ``beta``).

        EDM forms are already in the paper's (EDM) coordinates and are returned unchanged.
        """
        alpha = (1 + self.sigmas**2).rsqrt()
        return self.iia_form.vp_coefficients(self.coeffs, alpha)


def coefficients_digest(coeffs: Tensor, mask: Tensor, sigmas: Tensor) -> str:
    """A short hash of a fit's output (scalars, mask and grid), stored with the fit."""
    h = hashlib.sha256(b"iia;")
    hash_tensor(h, "coeffs", coeffs.to(torch.float64))
    hash_tensor(h, "mask", mask.to(torch.bool))
    hash_tensor(h, "sigmas", sigmas.to(torch.float64))
    return h.hexdigest()[:16]


def check_fingerprint(
    coeffs: IIACoefficients, denoiser: Any, source: str, *, allow_mismatch: bool = False
) -> None:
    """Refuse coefficients fitted on another model (their stored fingerprint is not the
    denoiser's). Coefficients without a stored fingerprint (built by hand) are not checked;
    ``allow_mismatch`` skips the check for those who know the models share their dynamics."""
    want = coeffs.metadata.get("fingerprint")
    if want is None or allow_mismatch:
        return
    got = model_fingerprint(denoiser)
    if str(want) != got:
        raise SamplerError(
            f"IIA coefficients {source} were fitted for another model (fingerprint {want}, "
            f"this model {got}); refit them on this model, or pass "
            "allow_fingerprint_mismatch=True to use them anyway"
        )


def check_integrity(coeffs: IIACoefficients, source: str) -> None:
    """Refuse non-finite scalars, and scalars that are not those the fit stored (the fit
    records a digest of its output; an edited file keeps the fit's metadata, not its digest)."""
    if not bool(torch.isfinite(coeffs.coeffs).all()):
        raise SamplerError(f"IIA coefficients {source} contain NaN or Inf; fit them again")
    want = coeffs.metadata.get("coeffs_digest")
    if want is None:
        return
    got = coefficients_digest(coeffs.coeffs, coeffs.mask, coeffs.sigmas)
    if str(want) != got:
        raise SamplerError(
            f"IIA coefficients {source} are not the ones their fit produced (digest {want}, "
            f"contents {got}): the values were changed after fitting; fit them again"
        )


def grid_mismatch(fitted: Tensor, requested: Tensor) -> str | None:
    """``None`` if ``requested`` (``[N+1]`` or per-row ``[N+1, B]``) is the ``fitted`` grid
    (rtol 1e-6, atol 1e-9), else ``"(fitted) than the requested one (requested)"``."""
    ref = fitted.to(torch.float64)[:, None]
    req = requested.detach().to("cpu", torch.float64)
    req = req if req.ndim == 2 else req[:, None]
    same_len = req.shape[0] == ref.shape[0]
    if same_len and torch.allclose(req, ref, rtol=1e-6, atol=1e-9):
        return None
    worst = f", largest |dsigma| {float((req - ref).abs().max()):.3g}" if same_len else ""
    return (
        f"({ref.shape[0] - 1} steps, sigma_max {float(ref[0]):.4g}) than the requested one "
        f"({req.shape[0] - 1} steps, sigma_max {float(req[0].max()):.4g}{worst})"
    )


def resolve_coefficients(
    coeffs: IIACoefficients | None,
    name: str,
    grid: Grid,
    denoiser: Any = None,
    allow_fingerprint_mismatch: bool = False,
) -> IIACoefficients | None:
    """Check loaded coefficients against the sampler, the grid and the model (the
    fingerprint stored by the fit, when ``denoiser`` is given). Files are loaded by
    ``samplerlab.iia.load`` (or ``samplerlab.sample``, which takes a file's path)."""
    if coeffs is None:
        return None
    if not isinstance(allow_fingerprint_mismatch, bool):
        raise SamplerError(
            f"allow_fingerprint_mismatch must be True or False, got {allow_fingerprint_mismatch!r}"
        )
    if not isinstance(coeffs, IIACoefficients):
        raise SamplerError(
            "coeffs must be IIACoefficients (load a file with samplerlab.iia.load, or pass its "
            f"path to samplerlab.sample), got {type(coeffs).__name__}"
        )
    source = coeffs.source
    check_integrity(coeffs, source)
    if denoiser is not None:
        check_fingerprint(coeffs, denoiser, source, allow_mismatch=allow_fingerprint_mismatch)
    if coeffs.sampler != name:
        raise SamplerError(
            f"coefficients were fitted for {coeffs.sampler}, not {name}; refit with "
            f"`samplerlab iia-fit --sampler {name} ...`"
        )
    mismatch = grid_mismatch(coeffs.sigmas, grid.host)
    if mismatch is not None:
        raise SamplerError(
            f"coefficients were fitted on a different grid {mismatch}; refit with "
            f"`samplerlab iia-fit --sampler {name} --steps {grid.steps} ...`"
        )
    return coeffs
