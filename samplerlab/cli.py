"""The ``samplerlab`` command line: one module per subcommand under ``samplerlab.commands``.

Every subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Errors from bad input (the types in :data:`samplerlab.errors.USER_ERRORS`: ``SamplerError``,
``ConfigError``, ``TrainingError``, ``NonFiniteError``, ``FileNotFoundError``) are printed as
one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("samplerlab.commands.train", "train a model, then evaluate every configured sampler"),
    "evaluate": (
        "samplerlab.commands.evaluate",
        "evaluate every sampler x NFE on a checkpoint",
    ),
    "evaluate-latent": (
        "samplerlab.commands.evaluate_latent",
        "evaluate every sampler x NFE x guidance on a latent diffusers pipeline (prompts/labels)",
    ),
    "sample": (
        "samplerlab.commands.sample",
        "draw samples from a checkpoint (or a latent pipeline) with one sampler",
    ),
    "iia-fit": ("samplerlab.commands.iia_fit", "fit IIA coefficients and write a coefficient file"),
    "calibrate": (
        "samplerlab.commands.calibrate",
        "fit a sampler's time grid to a model and write a calibration file",
    ),
    "bench": (
        "samplerlab.commands.bench",
        "quality and speed vs NFE, no training",
    ),
    "samplers": ("samplerlab.commands.samplers", "list the registered samplers"),
}


def _load(name: str):
    module, _ = COMMANDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``--help`` prints the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="samplerlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        mod = _load(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from .errors import USER_ERRORS

    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as e:
        print(f"samplerlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
