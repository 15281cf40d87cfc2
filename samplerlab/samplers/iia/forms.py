"""The IIA forms by sampler name (one object each: :class:`.form.IIAForm`)."""

from __future__ import annotations

from ..core import SamplerError
from .ddim import IIA_DDIM
from .dpmpp import IIA_DPMPP_2M
from .edm import BIIA_EDM, IIA_EDM
from .form import IIAForm

IIA_FORMS: dict[str, IIAForm] = {f.name: f for f in (IIA_DDIM, IIA_DPMPP_2M, IIA_EDM, BIIA_EDM)}
# IIA sampler name -> base sampler name.
BASES: dict[str, str] = {name: f.base for name, f in IIA_FORMS.items()}


def check_sampler(name: str) -> str:
    """``name`` if it is an IIA sampler, else one clear error."""
    if name not in IIA_FORMS:
        raise SamplerError(f"'{name}' is not an IIA sampler; valid: {', '.join(IIA_FORMS)}")
    return name


def get_form(name: str) -> IIAForm:
    """The IIA form of sampler ``name`` (one clear error for another name)."""
    return IIA_FORMS[check_sampler(name)]


def check_variant(name: str, form: str) -> str:
    """``form`` if it is a valid variant of sampler ``name`` (``guided``: IIA-DDIM, eq. 8)."""
    valid = get_form(name).variants
    if form not in valid:
        raise SamplerError(f"form '{form}' is not valid for {name}; valid: {', '.join(valid)}")
    return form
