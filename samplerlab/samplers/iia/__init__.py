"""IIA: improved integration approximation (Zhang, Niwa & Kleijn, ICLR 2024).

Each coarse step of a base solver gets a few per-step *scalar* coefficients in front of
quantities the step already computes; the scalars are fitted once by least squares so
that the coarse step matches ``M`` fine steps of the same solver (eq. 7; :mod:`.fit`).
Sampling cost equals the base solver's. One object per sampler (:class:`.form.IIAForm`)
holds its step terms, its coefficient layout and defaults:

==============  =====================================================  ===============
form            update on a fitted step                                module
==============  =====================================================  ===============
iia_ddim        DDIM(x_i) + c_0 (D_i - D_{i-1}) + c_1 (e_i - e_{i-1})  :mod:`.ddim`
iia_ddim/guided DDIM(x_i) + c_0 e_i (eq. 8)                            :mod:`.ddim`
iia_dpmpp_2m    DPM++2M(x_i) + c_0 x_i + c_1 D_i (eq. 23)              :mod:`.dpmpp`
iia_edm         Algorithm 1, eqs. 17-19                                :mod:`.edm`
biia_edm        Algorithm 2, eq. 13                                    :mod:`.edm`
==============  =====================================================  ===============

**Coordinates.** The state here is ``x = z / alpha`` (EDM / VE coordinates), the paper's
DDIM and DPM-Solver++ forms are written for the VP state ``z``. The quantities ``D`` (x0
prediction) and ``e`` (eps prediction) are identical in both; dividing the VP update by
``alpha_{i+1}`` turns eq. 6 into the form above with ``c = phi / alpha_{i+1}`` and eq. 23
(whose ``z_i = alpha_i x_i``) into it with ``c_0 = varphi_0 alpha_i / alpha_{i+1}``,
``c_1 = varphi_1 / alpha_{i+1}``. The least-squares objective in VP coordinates is
``alpha_{i+1}^2`` times ours, so the fitted scalars are the same minimiser, only
reparametrised; :meth:`IIACoefficients.vp_coefficients` converts them to the paper's.

Coefficient files are read and written by ``samplerlab.iia`` (this package imports only
torch); the samplers take loaded :class:`IIACoefficients`.
"""

from ..fingerprint import model_fingerprint
from .coefficients import (
    IIACoefficients,
    check_fingerprint,
    check_integrity,
    coefficients_digest,
    grid_mismatch,
    resolve_coefficients,
)
from .fit import (
    SPACINGS,
    GreedyFit,
    fine_grid,
    fit_shard,
    gram,
    gram_rows,
    resolve_spacing,
    shard_batches,
    solve,
)
from .form import IIAForm, StepTerms
from .forms import BASES, IIA_FORMS, check_sampler, check_variant, get_form
from .sampling import (
    sample_biia_edm,
    sample_form,
    sample_iia_ddim,
    sample_iia_dpmpp_2m,
    sample_iia_edm,
)

__all__ = [
    "BASES",
    "IIA_FORMS",
    "SPACINGS",
    "GreedyFit",
    "IIACoefficients",
    "IIAForm",
    "StepTerms",
    "check_fingerprint",
    "check_integrity",
    "check_sampler",
    "check_variant",
    "coefficients_digest",
    "fine_grid",
    "fit_shard",
    "get_form",
    "gram",
    "gram_rows",
    "grid_mismatch",
    "model_fingerprint",
    "resolve_coefficients",
    "resolve_spacing",
    "sample_biia_edm",
    "sample_form",
    "sample_iia_ddim",
    "sample_iia_dpmpp_2m",
    "sample_iia_edm",
    "shard_batches",
    "solve",
]
