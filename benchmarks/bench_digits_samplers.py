"""rmm and PMM vs their baselines on trained digits models (FID, CPU).

Reproduces the README's two trained-model tables ("Poisson midpoint and randomized
midpoints"): trains (or reuses) the embedded-default EDM digits model and a VP eps digits
model, then evaluates with ``samplerlab evaluate`` on the same seeds:

* rmm (forms ``ddim`` and ``data``) vs ddim on the time_uniform, time_quadratic and karras
  grids at 10 / 20 / 50 NFE;
* PMM (Bernoulli and single midpoint) vs DDPM at 50 and 80 NFE, DDPM-1000;

every row on ``--seed-sets`` sampling seed sets (``eval.seed_offset`` 0, 1000, 2000, 3000 by
default), reported as mean ± std (min–max). Digits-classifier FID, 500 samples per row.
Run (training plus 4 seed sets: about 45 min on an idle 2-core CPU)::

    PYTHONPATH=$PWD python benchmarks/bench_digits_samplers.py --work /tmp/sl_digits \\
        --out benchmarks/results/digits.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seedsets import fmt_spread

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


def spread_table(per_set: list[dict]) -> list[str]:
    """One row per (entry, budget): realised NFE and FID mean ± std (min–max) over the sets."""
    lines = ["| entry | NFE | FID over the seed sets |", "|---|---:|---|"]
    for key, first in per_set[0].items():
        fids = [d[key]["fid"] if key in d else None for d in per_set]
        if all(f is not None for f in fids):
            cell = fmt_spread(fids, 3)
        else:
            # Some seed sets have no FID (diverged / error): say how many, and the others'.
            bad = sorted({d[key]["status"] for d in per_set if key in d and d[key]["fid"] is None})
            good = [f for f in fids if f is not None]
            cell = f"{'/'.join(bad)} on {len(fids) - len(good)} of {len(fids)} sets"
            if good:
                cell += f"; the others {fmt_spread(good, 3)}"
        lines.append(f"| {key[0]} | {first['nfe']:.2f} | {cell} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/sl_digits", help="checkpoints and reports")
    ap.add_argument("--out", default=None, help="also write the tables here (markdown)")
    ap.add_argument(
        "--seed-sets", type=int, default=4, help="sampling seed sets (eval.seed_offset 0, 1000, ..)"
    )
    args = ap.parse_args()
    work = Path(args.work)
    offsets = [1000 * k for k in range(args.seed_sets)]
    lines: list[str] = [
        f"Digits-classifier FID, 500 samples per row, {len(offsets)} seed sets "
        f"(eval.seed_offset {', '.join(map(str, offsets))}; the API draws each sample's "
        "initial and sampler noise from its own seed). Cells: mean ± std (min–max).",
        "",
    ]
    for model, (overrides, grids) in MODELS.items():
        ckpt = work / model / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            run(["train", f"out_dir={work / model}", "eval.enabled=false", *overrides])
        rmm = [
            evaluate(ckpt, work / f"{model}_rmm_{o}", rmm_entries(grids), [10, 20, 50], o)
            for o in offsets
        ]
        lines += [f"### {model}: rmm vs ddim", "", *spread_table(rmm), ""]
        pmm = [evaluate(ckpt, work / f"{model}_pmm_{o}", PMM, [50, 80], o) for o in offsets]
        lines += [f"### {model}: PMM vs DDPM", "", *spread_table(pmm), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
