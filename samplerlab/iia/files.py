"""IIA coefficient files: safetensors tensors plus JSON metadata, written atomically.

Layout: tensors ``coeffs`` [N, p] float64, ``mask`` [N] uint8, ``sigmas`` [N+1] float64;
safetensors metadata key ``samplerlab.iia`` holds a JSON object with the sampler, form,
r, base sampler, steps, NFE, M, number of fitting samples, model fingerprint, guidance
scale and library version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import IIAFileError
from ..fitstage import first_line, read_file, write_file
from ..samplers.core import SamplerError
from ..samplers.fingerprint import model_fingerprint
from ..samplers.iia import IIACoefficients, check_integrity, grid_mismatch
from ..version import library_version

META_KEY = "samplerlab.iia"
FORMAT_VERSION = 1


def fingerprint(denoiser: Any) -> str:
    """A short hash identifying the model behind ``denoiser`` (see
    :func:`samplerlab.samplers.fingerprint.model_fingerprint`)."""
    return model_fingerprint(denoiser)


def _refit_hint(meta: dict[str, Any], path: str | Path) -> str:
    sampler = meta.get("sampler", "SAMPLER")
    steps = meta.get("steps", "N")
    M = meta.get("M", 3)
    return (
        f"refit with `samplerlab iia-fit --model MODEL --sampler {sampler} --steps {steps} "
        f"--M {M} --out {path}`"
    )


def save(coeffs: IIACoefficients, path: str | Path) -> Path:
    """Write ``coeffs`` to ``path`` (safetensors + JSON metadata), atomically."""
    if not isinstance(coeffs, IIACoefficients):
        raise IIAFileError(f"save() takes IIACoefficients, got {type(coeffs).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IIAFileError(f"{path} is a folder; give a file name (e.g. {path}/coeffs.safetensors)")
    meta = {
        **coeffs.metadata,
        "format_version": FORMAT_VERSION,
        "sampler": coeffs.sampler,
        "base": coeffs.base,
        "form": coeffs.form,
        "r": coeffs.r,
        "steps": coeffs.steps,
        "library_version": coeffs.metadata.get("library_version", library_version()),
    }
    tensors = {
        "coeffs": coeffs.coeffs.detach().to("cpu", torch.float64).contiguous(),
        "mask": coeffs.mask.detach().to("cpu", torch.uint8).contiguous(),
        "sigmas": coeffs.sigmas.detach().to("cpu", torch.float64).contiguous(),
    }
    return write_file(path, tensors, META_KEY, meta)


def load(
    path: str | Path,
    *,
    denoiser: Any = None,
    sigmas: Tensor | None = None,
    allow_fingerprint_mismatch: bool = False,
) -> IIACoefficients:
    """Read a coefficient file; check the grid (``sigmas``) and model (``denoiser``) if given.

    Always checked: the scalars are finite and are the ones the fit wrote (the fit stores a
    digest of its output). Every failure is one :class:`IIAFileError` line naming the file
    and how to refit; ``allow_fingerprint_mismatch=True`` accepts another model's file.
    """
    path = Path(path)
    if path.is_dir():
        raise IIAFileError(f"IIA coefficient file {path} is a folder, not a coefficient file")
    if not path.is_file():
        raise IIAFileError(
            f"IIA coefficient file {path} does not exist; fit one with "
            f"`samplerlab iia-fit --model MODEL --sampler SAMPLER --steps N --out {path}`"
        )
    try:
        meta, tensors = read_file(path, META_KEY, ("coeffs", "mask", "sigmas"), "IIA")
        coeffs = IIACoefficients(
            sampler=meta["sampler"],
            sigmas=tensors["sigmas"].to(torch.float64),
            coeffs=tensors["coeffs"].to(torch.float64),
            mask=tensors["mask"].to(torch.bool),
            form=meta.get("form", "default"),
            r=int(meta.get("r", 1)),
            metadata=meta,
        )
    except Exception as e:  # any parse failure means "corrupt"
        raise IIAFileError(
            f"IIA coefficient file {path} is corrupt or not a samplerlab coefficient file "
            f"({first_line(e)}); delete it and fit again with `samplerlab iia-fit ... --out {path}`"
        ) from None
    if sigmas is not None:
        mismatch = grid_mismatch(coeffs.sigmas, torch.as_tensor(sigmas).reshape(-1))
        if mismatch is not None:
            raise IIAFileError(
                f"IIA coefficient file {path} was fitted on another grid {mismatch}; "
                f"{_refit_hint(meta, path)}"
            )
    try:
        check_integrity(coeffs, f"file {path}")
    except SamplerError as e:
        raise IIAFileError(str(e)) from None
    if denoiser is not None:
        want = meta.get("fingerprint")
        got = fingerprint(denoiser)
        if want != got and not allow_fingerprint_mismatch:
            raise IIAFileError(
                f"IIA coefficient file {path} was fitted for another model (fingerprint {want}, "
                f"this model {got}); {_refit_hint(meta, path)}, or pass "
                "allow_fingerprint_mismatch=True"
            )
    return coeffs
