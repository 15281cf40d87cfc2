"""``samplerlab iia-fit``: fit IIA coefficients and write a coefficient file.

``--model gmm`` is the analytic Gaussian mixture (``GaussianMixture.default()``),
``gmm-cond`` its class-conditional version (``ClassConditionalMixture.default()``); a folder
is a local diffusers model (``samplerlab.denoisers.from_diffusers``); a file is a
``samplerlab train`` checkpoint, loaded by :data:`CHECKPOINT_LOADER` (its EMA denoiser).
A class-conditional model is fitted on (noise, label) pairs with ``--classes`` /
``--labels`` and, with ``--guidance W``, for classifier-free guidance at ``W``
(:mod:`samplerlab.fitstage.classes`).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fitstage import check_minimums, stage_options
from ..fitstage.classes import (
    add_class_arguments,
    check_class_arguments,
    class_conditioning,
    fitted_for,
    wants_classes,
)

# Training checkpoints: "module:function", function(path) -> denoiser.
CHECKPOINT_LOADER = "samplerlab.trainer.checkpoints:load_denoiser"
# With class labels: function(path) -> (module with .denoiser, .num_classes, .null_label, cfg).
CHECKPOINT_MODULE_LOADER = "samplerlab.trainer.checkpoints:load_checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="gmm", help="gmm | gmm-cond | a diffusers folder | a checkpoint file"
    )
    p.add_argument("--ckpt", dest="model", help="alias of --model")
    p.add_argument(
        "--sampler", default="iia_ddim", help="iia_ddim | iia_dpmpp_2m | iia_edm | biia_edm"
    )
    p.add_argument("--steps", type=int, default=10, help="sampler steps (as for `sample`)")
    p.add_argument("--schedule", default=None, help="grid schedule (default: the sampler's)")
    p.add_argument("--M", type=int, default=3, help="fine sub-steps per coarse step")
    p.add_argument("--samples", type=int, default=16, help="number of fitting noises")
    p.add_argument("--batch-size", type=int, default=None, help="fitting samples per batch")
    p.add_argument("--r", type=int, default=1, help="past terms (EDM forms)")
    p.add_argument("--form", default="default", help="default | guided (iia_ddim, eq. 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fitting noises")
    p.add_argument("--ridge", type=float, default=1e-10, help="relative ridge of the solve")
    p.add_argument("--devices", type=int, default=1, help="processes/devices (DDP when > 1)")
    p.add_argument("--accelerator", default=None, help="cpu | gpu (default: the model's device)")
    p.add_argument(
        "--out", default=None, help="output file (default iia_<sampler>_<steps>.safetensors)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_class_arguments(p)


def _loader(name: str, spec: str) -> Any:
    module_name, func = name.split(":")
    try:
        return getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError):
        raise ConfigError(
            f"--model {spec}: loading training checkpoints needs {name} "
            "(not available in this build); pass a diffusers folder or 'gmm'"
        ) from None


def load_model_classes(spec: str) -> tuple[Any, int | None, int | None]:
    """The denoiser named by ``--model``, its number of classes and its null label (``None``
    where the model does not declare them)."""
    if spec in ("gmm", "gmm-cond"):
        from ..analytic import ClassConditionalMixture

        if spec == "gmm":
            raise ConfigError(
                "--classes/--labels: --model gmm is unconditional; use --model gmm-cond"
            )
        m = ClassConditionalMixture.default()
        return m, int(m.weights.numel()), ClassConditionalMixture.NULL
    path = Path(spec)
    if path.is_file():
        module = _loader(CHECKPOINT_MODULE_LOADER, spec)(path)[0]
        k = int(getattr(module, "num_classes", 0))
        if k < 1:
            raise ConfigError(f"--classes/--labels: --model {spec} is an unconditional model")
        return module.denoiser, k, int(module.null_label.reshape(-1)[0])
    denoiser = load_model(spec)
    from ..samplers.fingerprint import find_module

    config = getattr(find_module(denoiser), "config", None)
    k = getattr(config, "num_class_embeds", None)
    return denoiser, (int(k) if k else None), None


def load_model(spec: str) -> Any:
    """The denoiser named by ``--model``: ``gmm``, ``gmm-cond``, a diffusers folder or a
    checkpoint."""
    if spec == "gmm":
        from ..analytic import GaussianMixture

        return GaussianMixture.default()
    if spec == "gmm-cond":
        from ..analytic import ClassConditionalMixture

        return ClassConditionalMixture.default()
    path = Path(spec)
    if path.is_dir():
        from ..denoisers import from_diffusers

        return from_diffusers(path)
    if path.is_file():
        return _loader(CHECKPOINT_LOADER, spec)(path)
    raise ConfigError(f"--model {spec}: no such file or folder; valid: gmm, a folder, a checkpoint")


def run(args: argparse.Namespace) -> int:
    from ..samplers.iia import check_sampler

    # Cheap checks first: nothing is loaded or written on bad input.
    check_sampler(args.sampler)
    check_minimums(
        [
            ("--M", args.M, 1),
            ("--samples", args.samples, 1),
            ("--steps", args.steps, 1),
            ("--r", args.r, 0),
            ("--devices", args.devices, 1),
        ]
    )
    if not 0 <= args.seed < 2**63 - args.samples:
        raise ConfigError(f"--seed: seeds must lie in [0, 2**63), got {args.seed}")
    if args.accelerator is not None:
        from .sample import check_device

        if args.accelerator not in ("cpu", "gpu", "cuda"):
            raise ConfigError(f"--accelerator: '{args.accelerator}'; valid: cpu, gpu")
        check_device("cpu" if args.accelerator == "cpu" else "cuda", "--accelerator")
    check_class_arguments(args)
    out = Path(args.out or f"iia_{args.sampler}_{args.steps}.safetensors")
    conditioning: dict[str, Any] = {}
    if wants_classes(args):
        denoiser, num_classes, null_label = load_model_classes(args.model)
        conditioning = class_conditioning(args, args.samples, num_classes, null_label)
    else:
        denoiser = load_model(args.model)

    from lightning.pytorch.utilities import rank_zero_only

    from ..iia import fit, save

    coeffs = fit(
        denoiser,
        args.sampler,
        steps=args.steps,
        schedule=args.schedule,
        M=args.M,
        num_samples=args.samples,
        batch_size=args.batch_size,
        r=args.r,
        form=args.form,
        seed=args.seed,
        ridge=args.ridge,
        **conditioning,
        **stage_options(args),
    )
    if rank_zero_only.rank == 0:
        save(coeffs, out)
        meta = coeffs.metadata
        print(
            f"wrote {out}: {args.sampler} on {coeffs.steps} steps ({meta['nfe']} NFE), M={args.M}, "
            f"{args.samples} fitting samples, {int(coeffs.mask.sum())} fitted steps, "
            f"{meta['fit_seconds']:.1f} s{fitted_for(meta)}"
        )
    return 0
