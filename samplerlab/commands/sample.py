"""``samplerlab sample --ckpt PATH --sampler pmm --steps 25 --n 64 --out grid.png``; with
``--pipeline FOLDER`` (a latent diffusers pipeline) see :mod:`.sample_latent`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from . import sample_latent
from .bench import _value


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option '{text}' must look like key=value")
    k, v = text.split("=", 1)
    return k, _value(v)  # the same value parsing as ``samplerlab bench --option``


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="a checkpoint written by samplerlab train")
    src.add_argument("--pipeline", help="a local latent diffusers pipeline folder (SD / DiT)")
    p.add_argument("--sampler", required=True, help="a registered sampler (samplerlab samplers)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument(
        "--n", type=int, default=None, help="number of samples (seeds seed..seed+n-1; default 64)"
    )
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--schedule", default=None, help="sigma schedule (default: the sampler's)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.png", help=".png grid (or scatter) or .pt tensor")
    sample_latent.add_arguments(p)


def check_device(spec: str, option: str = "--device") -> None:
    """A torch device that exists on this machine, or one line naming ``option``."""
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option}: '{spec}' is not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}: '{spec}' but this machine has no usable CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{option}: '{spec}' but there are {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}: 'mps' is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option}: '{spec}' is not supported here; use cpu, cuda or mps")


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before the checkpoint is loaded."""
    if args.n < 1:
        raise ConfigError(f"--n: must be >= 1, got {args.n}")
    if args.steps < 1:
        raise ConfigError(f"--steps: must be >= 1, got {args.steps}")
    if args.seed < 0 or args.seed + args.n > 2**63:
        raise ConfigError(f"--seed: seeds must lie in [0, 2**63), got {args.seed}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; name a .png or .pt file")
    if out.suffix not in (".png", ".pt"):
        raise ConfigError(f"--out: {out} must end in .png (a grid) or .pt (a tensor)")
    check_device(args.device)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.report import save_samples_png
    from ..fileio import atomic_write
    from ..sample import sample  # loads a coeffs=FILE option
    from ..trainer.checkpoints import load_checkpoint

    if args.pipeline is not None:
        return sample_latent.run(args)
    if args.n is None:
        args.n = 64
    check_args(args)
    module, _ = load_checkpoint(args.ckpt)
    module.to(args.device)
    den = module.denoiser
    res = sample(
        den,
        args.sampler,
        steps=args.steps,
        shape=(args.n, *module.data_shape),
        seeds=range(args.seed, args.seed + args.n),
        schedule=args.schedule,
        device=args.device,
        **dict(args.option),
    )
    out = Path(args.out)
    if out.suffix == ".pt":
        atomic_write(out, lambda tmp: torch.save(res.x.cpu(), tmp))
    else:
        save_samples_png(out, res.x)
    print(
        f"samplerlab sample: {args.n} samples with {args.sampler} ({args.steps} steps, "
        f"NFE {res.nfe:.2f}, {res.rounds} rounds, {res.seconds:.2f} s) -> {out}"
    )
    return 0
