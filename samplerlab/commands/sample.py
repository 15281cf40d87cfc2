"""``samplerlab sample --ckpt PATH --sampler pmm --steps 25 --n 64 --out grid.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .bench import _value


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option '{text}' must look like key=value")
    k, v = text.split("=", 1)
    return k, _value(v)  # the same value parsing as ``samplerlab bench --option``


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="a checkpoint written by samplerlab train")
    p.add_argument("--sampler", required=True, help="a registered sampler (samplerlab samplers)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--n", type=int, default=64, help="number of samples (seeds seed..seed+n-1)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--schedule", default=None, help="sigma schedule (default: the sampler's)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.png", help=".png grid (or scatter) or .pt tensor")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..callbacks.report import atomic_write, save_samples_png
    from ..samplers import sample
    from ..trainer.module import load_checkpoint

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
