"""``samplerlab sample --pipeline FOLDER --prompts FILE --guidance 5 ...``: decoded images
from a local latent diffusers pipeline (Stable-Diffusion- or DiT-style folder; see
:mod:`samplerlab.latent`). Sample ``k`` has seed ``seed + k`` and the ``k mod P``-th prompt
(or class label); ``--n`` defaults to one sample per prompt or label."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The latent-pipeline options of ``samplerlab sample`` (beside ``--pipeline``)."""
    g = p.add_argument_group("latent pipelines (with --pipeline)")
    g.add_argument("--prompts", default=None, help="a text file, one prompt per line")
    g.add_argument(
        "--class-labels", default=None, help="class labels of a DiT-style model, e.g. 0,3,7"
    )
    g.add_argument(
        "--guidance", type=float, default=None, help="classifier-free guidance scale (1: none)"
    )
    g.add_argument(
        "--guidance-interval",
        type=interval,
        default=None,
        metavar="LO,HI",
        help="guide only for sigma in (LO, HI] (Kynkaanniemi et al. 2024)",
    )
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")


def interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"need LO,HI (two sigmas), got '{text}'") from None
    return lo, hi


def parse_labels(text: str) -> list[int]:
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--class-labels: need integers like 0,3,7, got '{text}'") from None
    if not labels:
        raise ConfigError("--class-labels: need at least one label")
    return labels


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.report import save_samples_png
    from ..fileio import atomic_write
    from ..latent import generate, load, read_prompts
    from ..samplers.api import check_device

    if args.prompts is not None and args.class_labels is not None:
        raise ConfigError("--prompts and --class-labels: give one")
    out = Path(args.out)
    if out.is_dir() or out.suffix not in (".png", ".pt"):
        raise ConfigError(f"--out: {out} must end in .png (a grid) or .pt (a tensor of images)")
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError("--steps and --batch-size: must be >= 1")
    check_device(args.device, "--device")
    values = (
        read_prompts(args.prompts)
        if args.prompts is not None
        else parse_labels(args.class_labels)
        if args.class_labels is not None
        else None
    )
    n = args.n if args.n is not None else len(values) if values is not None else 16
    if n < 1 or args.seed < 0:
        raise ConfigError(f"--n / --seed: need n >= 1 and seed >= 0, got {n}, {args.seed}")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    pipe = load(args.pipeline, device=args.device, dtype=dtype)
    got = generate(
        pipe,
        args.sampler,
        steps=args.steps,
        seeds=range(args.seed, args.seed + n),
        values=values,
        guidance=args.guidance,
        batch_size=args.batch_size,
        dtype=dtype,
        schedule=args.schedule,
        guidance_interval=args.guidance_interval,
        **dict(args.option),
    )
    if out.suffix == ".pt":
        atomic_write(out, lambda tmp: torch.save(got.images.cpu(), tmp))
    else:
        save_samples_png(out, got.images)
    print(
        f"samplerlab sample: {n} images ({pipe.kind}-conditional latent model) with "
        f"{args.sampler} ({args.steps} steps, NFE {got.nfe:.2f}, {got.seconds:.2f} s) -> {out}"
    )
    return 0
