"""The sampler names users search for: AUTOMATIC1111-style names and diffusers scheduler
classes, each as a registry sampler with options and a grid (:class:`Alias`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Alias:
    """A library's sampler name as (registry sampler, options, grid).

    ``schedule`` ``None`` keeps the sampler's default grid. A1111's plain names use the
    model's time grid (k-diffusion's ``get_sigmas``: uniform in the table's time, then 0 =
    ``time_uniform``), its "Karras" names the Karras grid (rho 7, then 0); diffusers' class
    names their default ``timestep_spacing="linspace"`` (timesteps rounded to the table)
    with the final sigma 0 (``final="replace"`` for the multistep/singlestep solvers).
    """

    sampler: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    schedule_options: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


_KARRAS = {"schedule": "karras"}
_A1111 = {"schedule": "time_uniform"}
_DIFF_MS = {"schedule": "linspace", "schedule_options": {"final": "replace"}}
_DIFF_K = {"schedule": "linspace"}

ALIASES: dict[str, Alias] = {
    # AUTOMATIC1111 / Forge / ComfyUI-style names (k-diffusion samplers).
    "Euler": Alias("euler", "A1111", **_A1111),
    "Euler a": Alias("euler_ancestral", "A1111", **_A1111),
    "Heun": Alias("edm_heun", "A1111", **_A1111),
    "LMS": Alias("lms", "A1111", **_A1111),
    "LMS Karras": Alias("lms", "A1111", **_KARRAS),
    "DPM2": Alias("dpm_2", "A1111", **_A1111),
    "DPM2 Karras": Alias("dpm_2", "A1111", **_KARRAS),
    "DPM2 a": Alias("dpm_2_ancestral", "A1111", **_A1111),
    "DPM2 a Karras": Alias("dpm_2_ancestral", "A1111", **_KARRAS),
    "DPM++ 2S a": Alias("dpmpp_2s_ancestral", "A1111", **_A1111),
    "DPM++ 2S a Karras": Alias("dpmpp_2s_ancestral", "A1111", **_KARRAS),
    "DPM++ 2M": Alias("dpmpp_2m", "A1111", **_A1111),
    "DPM++ 2M Karras": Alias("dpmpp_2m", "A1111", **_KARRAS),
    "DPM++ SDE": Alias("dpmpp_sde", "A1111", **_A1111),
    "DPM++ SDE Karras": Alias("dpmpp_sde", "A1111", **_KARRAS),
    "DPM++ 2M SDE": Alias("dpmpp_2m_sde", "A1111", **_A1111),
    "DPM++ 2M SDE Karras": Alias("dpmpp_2m_sde", "A1111", **_KARRAS),
    "DPM++ 3M SDE": Alias("dpmpp_3m_sde", "A1111", {"form": "library"}, **_A1111),
    "DPM++ 3M SDE Karras": Alias("dpmpp_3m_sde", "A1111", {"form": "library"}, **_KARRAS),
    "DPM fast": Alias(
        "dpm_solver_3", "A1111", schedule="logsnr", note="DPM-Solver-fast on a log-SNR grid"
    ),
    "DPM adaptive": Alias("dpm_adaptive", "A1111"),
    "UniPC": Alias(
        "unipc",
        "A1111",
        {"order": 3, "variant": "bh1", "lower_order_final": True},
        note="A1111's UniPC settings: bh1, order 3",
        **_A1111,
    ),
    "DDIM": Alias(
        "ddim",
        "A1111",
        schedule="leading",
        schedule_options={"steps_offset": 1},
        note="A1111's 'uniform' DDIM timesteps",
    ),
    # diffusers scheduler classes with their default configurations.
    "DPMSolverMultistepScheduler": Alias("dpmpp_2m", "diffusers", **_DIFF_MS),
    "DPMSolverSinglestepScheduler": Alias(
        "dpm_solver_2",
        "diffusers",
        {"algorithm": "dpmsolver++"},
        note="intermediate points at half log-SNR (diffusers: at its grid points)",
        **_DIFF_MS,
    ),
    "UniPCMultistepScheduler": Alias(
        "unipc", "diffusers", {"order": 2, "variant": "bh2", "lower_order_final": True}, **_DIFF_MS
    ),
    "DEISMultistepScheduler": Alias(
        "deis",
        "diffusers",
        {"order": 2, "lower_order_final": True},
        note="ends at 0 (diffusers: at the table's sigma_min)",
        **_DIFF_MS,
    ),
    "LMSDiscreteScheduler": Alias("lms", "diffusers", **_DIFF_K),
    "EulerDiscreteScheduler": Alias("euler", "diffusers", **_DIFF_K),
    "EulerAncestralDiscreteScheduler": Alias("euler_ancestral", "diffusers", **_DIFF_K),
    "HeunDiscreteScheduler": Alias("edm_heun", "diffusers", **_DIFF_K),
    "KDPM2DiscreteScheduler": Alias("dpm_2", "diffusers", **_DIFF_K),
    "KDPM2AncestralDiscreteScheduler": Alias("dpm_2_ancestral", "diffusers", **_DIFF_K),
    "DPMSolverSDEScheduler": Alias("dpmpp_sde", "diffusers", **_DIFF_K),
    "DDIMScheduler": Alias("ddim", "diffusers", schedule="leading"),
    "DDPMScheduler": Alias("ddpm", "diffusers", schedule="leading"),
}


def alias_key(name: str) -> str:
    """``name`` with case, underscores and spacing normalised (how aliases are matched)."""
    return " ".join(name.lower().replace("_", " ").split())


ALIAS_KEYS = {alias_key(k): k for k in ALIASES}
