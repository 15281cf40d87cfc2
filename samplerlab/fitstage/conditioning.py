"""Fitting under conditioning: (noise, condition) pairs, and what a fitted file records.

IIA's text-to-image experiments (Zhang, Niwa & Kleijn, ICLR 2024, Sec. 5.2 "Text-to-image
generation" and App. C) fit the scalars of a classifier-free-guided sampler at one
guidance scale, the MSE of eq. 7 averaged over pairs of initial noise and text prompt.
Here fitting sample ``k`` pairs its seeded noise (:func:`samplerlab.fitstage.fit_seeds`)
with condition row ``k``: the conditioning is bound once to all ``num_samples`` rows
(:func:`samplerlab.samplers.conditioning.condition`) and each batch of sample indices
takes its own rows (``core.take_rows``), so a shard on any DDP rank pairs the same noise
with the same condition and the fit does not depend on the batch size or the number of
processes. Calibration (:mod:`samplerlab.calibrate`) fits its grid on the same pairs.

A fit records what it was fitted for (:func:`fit_metadata`): the guidance scale and
interval, and a digest with the shape and dtype of the condition rows and of ``uncond``.
Sampling with another guidance warns (:func:`warn_if_other_guidance`); files without
these fields were fitted unconditionally.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..samplers.conditioning import condition
from ..samplers.core import has_row_state, take_rows

__all__ = [
    "batch_model",
    "bind_conditioning",
    "digest",
    "fit_metadata",
    "probe_model",
    "warn_if_other_guidance",
]


def _items(c: Any, key: str) -> dict[str, Tensor]:
    """A conditioning value as ``{name: tensor}`` (``""`` for a plain tensor)."""
    if isinstance(c, Tensor):
        return {"": c}
    if isinstance(c, Mapping) and c and all(isinstance(k, str) for k in c):
        return dict(c)
    raise ConfigError(f"{key} must be a tensor or a non-empty dict of tensors")


def _broadcast(c: Any, key: str, n: int) -> Any:
    """``c`` with ``n`` rows: its first dimension must be ``n`` (sample ``k``: row ``k``) or 1
    (one row for every sample)."""
    items = _items(c, key)
    for name, v in items.items():
        label = f"{key}[{name!r}]" if name else key
        if not isinstance(v, Tensor) or v.ndim == 0:
            raise ConfigError(f"{label} must be a tensor with one row per fitting sample")
        if v.shape[0] not in (1, n):
            raise ConfigError(
                f"{label} has {v.shape[0]} rows; it needs num_samples={n} (row k for fitting "
                "sample k) or 1 (shared)"
            )
    out = {k: v.expand(n, *v.shape[1:]) for k, v in items.items()}
    return out[""] if isinstance(c, Tensor) else out


def _scale(guidance: Any) -> float | None:
    """One guidance scale as a float (a fit is for one scale)."""
    if guidance is None:
        return None
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, Tensor)):
        raise ConfigError(f"guidance must be a number, got {guidance!r}")
    if isinstance(guidance, Tensor):
        if guidance.numel() != 1:
            raise ConfigError(
                f"guidance must be one number for a fit (the scale it is fitted for), got a "
                f"tensor of {guidance.numel()} scales"
            )
        guidance = float(guidance.reshape(()))
    w = float(guidance)
    if not math.isfinite(w):
        raise ConfigError(f"guidance must be finite, got {w}")
    return w


def bind_conditioning(
    denoiser: Any,
    num_samples: int,
    *,
    cond: Any = None,
    guidance: Any = None,
    uncond: Any = None,
    guidance_interval: tuple[float, float] | None = None,
    guidance_scale: float | None = None,
    form: str = "default",
) -> tuple[Any, float | None]:
    """The denoiser a fit runs (``denoiser`` itself without ``cond``) and the guidance scale
    it records.

    ``guidance`` is the scale of classifier-free guidance applied by the fit (with
    ``cond``); ``guidance_scale`` only records the scale of a denoiser that is already a
    guided wrapper (without ``cond``). With ``cond`` both may be given only if equal.
    """
    if cond is None:
        for key, v in (("guidance", guidance), ("uncond", uncond)):
            if v is not None:
                raise ConfigError(
                    f"{key}= needs cond= (the condition rows of the fitting samples); a "
                    "pre-bound guided denoiser records its scale with guidance_scale="
                )
        if guidance_interval is not None:
            raise ConfigError("guidance_interval= needs cond= and guidance=")
        return denoiser, guidance_scale
    w = _scale(guidance)
    if guidance_scale is not None and (w is None or float(guidance_scale) != w):
        raise ConfigError(
            f"guidance_scale={guidance_scale} with cond=: pass the scale once, as guidance= "
            f"(got guidance={w}); guidance_scale= records a pre-bound guided denoiser's scale"
        )
    if form == "guided" and w is None:
        raise ConfigError(
            "form='guided' (eq. 8) fits a classifier-free-guided sampler: pass guidance= "
            "with cond= and uncond="
        )
    cond = _broadcast(cond, "cond", num_samples)
    if uncond is not None:
        uncond = _broadcast(uncond, "uncond", num_samples)
    model = condition(
        denoiser, num_samples, cond=cond, guidance=w, uncond=uncond,
        guidance_interval=guidance_interval,
    )  # fmt: skip
    return model, w


def probe_model(model: Any) -> Any:
    """``model`` for a one-row probe call (fitting sample 0's condition row)."""
    if not has_row_state(model):
        return model
    return take_rows(model, torch.zeros(1, dtype=torch.long))


def batch_model(model: Any, rows: list[int] | Tensor, device: Any) -> Any:
    """``model`` for a call whose row ``j`` is fitting sample ``rows[j]`` (no index tensor
    for a model without per-sample state: the unconditional fit is unchanged)."""
    if not has_row_state(model):
        return model
    idx = rows if isinstance(rows, Tensor) else torch.tensor(rows, dtype=torch.long)
    return take_rows(model, idx.to(device))


def digest(c: Any, key: str, n: int) -> dict[str, Any]:
    """A conditioning value's digest (sha256 of its ``n`` rows, names, dtypes and shapes),
    shapes and dtypes: what a fitted file records of its condition rows."""
    items = _items(_broadcast(c, key, n), key)
    h = hashlib.sha256(b"cond;")
    for name in sorted(items):
        v = items[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    shapes = {k: list(v.shape) for k, v in items.items()}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in items.items()}
    if isinstance(c, Tensor):
        return {"digest": h.hexdigest()[:16], "shape": shapes[""], "dtype": dtypes[""]}
    return {"digest": h.hexdigest()[:16], "shape": shapes, "dtype": dtypes}


def fit_metadata(
    num_samples: int,
    cond: Any,
    uncond: Any,
    guidance_interval: tuple[float, float] | None,
) -> dict[str, Any]:
    """What a conditional fit records beside its ``guidance_scale``: the interval, and the
    digests of ``cond`` and ``uncond`` (nothing without ``cond``: the file of an
    unconditional fit is unchanged)."""
    if cond is None:
        return {}
    interval = None if guidance_interval is None else [float(v) for v in guidance_interval]
    return {
        "guidance_interval": interval,
        "cond": digest(cond, "cond", num_samples),
        "uncond": None if uncond is None else digest(uncond, "uncond", num_samples),
    }


def _describe(scales: list[float] | None, interval: Any) -> str:
    if scales is None:
        return "no guidance (unconditional)"
    if scales == [1.0]:
        return "guidance 1 (conditional)"
    text = f"{scales[0]:g}" if len(set(scales)) == 1 else f"{[round(w, 6) for w in scales]}"
    if interval is not None and any(w != 1 for w in scales):
        text += f" on sigma in ({float(interval[0]):g}, {float(interval[1]):g}]"
    return f"guidance {text}"


def warn_if_other_guidance(
    metadata: Mapping[str, Any],
    what: str,
    *,
    denoiser: Any = None,
    cond: Any = None,
    guidance: Any = None,
    guidance_interval: Any = None,
    stacklevel: int = 3,
) -> bool:
    """Warn (one line naming both) when a sampling call's guidance is not the one a fitted
    file (``what``: "IIA coefficients FILE", "calibration FILE") was fitted for. Returns
    whether it warned.

    Scales are compared with no guidance as scale 1 (an unconditional fit, or conditional
    sampling alone), and the interval where the call guides. Files without conditioning
    fields were fitted unconditionally; an unconditional call with such a file, and a call
    through a denoiser with conditioning already bound, are not compared.
    """
    fitted_cond = metadata.get("cond") is not None
    if cond is None and (not fitted_cond or has_row_state(denoiser)):
        return False
    # Scales compared: no guidance (unconditional, or conditional alone) is scale 1.
    recorded = metadata.get("guidance_scale")
    scale = 1.0 if recorded is None else float(recorded)
    fitted = [scale] if fitted_cond or recorded is not None else None
    if cond is None:
        used, scales = None, [1.0]
    else:
        g = 1.0 if guidance is None else guidance
        used = scales = torch.as_tensor(g, dtype=torch.float64).reshape(-1).tolist()
    f_interval = metadata.get("guidance_interval")
    u_interval = None if guidance_interval is None else [float(v) for v in guidance_interval]
    guided = any(w != 1 for w in scales)
    if all(w == scale for w in scales) and (not guided or f_interval == u_interval):
        return False
    warnings.warn(
        f"{what}: fitted for {_describe(fitted, f_interval)}, but this call samples with "
        f"{_describe(used, u_interval)} (another ODE); refit for this guidance "
        "(`--guidance W`) or sample with the fitted one",
        UserWarning,
        stacklevel=stacklevel,
    )
    return True
