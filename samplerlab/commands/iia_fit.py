"""``samplerlab iia-fit``: fit IIA coefficients and write a coefficient file.

``--model gmm`` is the analytic Gaussian mixture (``GaussianMixture.default()``); a folder
is a local diffusers model (``samplerlab.denoisers.from_diffusers``); a file is a
``samplerlab train`` checkpoint, loaded by :data:`CHECKPOINT_LOADER` (its EMA denoiser).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fitstage import check_minimums, stage_options

# Training checkpoints: "module:function", function(path) -> denoiser.
CHECKPOINT_LOADER = "samplerlab.trainer.checkpoints:load_denoiser"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gmm", help="gmm | a diffusers folder | a checkpoint file")
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


def load_model(spec: str) -> Any:
    """The denoiser named by ``--model``: ``gmm``, a diffusers folder or a checkpoint."""
    if spec == "gmm":
        from ..analytic import GaussianMixture

        return GaussianMixture.default()
    path = Path(spec)
    if path.is_dir():
        from ..denoisers import from_diffusers

        return from_diffusers(path)
    if path.is_file():
        module_name, func = CHECKPOINT_LOADER.split(":")
        try:
            loader = getattr(importlib.import_module(module_name), func)
        except (ImportError, AttributeError):
            raise ConfigError(
                f"--model {spec}: loading training checkpoints needs {CHECKPOINT_LOADER} "
                "(not available in this build); pass a diffusers folder or 'gmm'"
            ) from None
        return loader(path)
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
    out = Path(args.out or f"iia_{args.sampler}_{args.steps}.safetensors")
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
        **stage_options(args),
    )
    if rank_zero_only.rank == 0:
        save(coeffs, out)
        meta = coeffs.metadata
        print(
            f"wrote {out}: {args.sampler} on {coeffs.steps} steps ({meta['nfe']} NFE), M={args.M}, "
            f"{args.samples} fitting samples, {int(coeffs.mask.sum())} fitted steps, "
            f"{meta['fit_seconds']:.1f} s"
        )
    return 0
