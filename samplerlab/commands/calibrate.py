"""``samplerlab calibrate``: fit a sampler's grid to a model and write a calibration file.

``--model`` is as for ``samplerlab iia-fit`` (``gmm``, a diffusers folder or a training
checkpoint). With ``--iia SAMPLER`` IIA coefficients are fitted on the calibrated grid too and
written beside it (``--iia-out``). A class-conditional model is calibrated on (noise, label)
pairs with ``--classes`` / ``--labels`` and ``--guidance W`` (as ``samplerlab iia-fit``).
"""

from __future__ import annotations

import argparse
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
from .iia_fit import load_model, load_model_classes
from .sample import _option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="gmm", help="gmm | gmm-cond | a diffusers folder | a checkpoint file"
    )
    p.add_argument("--ckpt", dest="model", help="alias of --model")
    p.add_argument("--sampler", default="dpmpp_2m", help="any deterministic registered sampler")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (as for `sample`)")
    p.add_argument("--schedule", default=None, help="starting grid (default: the sampler's)")
    p.add_argument("--samples", type=int, default=128, help="number of fitting noises")
    p.add_argument("--batch-size", type=int, default=None, help="fitting samples per batch")
    p.add_argument("--iterations", type=int, default=20, help="Levenberg-Marquardt iterations")
    p.add_argument("--teacher-steps", type=int, default=100, help="DPM-Solver-3 teacher steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the fitting noises")
    p.add_argument("--devices", type=int, default=1, help="processes/devices (DDP when > 1)")
    p.add_argument("--accelerator", default=None, help="cpu | gpu (default: the model's device)")
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampler option (repeatable)",
    )
    p.add_argument("--iia", default=None, help="also fit this IIA sampler on the calibrated grid")
    p.add_argument("--M", type=int, default=10, help="IIA fine sub-steps (with --iia)")
    p.add_argument(
        "--out", default=None, help="output file (default calibrate_<sampler>_<steps>.safetensors)"
    )
    p.add_argument(
        "--iia-out", default=None, help="IIA output (default iia_<sampler>_<steps>_cal...)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_class_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..samplers.iia import BASES, check_sampler
    from ..samplers.registry import get_sampler

    # Cheap checks first: nothing is loaded or written on bad input.
    spec = get_sampler(args.sampler)
    options = dict(args.option)
    spec.check_options(options)
    if not spec.deterministic(options):
        raise ConfigError(
            f"--sampler {args.sampler} is stochastic; calibration needs an ODE sampler"
        )
    if args.iia is not None:
        check_sampler(args.iia)
        if BASES[args.iia] != BASES.get(args.sampler, args.sampler):
            raise ConfigError(
                f"--iia {args.iia} runs on the grid of {BASES[args.iia]}, not {args.sampler}"
            )
    check_minimums(
        [
            ("--steps", args.steps, 1),
            ("--samples", args.samples, 1),
            ("--iterations", args.iterations, 1),
            ("--teacher-steps", args.teacher_steps, 1),
            ("--devices", args.devices, 1),
            ("--M", args.M, 1),
        ]
    )
    check_class_arguments(args)
    out = Path(args.out or f"calibrate_{args.sampler}_{args.steps}.safetensors")
    conditioning: dict[str, Any] = {}
    if wants_classes(args):
        denoiser, num_classes, null_label = load_model_classes(args.model)
        conditioning = class_conditioning(args, args.samples, num_classes, null_label)
    else:
        denoiser = load_model(args.model)

    from lightning.pytorch.utilities import rank_zero_only

    from .. import calibrate, iia

    common = stage_options(args)
    cal = calibrate.fit(
        denoiser,
        args.sampler,
        steps=args.steps,
        schedule=args.schedule,
        options=options,
        num_samples=args.samples,
        batch_size=args.batch_size,
        iterations=args.iterations,
        teacher_steps=args.teacher_steps,
        seed=args.seed,
        **conditioning,
        **common,
    )
    coeffs = None
    if args.iia is not None:
        coeffs = iia.fit(
            denoiser,
            args.iia,
            steps=args.steps,
            calibration=cal,
            M=args.M,
            num_samples=args.samples,
            seed=args.seed,
            **conditioning,
            **common,
        )
    if rank_zero_only.rank == 0:
        calibrate.save(cal, out)
        m = cal.metadata
        print(
            f"wrote {out}: {cal.sampler} on {m['grid_steps']} steps ({m['nfe']:g} NFE), "
            f"{args.samples} fitting samples, RMS to the teacher {m['default_loss'] ** 0.5:.4g} "
            f"(default grid) -> {m['loss'] ** 0.5:.4g}; fitting cost {m['fit_nfe_per_sample']:g} "
            f"NFE per sample, {m['fit_seconds']:.1f} s{fitted_for(m)}"
        )
        if coeffs is not None:
            iia_out = Path(args.iia_out or f"iia_{args.iia}_{args.steps}_calibrated.safetensors")
            iia.save(coeffs, iia_out)
            print(f"wrote {iia_out}: {args.iia} fitted on the calibrated grid (M={args.M})")
    return 0
