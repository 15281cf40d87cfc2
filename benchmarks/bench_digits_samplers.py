"""rmm and PMM vs their baselines on trained digits models (FID, CPU).

Reproduces the README's two trained-model tables ("Poisson midpoint and randomized
midpoints"): trains (or reuses) the embedded-default EDM digits model and a VP eps digits
model, then evaluates with ``samplerlab evaluate`` on the same seeds:

* rmm (forms ``ddim`` and ``data``) vs ddim on the time_uniform, time_quadratic and karras
  grids at 10 / 20 / 50 NFE;
* PMM (Bernoulli) vs DDPM at 80 NFE on three seed sets (``eval.seed_offset`` 0, 1000,
  2000), PMM and both midpoint rules at 50 NFE, DDPM-1000 on seeds 0.

Digits-classifier FID, 500 samples per row. Run (about 15 min on a 2-core CPU, training
included; training stops at 100 epochs or its 4-minute budget, so a busy machine gives a
different checkpoint)::

    PYTHONPATH=$PWD python benchmarks/bench_digits_samplers.py --work /tmp/sl_digits \\
        --out benchmarks/results/digits.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from samplerlab.cli import main as cli
from samplerlab.fileio import atomic_write_text

# Training overrides and the grids rmm is compared on (time grids need a VP table).
MODELS = {
    "edm": ([], ("karras",)),
    "vp": (["model.parameterization=eps"], ("time_uniform", "time_quadratic", "karras")),
}


def rmm_entries(grids: tuple[str, ...]) -> dict:
    return {
        f"{name}_{grid}": {"sampler": sampler, "schedule": grid, "options": options}
        for grid in grids
        for name, sampler, options in (
            ("ddim", "ddim", {}),
            ("rmm", "rmm", {"form": "ddim"}),
            ("rmm_data", "rmm", {"form": "data"}),
        )
    }


PMM = {
    "ddpm": {"nfe": [50, 80, 1000]},
    "pmm": {},
    "pmm_single": {"sampler": "pmm", "options": {"midpoints": "single"}},
}


def run(argv: list[str]) -> None:
    if cli(argv) != 0:
        raise SystemExit(f"failed: samplerlab {' '.join(argv)}")


def evaluate(ckpt: Path, out: Path, samplers: dict, nfe: list[int], offset: int = 0) -> dict:
    run(
        [
            "evaluate",
            "--ckpt",
            str(ckpt),
            f"out_dir={out}",
            "eval.all_samplers=false",
            f"eval.samplers={json.dumps(samplers)}",
            f"eval.nfe={nfe}",
            f"eval.seed_offset={offset}",
            "logger.wandb=false",
        ]
    )
    rows = json.loads((out / "report.json").read_text())["results"]
    return {(r["label"], r["budget"]): r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/sl_digits", help="checkpoints and reports")
    ap.add_argument("--out", default=None, help="also write the tables here (markdown)")
    args = ap.parse_args()
    work = Path(args.work)
    lines: list[str] = []
    fmt = lambda r: f"{r['fid']:.3f}" if r["fid"] is not None else r["status"]
    for model, (overrides, grids) in MODELS.items():
        ckpt = work / model / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            run(["train", f"out_dir={work / model}", "eval.enabled=false", *overrides])
        rmm = evaluate(ckpt, work / f"{model}_rmm", rmm_entries(grids), [10, 20, 50])
        lines += [f"### {model}: rmm vs ddim", "", "| entry | NFE | FID |", "|---|---:|---:|"]
        lines += [f"| {k[0]} | {r['nfe']:.0f} | {fmt(r)} |" for k, r in rmm.items()]
        pmm = evaluate(ckpt, work / f"{model}_pmm", PMM, [50, 80])
        for offset in (1000, 2000):
            more = evaluate(
                ckpt, work / f"{model}_pmm_{offset}", {"ddpm": {}, "pmm": {}}, [80], offset
            )
            pmm.update({(f"{k[0]} (seeds +{offset})", k[1]): r for k, r in more.items()})
        lines += ["", f"### {model}: PMM vs DDPM", "", "| entry | NFE | FID |", "|---|---:|---:|"]
        lines += [f"| {k[0]} | {r['nfe']:.2f} | {fmt(r)} |" for k, r in pmm.items()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
