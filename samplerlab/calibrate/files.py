"""Calibration files: safetensors tensors plus JSON metadata, written atomically.

Layout: tensor ``sigmas`` [N+1] float64 (the calibrated grid) and ``default_sigmas`` [N+1]
(the sampler's default grid it started from); safetensors metadata key
``samplerlab.calibrate`` holds a JSON object with the sampler, steps, sampler options, the
model fingerprint, the fit settings and losses, the fitting cost and the library version.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CalibrationFileError
from ..fitstage import first_line, read_file, write_file
from ..samplers.fingerprint import model_fingerprint as fingerprint
from ..version import library_version
from .grid import Calibration, CalibrationError

META_KEY = "samplerlab.calibrate"
FORMAT_VERSION = 1


def _hint(meta: dict[str, Any], path: str | Path) -> str:
    return (
        f"recalibrate with `samplerlab calibrate --model MODEL --sampler "
        f"{meta.get('sampler', 'SAMPLER')} --steps {meta.get('steps', 'N')} --out {path}`"
    )


def save(calibration: Calibration, path: str | Path) -> Path:
    """Write ``calibration`` to ``path`` (safetensors + JSON metadata), atomically."""
    meta = {
        **calibration.metadata,
        "format_version": FORMAT_VERSION,
        "sampler": calibration.sampler,
        "steps": calibration.steps,
        "options": calibration.options,
        "library_version": calibration.metadata.get("library_version", library_version()),
    }
    default = calibration.metadata.get("default_sigmas", calibration.sigmas.tolist())
    tensors = {
        "sigmas": calibration.sigmas.to(torch.float64).contiguous(),
        "default_sigmas": torch.tensor(default, dtype=torch.float64),
    }
    return write_file(path, tensors, META_KEY, meta)


def load(
    path: str | Path,
    *,
    denoiser: Any = None,
    sampler: str | None = None,
    steps: int | None = None,
    strict: bool = True,
) -> Calibration:
    """Read a calibration file; check the model (``denoiser``) and ``sampler`` / ``steps``.

    Every failure is one :class:`CalibrationFileError` line naming the file and how to
    recalibrate. ``strict=False`` is the explicit override for a model mismatch (e.g. the
    same weights re-saved in another format): a warning instead of the error.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(
            f"calibration file {path} does not exist; fit one with `samplerlab calibrate "
            f"--model MODEL --sampler SAMPLER --steps N --out {path}`"
        )
    try:
        meta, tensors = read_file(path, META_KEY, ("sigmas",), "calibration")
        cal = Calibration(
            sampler=str(meta["sampler"]),
            steps=int(meta["steps"]),
            sigmas=tensors["sigmas"].to(torch.float64),
            options=dict(meta.get("options") or {}),
            metadata=meta,
        )
    except Exception as e:  # any parse failure means "corrupt"
        raise CalibrationFileError(
            f"calibration file {path} is corrupt or not a samplerlab calibration file "
            f"({first_line(e)}); "
            f"delete it and fit again with `samplerlab calibrate ... --out {path}`"
        ) from None
    if sampler is not None or steps is not None:
        try:
            cal.check(sampler or cal.sampler, cal.steps if steps is None else steps)
        except CalibrationError as e:
            raise CalibrationFileError(f"calibration file {path}: {e}") from None
    if denoiser is not None:
        want, got = meta.get("fingerprint"), fingerprint(denoiser)
        if want != got:
            msg = (
                f"calibration file {path} was fitted for another model (fingerprint {want}, "
                f"this model {got})"
            )
            if strict:
                raise CalibrationFileError(f"{msg}; {_hint(meta, path)}")
            warnings.warn(f"{msg}; used anyway (strict=False)", stacklevel=2)
    return cal


def resolve(
    calibration: Calibration | str | Path,
    name: str,
    steps: int,
    options: dict[str, Any] | None = None,
    denoiser: Any = None,
) -> Tensor:
    """The calibrated grid for ``name`` / ``steps`` (a :class:`Calibration` or a file path;
    a file is checked against ``denoiser``'s fingerprint)."""
    if isinstance(calibration, (str, Path)):
        calibration = load(calibration, denoiser=denoiser)
    if not isinstance(calibration, Calibration):
        raise CalibrationError(
            f"calibration must be a Calibration or a file path, got {type(calibration).__name__}"
        )
    return calibration.check(name, steps, options)
