"""``samplerlab evaluate --ckpt PATH [CONFIG ...] [k=v ...]``: every configured sampler x NFE."""

from __future__ import annotations

import argparse

from .train import split_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt", required=True, help="a Lightning checkpoint written by samplerlab train"
    )
    p.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG|key=value",
        help="config files / overrides applied over the checkpoint's saved config "
        "(e.g. eval.num_samples=5000 eval.nfe=[5,10,20] trainer.devices=2 trainer.strategy=ddp)",
    )


def run(args: argparse.Namespace) -> int:
    from ..trainer.run import evaluate

    files, overrides = split_args(args.args)
    out = evaluate(args.ckpt, files, overrides)
    if out["trainer"].global_rank == 0:
        print(f"samplerlab evaluate: report in {out['out_dir'] / 'report.md'}")
    return 0
