"""``samplerlab train [CONFIG.yaml ...] [key=value ...]``: fit a model, then evaluate samplers.

With no arguments this is the embedded default: digits, a small UNet trained a fixed 100
epochs (no wall-clock cap unless ``trainer.max_time`` is set), then every registered sampler
at two NFE budgets, with a report in ``runs/digits``. A rerun into a used ``out_dir`` is
refused unless ``overwrite=true`` (or ``ckpt_path`` resumes a checkpoint of that folder).
"""

from __future__ import annotations

import argparse


def split_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments: ``key=value`` overrides, everything else config files/presets."""
    files = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    return files, overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..trainer.config import PRESETS

    p.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG|key=value",
        help=f"YAML files or presets ({', '.join(PRESETS)}) merged left to right, "
        "then key=value overrides (e.g. trainer.max_epochs=5 eval.nfe=[10,20])",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from ..trainer.config import load_config

    files, overrides = split_args(args.args)
    cfg = load_config(*files, overrides=overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from ..trainer.run import train

    out = train(cfg)
    if out["trainer"].global_rank == 0:
        print(f"samplerlab train: done in {out['seconds']:.0f} s; outputs in {out['out_dir']}")
        if out["reports"]:
            print(f"report: {out['out_dir'] / 'report.md'}")
        s = out.get("training")
        if s is not None:  # last, so that a cut is the last thing on the console
            print(f"samplerlab train: {'WARNING: ' if s['cut_by_max_time'] else ''}{s['line']}")
    return 0
