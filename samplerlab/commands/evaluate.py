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


def summary(rows: list[dict]) -> str:
    """``"36 rows: 30 ok, 4 diverged, 2 error; 5 resumed, 2 over budget"``."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    text = f"{len(rows)} rows: " + ", ".join(f"{n} {k}" for k, n in counts.items())
    extra = [
        f"{n} {what}"
        for what, n in (
            ("resumed", sum(bool(r.get("resumed")) for r in rows)),
            ("over budget", sum(bool(r.get("over_budget")) for r in rows)),
        )
        if n
    ]
    return text + (f"; {', '.join(extra)}" if extra else "")


def run(args: argparse.Namespace) -> int:
    from ..trainer.run import evaluate

    files, overrides = split_args(args.args)
    out = evaluate(args.ckpt, files, overrides)
    if out["trainer"].global_rank == 0:
        print(f"samplerlab evaluate: report in {out['out_dir'] / 'report.md'}")
        if out["reports"]:
            print(f"samplerlab evaluate: {summary(out['reports'][-1]['results'])}")
    return 0
