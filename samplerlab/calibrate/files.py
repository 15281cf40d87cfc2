"""Calibration files: safetensors tensors plus JSON metadata, written atomically.

Layout: tensor ``sigmas`` [N+1] float64 (the calibrated grid) and ``default_sigmas`` [N+1]
(the sampler's default grid it started from); safetensors metadata key
``samplerlab.calibrate`` holds a JSON object with the sampler, steps, sampler options, the
model fingerprint, the fit settings and losses, the fitting cost and the library version.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CalibrationFileError
from ..fileio import atomic_write
from ..iia.files import fingerprint, library_version
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
    from safetensors.torch import save_file

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
    text = {META_KEY: json.dumps(meta, sort_keys=True)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=text))


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
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(
            f"calibration file {path} does not exist; fit one with `samplerlab calibrate "
            f"--model MODEL --sampler SAMPLER --steps N --out {path}`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(raw) if raw is not None else None
        if not isinstance(meta, dict) or "sigmas" not in tensors:
            raise ValueError("missing samplerlab calibration metadata or tensors")
        cal = Calibration(
            sampler=str(meta["sampler"]),
            steps=int(meta["steps"]),
            sigmas=tensors["sigmas"].to(torch.float64),
            options=dict(meta.get("options") or {}),
            metadata=meta,
        )
    except Exception as e:  # any parse failure means "corrupt"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CalibrationFileError(
            f"calibration file {path} is corrupt or not a samplerlab calibration file ({msg}); "
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
