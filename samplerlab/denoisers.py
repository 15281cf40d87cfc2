"""Denoiser wrappers (re-exported from :mod:`samplerlab.samplers.denoisers`) plus loaders
that need third-party packages: a diffusers ``UNet2DModel`` with its scheduler config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .samplers.core import SamplerError
from .samplers.denoisers import (
    ChunkedDenoiser,
    ClippedDenoiser,
    CountingDenoiser,
    EDMDenoiser,
    FiniteCheckDenoiser,
    NonFiniteError,
    VPDenoiser,
    chunked,
    from_eps,
    from_v,
    from_x0,
)
from .samplers.schedules import ContinuousVP, DiscreteVP

__all__ = [
    "ChunkedDenoiser",
    "ClippedDenoiser",
    "ContinuousVP",
    "CountingDenoiser",
    "DiscreteVP",
    "EDMDenoiser",
    "FiniteCheckDenoiser",
    "NonFiniteError",
    "VPDenoiser",
    "chunked",
    "from_diffusers",
    "from_eps",
    "from_v",
    "from_x0",
    "load_scheduler_config",
]


def load_scheduler_config(path: str | Path) -> dict[str, Any]:
    """Read a diffusers ``scheduler_config.json`` (a file, or a folder holding one)."""
    p = Path(path)
    candidates = (
        [p]
        if p.is_file()
        else [p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json"]
    )
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except json.JSONDecodeError as e:
                raise SamplerError(f"{c}: not valid JSON ({e.msg} at line {e.lineno})") from None
    raise SamplerError(
        f"no scheduler_config.json found at {p} (looked in: "
        f"{', '.join(str(c) for c in candidates)})"
    )


def from_diffusers(
    model: str | Path | torch.nn.Module,
    scheduler: Any = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    clip_denoised: bool | None = None,
    class_labels: torch.Tensor | None = None,
    compile: bool | dict[str, Any] = False,
) -> VPDenoiser:
    """A diffusers ``UNet2DModel`` and its noise schedule as ``D(x, sigma)``.

    ``model`` is a loaded UNet or a local folder: a pipeline folder (``unet/`` and
    ``scheduler/``) or a UNet folder with ``scheduler_config.json`` beside its config.
    ``scheduler`` is a diffusers scheduler, a config dict or a path; by default it is
    looked up in the folder. Nothing is downloaded: ``from_pretrained`` reads the folder.
    The prediction type and ``clip_sample`` come from the scheduler config; ``compile=True``
    wraps the UNet call in ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    if isinstance(model, (str, Path)):
        root = Path(model)
        if not root.exists():
            raise SamplerError(f"model folder {root} does not exist")
        sub = "unet" if (root / "unet" / "config.json").is_file() else None
        if sub is None and not (root / "config.json").is_file():
            raise SamplerError(f"{root} holds neither config.json nor unet/config.json")
        try:
            unet = UNet2DModel.from_pretrained(root, subfolder=sub, local_files_only=True)
        except (OSError, ValueError) as e:
            raise SamplerError(f"cannot load a UNet2DModel from {root}: {e}") from None
        if scheduler is None:
            scheduler = load_scheduler_config(root)
    else:
        unet = model
        if scheduler is None:
            raise SamplerError("pass the scheduler (object, dict or path) with a loaded UNet")
    if isinstance(scheduler, (str, Path)):
        scheduler = load_scheduler_config(scheduler)
    config = dict(scheduler) if isinstance(scheduler, dict) else dict(scheduler.config)
    ddpm = DDPMScheduler.from_config(config)
    unet = unet.eval()
    if device is not None or dtype is not None:
        unet = unet.to(device=device, dtype=dtype)
    size = unet.config.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)

    labels_all = None if class_labels is None else torch.as_tensor(class_labels).reshape(-1)

    def model_fn(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Labels are bound by closure: one for every row, or one per sample. Parallel samplers
        # stack whole copies of the batch (block-major), which repeat the per-sample labels.
        labels = labels_all
        if labels is not None and labels.numel() not in (1, x_vp.shape[0]):
            if x_vp.shape[0] % labels.numel():
                raise SamplerError(
                    f"class_labels has {labels.numel()} entries but the network call has "
                    f"{x_vp.shape[0]} rows (not whole copies of the batch: with max_rows, "
                    "use a multiple of the batch size)"
                )
            labels = labels.repeat(x_vp.shape[0] // labels.numel())
        elif labels is not None and labels.numel() == 1:
            labels = labels.expand(x_vp.shape[0])
        if labels is not None:
            labels = labels.to(x_vp.device)
        return unet(x_vp.to(unet.dtype), t, class_labels=labels).sample

    return VPDenoiser(
        model_fn,
        DiscreteVP(ddpm.alphas_cumprod.double()),
        prediction_type=config.get("prediction_type", "epsilon"),
        clip_denoised=bool(config.get("clip_sample", False))
        if clip_denoised is None
        else clip_denoised,
        data_shape=(unet.config.in_channels, *hw),
        compile=compile,
    )
